-- ssofleet state, schema version 3: attended installs.
ALTER TABLE steps ADD COLUMN approved INTEGER;   -- the attempt whose attended install the operator approved
