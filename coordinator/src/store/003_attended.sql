-- ssofleet state, schema version 3: attended installs and reboots.
ALTER TABLE steps ADD COLUMN approved INTEGER;   -- the attempt whose attended install the operator approved
ALTER TABLE steps ADD COLUMN rebooting INTEGER;  -- the attempt whose agent announced it restarts the server
