-- The agent process (its instance id) that accepted an attempt: only its word that it never received
-- the attempt lets the coordinator send it again (SPEC §9, one live session per node).
ALTER TABLE attempts ADD COLUMN accepted_by TEXT;
