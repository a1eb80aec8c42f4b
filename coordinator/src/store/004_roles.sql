-- ssofleet state, schema version 4: installers per role, notes on artifacts.
ALTER TABLE runs ADD COLUMN master_installer_sha256 TEXT;  -- the master's installer (installer_sha256: the members')
ALTER TABLE artifacts ADD COLUMN note TEXT NOT NULL DEFAULT '';  -- e.g. the secret backup's password reminder
