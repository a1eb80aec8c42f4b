-- ssofleet state, schema version 2: what a restarted coordinator needs to resume a run.
ALTER TABLE runs ADD COLUMN plan_json TEXT;      -- the plan the run follows, as planned at its start
ALTER TABLE runs ADD COLUMN engine_state TEXT;   -- the engine's run-level state, written with every decision
ALTER TABLE steps ADD COLUMN dispatched_at INTEGER;
CREATE INDEX attempts_by_run ON attempts (run_id, idx, number);
