//! Durable state (SPEC §9): runs, the inventory snapshot each run started from, steps, attempts,
//! events and the audit trail, in one SQLite database under `--state-dir`.
//!
//! State changes are written in one transaction with what caused them, and a step attempt is stored
//! as dispatched before it leaves the process ([`Store::commit`]). Agent events are keyed by
//! (attempt, sequence): a redelivered event is stored once ([`Store::agent_event`]). They are written
//! in groups, one transaction (one fsync) for all that arrived together ([`Store::flush_events`]);
//! the coordinator acknowledges an event to its agent only once it is written, up to the first gap
//! ([`Store::contiguous_seq`], kept per attempt as events are written: `contiguous`).
//! The schema is versioned with `PRAGMA user_version`; [`MIGRATIONS`] bring any older database up.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use crate::domain::{AttemptOutcome, Role};
use crate::engine::{Command, Durable, Millis, Run, StepRecord, StepState};
use crate::plan::Plan;

mod contiguous;
use contiguous::Contiguous;

/// The file name of the database in the state directory.
pub const FILE: &str = "ssofleet.db";

/// Schema migrations, in order; entry `i` brings the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    include_str!("001_initial.sql"),
    include_str!("002_resume.sql"),
    include_str!("003_attended.sql"),
    include_str!("004_roles.sql"),
    include_str!("005_request_ids.sql"),
    include_str!("006_accepted_by.sql"),
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database {}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "state database {}: schema version {found} is newer than this coordinator knows ({known}); run a newer fleet-coordinator",
        path.display()
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        known: u32,
    },
    #[error("run {0} is not in the state database")]
    UnknownRun(String),
    #[error("state database {}: run {run}: {detail}", path.display())]
    Corrupt {
        path: PathBuf,
        run: String,
        detail: String,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What a run was started with, stored once.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    pub id: &'a str,
    pub workflow: &'a str,
    pub started_by: &'a str,
    pub started_at: Millis,
    /// The inventory file's text as the run started from it.
    pub inventory_toml: &'a str,
    pub selection_json: &'a str,
    pub plan_hash: &'a str,
    pub target_version: &'a str,
    pub installer: &'a str,
    pub step_timeout_ms: Millis,
}

/// A run event as stored and as `WatchRun` streams it: `seq` is the cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: u64,
    pub at: Millis,
    pub step: Option<usize>,
    pub kind: String,
    pub payload: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRow {
    pub id: String,
    pub workflow: String,
    pub state: String,
    pub reason: String,
    pub started_at: Millis,
    pub finished_at: Option<Millis>,
    pub started_by: String,
    /// The selection as the run was started (written by the run manager's `start`).
    pub selection_json: String,
    pub plan_hash: String,
    pub target_version: String,
    pub installer: String,
    /// The members' installer's SHA-256 (before schema 4: the one installer's), once preflight read it.
    pub installer_sha256: Option<String>,
    /// The master's installer's SHA-256 (schema 4 on).
    pub master_installer_sha256: Option<String>,
}

/// What a step's current attempt reported that `GetRun` shows: one row per progress or output event
/// of it, in order (one row without an event where it reported none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepReportRow {
    pub step: usize,
    pub attempt_id: String,
    /// `progress` or `output`, with the event's payload; `None`: the attempt reported neither.
    pub event: Option<(String, serde_json::Value)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRow {
    pub run_id: String,
    pub step: usize,
    pub number: u32,
    pub node: Option<String>,
    /// The agent instance that accepted the attempt (its ACCEPTED ack), once one did.
    pub accepted_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRow {
    pub step: usize,
    pub kind: String,
    pub path: String,
    pub size_bytes: u64,
    pub sha256: String,
    /// What the agent noted with it (the secret backup's password reminder; never the password).
    pub note: String,
}

/// An artifact of an attempt, as its result reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewArtifact {
    pub kind: String,
    pub path: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub note: String,
}

/// One event an agent reported, with the node, step and attempt number it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRow {
    pub node: String,
    pub step: String,
    pub attempt: u32,
    pub kind: String,
    pub payload: serde_json::Value,
    /// Where the row is in a run's log: step index, attempt number, the attempt's event sequence.
    pub position: LogPosition,
}

