-- ssofleet state, schema version 5: a control's request id (its idempotency key) with its audit entry.
-- One entry per key and run: a control repeated with its key finds it applied and changes nothing.
ALTER TABLE audit ADD COLUMN request_id TEXT;
CREATE UNIQUE INDEX audit_by_request ON audit (run_id, request_id) WHERE request_id IS NOT NULL;
