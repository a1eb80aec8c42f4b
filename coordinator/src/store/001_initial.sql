-- ssofleet state, schema version 1.
CREATE TABLE runs (
    id              TEXT PRIMARY KEY,
    workflow        TEXT NOT NULL,
    state           TEXT NOT NULL,
    reason          TEXT NOT NULL DEFAULT '',
    started_at      INTEGER NOT NULL,
    finished_at     INTEGER,
    started_by      TEXT NOT NULL,
    inventory_toml  TEXT NOT NULL,          -- the inventory as the run started from it
    selection_json  TEXT NOT NULL,
    plan_hash       TEXT NOT NULL,
    target_version  TEXT NOT NULL,
    installer       TEXT NOT NULL,
    installer_sha256 TEXT,
    step_timeout_ms INTEGER NOT NULL,
    max_parallel    INTEGER NOT NULL,
    max_failures    INTEGER NOT NULL
);

CREATE TABLE steps (
    run_id      TEXT NOT NULL REFERENCES runs(id),
    idx         INTEGER NOT NULL,
    environment TEXT NOT NULL,
    node        TEXT,
    step        TEXT NOT NULL,
    batch       INTEGER NOT NULL,
    expected    TEXT NOT NULL,
    state       TEXT NOT NULL,
    attempts    INTEGER NOT NULL,
    message     TEXT NOT NULL DEFAULT '',
    started_at  INTEGER,
    finished_at INTEGER,
    wait_until  INTEGER,
    PRIMARY KEY (run_id, idx)
);

CREATE TABLE attempts (
    id            TEXT PRIMARY KEY,         -- uuid, what the agent journals
    run_id        TEXT NOT NULL REFERENCES runs(id),
    idx           INTEGER NOT NULL,
    number        INTEGER NOT NULL,
    node          TEXT,
    state         TEXT NOT NULL,            -- dispatched, started, finished
    dispatched_at INTEGER NOT NULL,
    finished_at   INTEGER,
    outcome       TEXT,
    error         TEXT,
    exit_code     INTEGER,
    UNIQUE (run_id, idx, number)
);

-- Every event an agent emitted, once: (attempt, seq) is the key a redelivery collides with.
CREATE TABLE attempt_events (
    attempt_id TEXT NOT NULL REFERENCES attempts(id),
    seq        INTEGER NOT NULL,
    at         INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    payload    TEXT NOT NULL,
    PRIMARY KEY (attempt_id, seq)
) WITHOUT ROWID;

CREATE TABLE artifacts (
    attempt_id TEXT NOT NULL REFERENCES attempts(id),
    kind       TEXT NOT NULL,
    path       TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    sha256     TEXT NOT NULL
);

-- The run's own event log: the cursor of `WatchRun`.
CREATE TABLE run_events (
    run_id  TEXT NOT NULL REFERENCES runs(id),
    seq     INTEGER NOT NULL,
    at      INTEGER NOT NULL,
    idx     INTEGER,
    kind    TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;

CREATE TABLE audit (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       INTEGER NOT NULL,
    operator TEXT NOT NULL,
    action   TEXT NOT NULL,
    run_id   TEXT NOT NULL,
    node     TEXT,
    step     TEXT,
    detail   TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_by_run ON audit (run_id);