/// A place in a run's log, which is ordered by step, attempt and sequence; a page of it starts after
/// one ([`Store::step_log_page`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogPosition {
    pub step: usize,
    pub attempt: u32,
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRow {
    pub index: usize,
    pub environment: String,
    pub node: Option<String>,
    pub step: String,
    pub batch: u32,
    pub state: String,
    pub attempts: u32,
    pub message: String,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: Millis,
    pub operator: String,
    pub action: String,
    pub run_id: String,
    pub node: Option<String>,
    pub step: Option<String>,
    pub detail: String,
    /// The control's idempotency key (schema 5 on): one entry per key and run, so a control repeated
    /// with its key is found applied ([`Store::control_by_request`]) and never stored twice.
    pub request_id: Option<String>,
}

/// What a restarted coordinator needs to resume a run.
#[derive(Debug, Clone)]
pub struct StoredRun {
    pub id: String,
    pub plan: Plan,
    pub durable: Durable,
    pub records: Vec<StepRecord>,
    pub inventory_toml: String,
    pub step_timeout_ms: Millis,
    /// The members' installer's SHA-256 (before schema 4: the one installer's), as its first preflight read it.
    pub installer_sha256: Option<String>,
    /// The master's installer's SHA-256 (schema 4 on).
    pub master_installer_sha256: Option<String>,
    /// Step index → its current attempt's uuid, node and stored outcome (if its result is stored).
    pub attempts: Vec<StoredAttempt>,
    pub last_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAttempt {
    pub step: usize,
    pub number: u32,
    pub id: String,
    pub node: Option<String>,
    /// `Some((outcome, error))` once its result is stored.
    pub result: Option<(AttemptOutcome, String)>,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Agent events accepted but not yet written: see [`Store::flush_events`].
    pending: Vec<PendingEvent>,
    pending_keys: std::collections::HashSet<(String, u64)>,
    /// Per attempt asked about since the last run started: its stored events' sequence numbers, kept
    /// as events are written (what [`Store::contiguous_seq`] answers from).
    contiguous: std::collections::HashMap<String, Contiguous>,
}

/// An agent event waiting for the next [`Store::flush_events`].
struct PendingEvent {
    attempt_id: String,
    seq: u64,
    at: Millis,
    kind: String,
    payload: String,
}

impl Store {
    /// Opens (creating if needed) the database in `state_dir` and migrates it to the current schema.
    pub fn open(state_dir: &Path) -> Result<Self> {
        let path = state_dir.join(FILE);
        let conn = Connection::open(&path).map_err(|source| StoreError::Sqlite {
            path: path.clone(),
            source,
        })?;
        let mut store = Self {
            conn,
            path,
            pending: Vec::new(),
            pending_keys: std::collections::HashSet::new(),
            contiguous: std::collections::HashMap::new(),
        };
        store.init()?;
        Ok(store)
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Runs a query and maps every row.
    fn query<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(self.err())?;
        let rows = stmt.query_map(params, row).map_err(self.err())?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err())
    }

    fn init(&mut self) -> Result<()> {
        // WAL: readers do not block the writer; synchronous=FULL: a committed dispatch survives a crash.
        // A 32 MiB page cache (SQLite's default is 2 MiB): a 10,000-node run's lookups by attempt
        // otherwise read most pages from the file again.
        self.conn
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA cache_size = -32768;",
            )
            .map_err(self.err())?;
        let version: u32 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(self.err())?;
        let known = u32::try_from(MIGRATIONS.len()).unwrap_or(u32::MAX);
        if version > known {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found: version,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let path = self.path.clone();
            let err = |source| StoreError::Sqlite {
                path: path.clone(),
                source,
            };
            let tx = self.conn.transaction().map_err(err)?;
            tx.execute_batch(sql).map_err(err)?;
            tx.pragma_update(
                None,
                "user_version",
                i64::try_from(i + 1).unwrap_or(i64::MAX),
            )
            .map_err(err)?;
            tx.commit().map_err(err)?;
        }
        Ok(())
    }

    pub fn schema_version(&self) -> Result<u32> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(self.err())
    }

    /// A database in memory, for tests.
    #[cfg(test)]
    pub fn in_memory() -> Result<Self> {
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Sqlite {
            path: path.clone(),
            source,
        })?;
        let mut store = Self {
            conn,
            path,
            pending: Vec::new(),
            pending_keys: std::collections::HashSet::new(),
            contiguous: std::collections::HashMap::new(),
        };
        store.init()?;
        Ok(store)
    }

    /// Stores a new run with its inventory snapshot, its plan and its planned steps.
    /// Stores a new run, its steps and, in the same transaction, the audit entry of whoever started it.
    pub fn create_run(
        &mut self,
        new: &NewRun<'_>,
        plan: &Plan,
        run: &Run,
        audit: Option<&AuditEntry>,
    ) -> Result<()> {
        self.flush_events()?;
        // The attempts asked about so far are of runs before: read back if they are asked about again.
        self.contiguous.clear();
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        tx.execute(
            "INSERT INTO runs (id, workflow, state, reason, started_at, started_by, inventory_toml, selection_json,
                               plan_hash, target_version, installer, step_timeout_ms, max_parallel, max_failures,
                               plan_json, engine_state)
             VALUES (?1, ?2, ?3, '', ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            params![
                new.id, new.workflow, run.status().as_str(), new.started_at, new.started_by, new.inventory_toml,
                new.selection_json, new.plan_hash, new.target_version, new.installer, new.step_timeout_ms,
                run.max_parallel(), run.max_failures(), json(plan), json(&run.durable())
            ],
        )
        .map_err(err)?;
        for (i, step) in run.steps().iter().enumerate() {
            tx.execute(
                "INSERT INTO steps (run_id, idx, environment, node, step, batch, expected, state, attempts, message)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9)",
                params![
                    new.id,
                    i64::try_from(i).unwrap_or(i64::MAX),
                    run.env_name(step.plan().env),
                    step.plan().node.as_ref().map(|n| n.as_str()),
                    step.plan().kind.name(),
                    step.plan().batch,
                    step.plan().expected.to_string(),
                    step.state().as_str(),
                    step.record().message,
                ],
            )
            .map_err(err)?;
        }
        if let Some(entry) = audit {
            insert_audit(&tx, entry).map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Persists, in one transaction, what the engine decided for `run` at `now`: step, environment and
    /// run changes, dispatched attempts (with the uuid each gets), one run event per change, the run's
    /// state for a restart, and the operator's audit entry when a control caused it.
    /// Returns the attempt uuids of the dispatches, in order: send them only after this returns.
    pub fn commit(
        &mut self,
        run_id: &str,
        run: &Run,
        commands: &[Command],
        now: Millis,
        audit: Option<&AuditEntry>,
    ) -> Result<Vec<String>> {
        self.flush_events()?;
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let mut seq: i64 = tx
            .query_row(
                "SELECT COALESCE(MAX(seq), 0) FROM run_events WHERE run_id = ?1",
                [run_id],
                |r| r.get(0),
            )
            .map_err(err)?;
        let mut attempt_ids = Vec::new();
        for command in commands {
            let (step, kind, payload) = match command {
                Command::Dispatch { step, attempt } => {
                    let id = uuid::Uuid::new_v4().to_string();
                    let s = &run.steps()[*step];
                    tx.execute(
                        "INSERT INTO attempts (id, run_id, idx, number, node, state, dispatched_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, 'dispatched', ?6)",
                        params![
                            id,
                            run_id,
                            *step as i64,
                            attempt,
                            s.plan().node.as_ref().map(|n| n.as_str()),
                            now
                        ],
                    )
                    .map_err(err)?;
                    write_step(&tx, run_id, run, *step).map_err(err)?;
                    tx.execute(
                        "UPDATE steps SET started_at = ?3 WHERE run_id = ?1 AND idx = ?2",
                        params![run_id, *step as i64, now],
                    )
                    .map_err(err)?;
                    let payload = serde_json::json!({ "attempt": attempt, "attempt_id": id });
                    attempt_ids.push(id);
                    (Some(*step), "dispatched", payload)
                }
                Command::StepChanged {
                    step,
                    state,
                    message,
                } => {
                    write_step(&tx, run_id, run, *step).map_err(err)?;
                    (
                        Some(*step),
                        "step",
                        serde_json::json!({ "state": state.as_str(), "message": message }),
                    )
                }
                Command::EnvChanged { env, status } => (
                    None,
                    "environment",
                    serde_json::json!({ "environment": run.env_name(*env), "status": status.as_str() }),
                ),
                Command::RunChanged { status, reason } => {
                    let finished = status.is_final().then_some(now);
                    tx.execute(
                        "UPDATE runs SET state = ?2, reason = ?3, finished_at = COALESCE(finished_at, ?4) WHERE id = ?1",
                        params![run_id, status.as_str(), reason, finished],
                    )
                    .map_err(err)?;
                    (
                        None,
                        "run",
                        serde_json::json!({ "state": status.as_str(), "reason": reason }),
                    )
                }
                Command::WakeAt(_) | Command::Continue { .. } | Command::Cancel { .. } => continue,
            };
            seq += 1;
            tx.execute(
                "INSERT INTO run_events (run_id, seq, at, idx, kind, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![run_id, seq, now, step.map(|s| s as i64), kind, payload.to_string()],
            )
            .map_err(err)?;
        }
        tx.execute(
            "UPDATE runs SET engine_state = ?2 WHERE id = ?1",
            params![run_id, json(&run.durable())],
        )
        .map_err(err)?;
        if let Some(entry) = audit {
            insert_audit(&tx, entry).map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(attempt_ids)
    }

    /// Runs a restarted coordinator resumes: not finished, or finished with steps still out on agents.
    pub fn unfinished_runs(&self) -> Result<Vec<String>> {
        self.query(
            "SELECT id FROM runs r WHERE r.state NOT IN ('succeeded', 'failed', 'aborted')
                OR EXISTS (SELECT 1 FROM steps s WHERE s.run_id = r.id AND s.state = 'running')
             ORDER BY started_at, id",
            [],
            |r| r.get(0),
        )
    }

    /// Everything needed to rebuild a run's engine state and carry on with it.
    pub fn load_run(&self, run_id: &str) -> Result<StoredRun> {
        let corrupt = |detail: String| StoreError::Corrupt {
            path: self.path.clone(),
            run: run_id.to_string(),
            detail,
        };
        type Head = (
            Option<String>,
            Option<String>,
            String,
            Millis,
            Option<String>,
            Option<String>,
        );
        let head: Head = self
            .conn
            .query_row(
                "SELECT plan_json, engine_state, inventory_toml, step_timeout_ms, installer_sha256, master_installer_sha256 FROM runs WHERE id = ?1",
                [run_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .optional()
            .map_err(self.err())?
            .ok_or_else(|| StoreError::UnknownRun(run_id.to_string()))?;
        let (
            plan_json,
            state_json,
            inventory_toml,
            step_timeout_ms,
            installer_sha256,
            master_installer_sha256,
        ) = head;
        let plan: Plan = plan_json
            .ok_or_else(|| {
                corrupt(
                    "it was started by an older coordinator that kept no plan to resume from"
                        .into(),
                )
            })
            .and_then(|j| {
                serde_json::from_str(&j)
                    .map_err(|e| corrupt(format!("its stored plan does not parse: {e}")))
            })?;
        let durable: Durable = state_json
            .ok_or_else(|| corrupt("no stored state".into()))
            .and_then(|j| {
                serde_json::from_str(&j)
                    .map_err(|e| corrupt(format!("its stored state does not parse: {e}")))
            })?;
        let records = self.query(
            "SELECT state, attempts, dispatched_at, finished_at, message, wait_until, approved, rebooting FROM steps WHERE run_id = ?1 ORDER BY idx",
            [run_id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    StepRecord {
                        state: StepState::Pending,
                        attempt: r.get(1)?,
                        dispatched_at: r.get(2)?,
                        finished_at: r.get(3)?,
                        message: r.get(4)?,
                        wait_until: r.get(5)?,
                        approved: r.get(6)?,
                        rebooting: r.get(7)?,
                    },
                ))
            },
        )?;
        let records = records
            .into_iter()
            .map(|(state, mut record)| {
                record.state = StepState::parse(&state)
                    .ok_or_else(|| corrupt(format!("unknown step state {state:?}")))?;
                Ok(record)
            })
            .collect::<Result<Vec<_>>>()?;
        let attempts = self.query(
            "SELECT a.idx, a.number, a.id, a.node, a.outcome, COALESCE(a.error, '') FROM attempts a
             JOIN steps s ON s.run_id = a.run_id AND s.idx = a.idx AND s.attempts = a.number
             WHERE a.run_id = ?1 ORDER BY a.idx",
            [run_id],
            |r| {
                let outcome: Option<String> = r.get(4)?;
                let error: String = r.get(5)?;
                Ok((
                    outcome,
                    error,
                    StoredAttempt {
                        step: r.get::<_, i64>(0)? as usize,
                        number: r.get(1)?,
                        id: r.get(2)?,
                        node: r.get(3)?,
                        result: None,
                    },
                ))
            },
        )?;
        let attempts = attempts
            .into_iter()
            .map(|(outcome, error, mut attempt)| {
                if let Some(outcome) = outcome {
                    let parsed = AttemptOutcome::parse(&outcome)
                        .ok_or_else(|| corrupt(format!("unknown attempt outcome {outcome:?}")))?;
                    attempt.result = Some((parsed, error));
                }
                Ok(attempt)
            })
            .collect::<Result<Vec<_>>>()?;
        let last_seq: i64 = self
            .conn
            .query_row(
                "SELECT COALESCE(MAX(seq), 0) FROM run_events WHERE run_id = ?1",
                [run_id],
                |r| r.get(0),
            )
            .map_err(self.err())?;
        Ok(StoredRun {
            id: run_id.to_string(),
            plan,
            durable,
            records,
            inventory_toml,
            step_timeout_ms,
            installer_sha256,
            master_installer_sha256,
            attempts,
            last_seq: u64::try_from(last_seq).unwrap_or(0),
        })
    }

    /// Appends a note to a run's event log (e.g. that the coordinator restarted and resumed it).
    pub fn note(&mut self, run_id: &str, at: Millis, text: &str) -> Result<u64> {
        self.flush_events()?;
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let seq: i64 = tx
            .query_row(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM run_events WHERE run_id = ?1",
                [run_id],
                |r| r.get(0),
            )
            .map_err(err)?;
        tx.execute(
            "INSERT INTO run_events (run_id, seq, at, idx, kind, payload) VALUES (?1, ?2, ?3, NULL, 'note', ?4)",
            params![run_id, seq, at, serde_json::json!({ "message": text }).to_string()],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(u64::try_from(seq).unwrap_or(0))
    }

    /// Records the SHA-256 of the installer the run installs on nodes of `role` (read in the first
    /// preflight where that role installs).
    pub fn set_installer_sha256(&mut self, run_id: &str, role: Role, sha256: &str) -> Result<()> {
        self.flush_events()?;
        let sql = match role {
            Role::Master => "UPDATE runs SET master_installer_sha256 = ?2 WHERE id = ?1",
            Role::Member => "UPDATE runs SET installer_sha256 = ?2 WHERE id = ?1",
        };
        self.conn
            .execute(sql, params![run_id, sha256])
            .map_err(self.err())?;
        Ok(())
    }

    /// Takes one event an agent emitted for an attempt; false when (attempt, seq) was already taken.
    /// It is written with the next [`Store::flush_events`] (or any other write): acknowledge it only
    /// after that.
    pub fn agent_event(
        &mut self,
        attempt_id: &str,
        seq: u64,
        at: Millis,
        kind: &str,
        payload: &serde_json::Value,
    ) -> Result<bool> {
        let key = (attempt_id.to_string(), seq);
        if self.pending_keys.contains(&key) {
            return Ok(false);
        }
        let stored = self
            .conn
            .prepare_cached("SELECT 1 FROM attempt_events WHERE attempt_id = ?1 AND seq = ?2")
            .and_then(|mut stmt| stmt.exists(params![attempt_id, seq as i64]))
            .map_err(self.err())?;
        if stored {
            return Ok(false);
        }
        self.pending.push(PendingEvent {
            attempt_id: attempt_id.to_string(),
            seq,
            at,
            kind: kind.to_string(),
            payload: payload.to_string(),
        });
        self.pending_keys.insert(key);
        Ok(true)
    }

    /// Writes the agent events taken since the last flush, in one transaction. Every other write and
    /// every read of agent events flushes first, so that they never see the store without them.
    pub fn flush_events(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO attempt_events (attempt_id, seq, at, kind, payload) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(err)?;
            for e in &self.pending {
                insert
                    .execute(params![e.attempt_id, e.seq as i64, e.at, e.kind, e.payload])
                    .map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        for e in &self.pending {
            if let Some(contiguous) = self.contiguous.get_mut(&e.attempt_id) {
                contiguous.insert(e.seq as i64);
            }
        }
        self.pending.clear();
        self.pending_keys.clear();
        Ok(())
    }

    /// How many agent events wait for [`Store::flush_events`].
    #[cfg(test)]
    pub fn pending_events(&self) -> usize {
        self.pending.len()
    }

    /// The highest sequence number stored for an attempt with no gap below it (what may be acknowledged).
    /// Read from the database the first time an attempt is asked about, then kept as its events are
    /// written.
    pub fn contiguous_seq(&mut self, attempt_id: &str) -> Result<u64> {
        self.flush_events()?;
        if let Some(contiguous) = self.contiguous.get(attempt_id) {
            return Ok(contiguous.up_to());
        }
        let stored = self.query(
            "SELECT seq FROM attempt_events WHERE attempt_id = ?1 ORDER BY seq",
            [attempt_id],
            |r| r.get::<_, i64>(0),
        )?;
        let contiguous = Contiguous::of(stored);
        let up_to = contiguous.up_to();
        self.contiguous.insert(attempt_id.to_string(), contiguous);
        Ok(up_to)
    }

    /// Run events after `after_seq`, oldest first, at most `limit`.
    pub fn run_events(
        &self,
        run_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        self.query(
            "SELECT seq, at, idx, kind, payload FROM run_events WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            params![run_id, after_seq as i64, limit as i64],
            |r| {
                let payload: String = r.get(4)?;
                Ok(StoredEvent {
                    seq: r.get::<_, i64>(0)? as u64,
                    at: r.get(1)?,
                    step: r.get::<_, Option<i64>>(2)?.map(|i| i as usize),
                    kind: r.get(3)?,
                    payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
                })
            },
        )
    }

    pub fn run(&self, run_id: &str) -> Result<RunRow> {
        self.conn
            .query_row(
                "SELECT id, workflow, state, reason, started_at, finished_at, started_by, selection_json, plan_hash, target_version, installer, installer_sha256, master_installer_sha256 FROM runs WHERE id = ?1",
                [run_id],
                run_row,
            )
            .optional()
            .map_err(self.err())?
            .ok_or_else(|| StoreError::UnknownRun(run_id.to_string()))
    }

    /// Every run, newest first.
    pub fn runs(&self) -> Result<Vec<RunRow>> {
        self.query(
            "SELECT id, workflow, state, reason, started_at, finished_at, started_by, selection_json, plan_hash, target_version, installer, installer_sha256, master_installer_sha256 FROM runs ORDER BY started_at DESC, id",
            [],
            run_row,
        )
    }

    /// The inventory text a run started from.
    pub fn inventory_snapshot(&self, run_id: &str) -> Result<String> {
        self.conn
            .query_row(
                "SELECT inventory_toml FROM runs WHERE id = ?1",
                [run_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())?
            .ok_or_else(|| StoreError::UnknownRun(run_id.to_string()))
    }

    /// The steps of a run, in plan order.
    pub fn steps(&self, run_id: &str) -> Result<Vec<StepRow>> {
        self.query(
            "SELECT idx, environment, node, step, batch, state, attempts, message, started_at, finished_at
             FROM steps WHERE run_id = ?1 ORDER BY idx",
            [run_id],
            |r| {
                Ok(StepRow {
                    index: r.get::<_, i64>(0)? as usize,
                    environment: r.get(1)?,
                    node: r.get(2)?,
                    step: r.get(3)?,
                    batch: r.get(4)?,
                    state: r.get(5)?,
                    attempts: r.get(6)?,
                    message: r.get(7)?,
                    started_at: r.get(8)?,
                    finished_at: r.get(9)?,
                })
            },
        )
    }

    /// A run's environments, in plan order (each has steps: its preflight at least).
    pub fn run_environments(&self, run_id: &str) -> Result<Vec<String>> {
        self.query(
            "SELECT environment FROM steps WHERE run_id = ?1 GROUP BY environment ORDER BY MIN(idx)",
            [run_id],
            |r| r.get(0),
        )
    }

    /// The progress and output events of each step's current attempt, by step and sequence
    /// ([`StepReportRow`]); steps never dispatched have none.
    pub fn step_reports(&mut self, run_id: &str) -> Result<Vec<StepReportRow>> {
        self.flush_events()?;
        self.query(
            "SELECT a.idx, a.id, e.kind, e.payload FROM attempts a
             JOIN steps s ON s.run_id = a.run_id AND s.idx = a.idx AND s.attempts = a.number
             LEFT JOIN attempt_events e ON e.attempt_id = a.id AND e.kind IN ('progress', 'output')
             WHERE a.run_id = ?1 ORDER BY a.idx, e.seq",
            [run_id],
            |r| {
                let kind: Option<String> = r.get(2)?;
                let payload: Option<String> = r.get(3)?;
                Ok(StepReportRow {
                    step: usize::try_from(r.get::<_, i64>(0)?).unwrap_or(usize::MAX),
                    attempt_id: r.get(1)?,
                    event: kind.map(|k| {
                        let payload = payload
                            .and_then(|p| serde_json::from_str(&p).ok())
                            .unwrap_or_default();
                        (k, payload)
                    }),
                })
            },
        )
    }

    /// The run, step, attempt number and node an attempt id belongs to.
    pub fn attempt(&self, attempt_id: &str) -> Result<Option<AttemptRow>> {
        self.conn
            .query_row(
                "SELECT run_id, idx, number, node, accepted_by FROM attempts WHERE id = ?1",
                [attempt_id],
                |r| {
                    Ok(AttemptRow {
                        run_id: r.get(0)?,
                        step: r.get::<_, i64>(1)? as usize,
                        number: r.get(2)?,
                        node: r.get(3)?,
                        accepted_by: r.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(self.err())
    }

    /// Records the agent instance that accepted an attempt; the first acceptance stands.
    pub fn accepted(&self, attempt_id: &str, instance: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE attempts SET accepted_by = ?2 WHERE id = ?1 AND accepted_by IS NULL",
                params![attempt_id, instance],
            )
            .map(drop)
            .map_err(self.err())
    }

    /// Records an attempt's result and its artifacts, once: false when it was already recorded.
    pub fn finish_attempt(
        &mut self,
        attempt_id: &str,
        at: Millis,
        outcome: AttemptOutcome,
        error: &str,
        exit_code: Option<i32>,
        artifacts: &[NewArtifact],
    ) -> Result<bool> {
        self.flush_events()?;
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let changed = tx
            .execute(
                "UPDATE attempts SET state = 'finished', finished_at = ?2, outcome = ?3, error = ?4, exit_code = ?5
                 WHERE id = ?1 AND state <> 'finished'",
                params![attempt_id, at, outcome.as_str(), error, exit_code],
            )
            .map_err(err)?;
        if changed == 0 {
            return Ok(false);
        }
        for a in artifacts {
            tx.execute(
                "INSERT INTO artifacts (attempt_id, kind, path, size_bytes, sha256, note) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![attempt_id, a.kind, a.path, i64::try_from(a.size_bytes).unwrap_or(i64::MAX), a.sha256, a.note],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(true)
    }

    /// Whether an attempt's result is stored.
    pub fn attempt_finished(&self, attempt_id: &str) -> Result<bool> {
        self.conn
            .query_row(
                "SELECT state = 'finished' FROM attempts WHERE id = ?1",
                [attempt_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())
            .map(|f| f.unwrap_or(false))
    }

    /// Artifacts recorded for a run's attempts.
    pub fn artifacts(&self, run_id: &str) -> Result<Vec<ArtifactRow>> {
        self.query(
            "SELECT a.idx, f.kind, f.path, f.size_bytes, f.sha256, f.note FROM artifacts f JOIN attempts a ON a.id = f.attempt_id
             WHERE a.run_id = ?1 ORDER BY a.idx",
            [run_id],
            |r| {
                Ok(ArtifactRow {
                    step: r.get::<_, i64>(0)? as usize,
                    kind: r.get(1)?,
                    path: r.get(2)?,
                    size_bytes: r.get::<_, i64>(3)? as u64,
                    sha256: r.get(4)?,
                    note: r.get(5)?,
                })
            },
        )
    }

    /// The events an agent reported for a run's attempts, optionally of one node and step, in order.
    pub fn step_log(
        &mut self,
        run_id: &str,
        node: Option<&str>,
        step: Option<&str>,
    ) -> Result<Vec<LogRow>> {
        self.step_log_page(run_id, node, step, None, usize::MAX)
    }

    /// At most `limit` rows of [`Store::step_log`], those after `after` (from the start without it).
    pub fn step_log_page(
        &mut self,
        run_id: &str,
        node: Option<&str>,
        step: Option<&str>,
        after: Option<LogPosition>,
        limit: usize,
    ) -> Result<Vec<LogRow>> {
        self.flush_events()?;
        let after = after.map(|p| {
            (
                i64::try_from(p.step).unwrap_or(i64::MAX),
                p.attempt,
                i64::try_from(p.seq).unwrap_or(i64::MAX),
            )
        });
        self.query(
            "SELECT COALESCE(a.node, ''), s.step, a.number, e.kind, e.payload, a.idx, e.seq
             FROM attempt_events e JOIN attempts a ON a.id = e.attempt_id
             JOIN steps s ON s.run_id = a.run_id AND s.idx = a.idx
             WHERE a.run_id = ?1 AND (?2 IS NULL OR a.node = ?2) AND (?3 IS NULL OR s.step = ?3)
               AND (?4 IS NULL OR (a.idx, a.number, e.seq) > (?4, ?5, ?6))
             ORDER BY a.idx, a.number, e.seq
             LIMIT ?7",
            params![
                run_id,
                node,
                step,
                after.map(|a| a.0),
                after.map(|a| a.1),
                after.map(|a| a.2),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            |r| {
                let payload: String = r.get(4)?;
                let attempt = r.get(2)?;
                Ok(LogRow {
                    node: r.get(0)?,
                    step: r.get(1)?,
                    attempt,
                    kind: r.get(3)?,
                    payload: serde_json::from_str(&payload).unwrap_or_default(),
                    position: LogPosition {
                        step: usize::try_from(r.get::<_, i64>(5)?).unwrap_or(usize::MAX),
                        attempt,
                        seq: u64::try_from(r.get::<_, i64>(6)?).unwrap_or(0),
                    },
                })
            },
        )
    }

    pub fn audit(&mut self, entry: &AuditEntry) -> Result<()> {
        self.flush_events()?;
        insert_audit(&self.conn, entry).map_err(self.err())
    }

    /// The audit trail, oldest first; of one run when `run_id` is given.
    pub fn audit_entries(&self, run_id: Option<&str>) -> Result<Vec<AuditEntry>> {
        self.query(
            "SELECT at, operator, action, run_id, node, step, detail, request_id FROM audit
             WHERE ?1 IS NULL OR run_id = ?1 ORDER BY id",
            [run_id],
            audit_row,
        )
    }

    /// The control of `run_id` that was applied with `request_id`, if one was.
    pub fn control_by_request(&self, run_id: &str, request_id: &str) -> Result<Option<AuditEntry>> {
        self.conn
            .query_row(
                "SELECT at, operator, action, run_id, node, step, detail, request_id FROM audit
                 WHERE run_id = ?1 AND request_id = ?2",
                [run_id, request_id],
                audit_row,
            )
            .optional()
            .map_err(self.err())
    }
}

fn insert_audit(conn: &Connection, entry: &AuditEntry) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO audit (at, operator, action, run_id, node, step, detail, request_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![entry.at, entry.operator, entry.action, entry.run_id, entry.node, entry.step, entry.detail, entry.request_id],
    )?;
    Ok(())
}

fn audit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        at: r.get(0)?,
        operator: r.get(1)?,
        action: r.get(2)?,
        run_id: r.get(3)?,
        node: r.get(4)?,
        step: r.get(5)?,
        detail: r.get(6)?,
        request_id: r.get(7)?,
    })
}

/// Writes a step's whole record (what [`Run::restore`] reads back).
fn write_step(conn: &Connection, run_id: &str, run: &Run, step: usize) -> rusqlite::Result<()> {
    let r = run.step_record(step);
    conn.execute(
        "UPDATE steps SET state = ?3, attempts = ?4, dispatched_at = ?5, finished_at = ?6, message = ?7, wait_until = ?8, approved = ?9, rebooting = ?10
         WHERE run_id = ?1 AND idx = ?2",
        params![
            run_id,
            i64::try_from(step).unwrap_or(i64::MAX),
            r.state.as_str(),
            r.attempt,
            r.dispatched_at,
            r.finished_at,
            r.message,
            r.wait_until,
            r.approved,
            r.rebooting
        ],
    )?;
    Ok(())
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        id: r.get(0)?,
        workflow: r.get(1)?,
        state: r.get(2)?,
        reason: r.get(3)?,
        started_at: r.get(4)?,
        finished_at: r.get(5)?,
        started_by: r.get(6)?,
        selection_json: r.get(7)?,
        plan_hash: r.get(8)?,
        target_version: r.get(9)?,
        installer: r.get(10)?,
        installer_sha256: r.get(11)?,
        master_installer_sha256: r.get(12)?,
    })
}

#[cfg(test)]
mod tests;
