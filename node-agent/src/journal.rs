//! The agent's journal (SPEC §9), a small SQLite database in `state_dir`: the newest coordinator
//! epoch seen, every step attempt accepted with its state and result, and the step events not yet
//! acknowledged by a coordinator.
//!
//! - An attempt is journaled before it starts, so a redelivered assignment (even after an agent
//!   restart) is answered from here and never run twice (invariant 4).
//! - Every event is journaled before it is sent, and sent again after a re-attach until a coordinator
//!   acknowledges it (invariant 5). An attempt is forgotten only when the coordinator says its result
//!   is stored (`complete`).
//! - An attempt that was running when the agent stopped is `interrupted` at the next start: its
//!   outcome is unknown, it is not run again, and a final failed event says so. When its process
//!   (the same id *and* start time) or anything it started still runs (an installer outlives the
//!   agent that started it), the attempt stays running until all of that has ended, so that nothing
//!   else is started on the server meanwhile (`orphan`: its output followed, its exit code reported).
//! - Nothing journaled is over the limits of what the agent sends (`limits`): an event is fitted
//!   before it is written, and rows an older agent wrote over them are fitted when the journal opens
//!   (or when they are read), with an error logged; the row then holds the small marker. A row over
//!   the coordinator's limit would otherwise be re-sent, and refused, after every re-attach.
//! - A forgotten attempt's output files (`runner::files`) are deleted with it, and a folder no
//!   attempt has (a delete that failed) once it is as old: when the journal opens, when an attempt
//!   is complete, and hourly ([`Journal::purge`]).
//! - An attempt may wait (`waiting`): for the operator's attended install, or for the reboot its
//!   installer asked for. It keeps its assignment, so that it can go on after an agent restart (the
//!   reboot) or the operator's approval; nothing else runs on the server while it waits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use fleet_proto::{pb, unix_ms};
use prost::Message;

use crate::host::{self, ProcessId};
use crate::limits;
use crate::runner::files;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::Notify;

pub const FILE: &str = "journal.db";

/// Columns added after the first release of the journal: (name, declaration).
const ADDED_COLUMNS: [(&str, &str); 3] = [
    // StepAssignment, protobuf: what a waiting attempt goes on with.
    ("assignment", "BLOB"),
    // StepWaiting, protobuf: what a waiting attempt waits for.
    ("waiting", "BLOB"),
    // When the step's process (`pid`) started, seconds since the epoch: with the id, which Windows
    // reuses quickly, it names the process. 0 or NULL: unknown (an older agent's row).
    ("pid_started", "INTEGER"),
];

/// Completed attempts are kept this long to answer redeliveries, then pruned.
const KEEP_COMPLETE_MS: i64 = 30 * 24 * 3600 * 1000;
/// How often a long-running agent purges (`Journal::purge_if_due`).
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS attempts (
    id          TEXT PRIMARY KEY,
    epoch       INTEGER NOT NULL,
    run_id      TEXT NOT NULL,
    step        TEXT NOT NULL,
    state       TEXT NOT NULL,              -- running, waiting, finished, interrupted
    accepted_at INTEGER NOT NULL,
    finished_at INTEGER,
    last_seq    INTEGER NOT NULL DEFAULT 0, -- highest event seq journaled
    acked_seq   INTEGER NOT NULL DEFAULT 0, -- highest seq a coordinator acknowledged
    result      BLOB,                       -- StepFinished, protobuf
    complete    INTEGER NOT NULL DEFAULT 0, -- the coordinator stored the result
    pid         INTEGER                     -- the step's process, once started
);
CREATE TABLE IF NOT EXISTS events (
    attempt_id TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    body       BLOB NOT NULL,               -- StepEvent, protobuf
    PRIMARY KEY (attempt_id, seq)
) WITHOUT ROWID;
";

#[derive(Debug, thiserror::Error)]
#[error("journal {}: {source}", path.display())]
pub struct JournalError {
    path: PathBuf,
    source: rusqlite::Error,
}

/// The journal, shared by the session and the running attempts; [`Journal::changed`] wakes the
/// session when there is something new to send.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<Connection>,
    path: PathBuf,
    changed: Notify,
    state_dir: PathBuf,
    purged: Mutex<std::time::Instant>,
}

impl Journal {
    /// Opens (creating) the journal in `state_dir`. Attempts that were running when the agent
    /// stopped are marked interrupted and get their final event, unless their process still runs or
    /// their program ran under the step host: those are returned as orphans (attempt id, process),
    /// for `orphan::follow` (which reports them with their output and exit code when the step host
    /// recorded it, else [`Journal::wait_and_interrupt`]).
    pub fn open(state_dir: &Path) -> Result<(Self, Vec<(String, ProcessId)>), JournalError> {
        let path = state_dir.join(FILE);
        let err = |source| JournalError {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(err)?;
        // FULL: an accepted attempt is on disk before it starts, even across a power loss.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;",
        )
        .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        add_columns(&conn).map_err(err)?;
        let journal = Self {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                path: path.clone(),
                changed: Notify::new(),
                state_dir: state_dir.to_path_buf(),
                purged: Mutex::new(std::time::Instant::now()),
            }),
        };
        journal.fit_oversized()?;
        let interrupted = journal.interrupt_running(state_dir)?;
        journal.with(|c| {
            c.execute(
                "DELETE FROM events WHERE attempt_id IN (SELECT id FROM attempts WHERE complete = 1)",
                [],
            )
        })?;
        journal.purge()?;
        Ok((journal, interrupted))
    }

    /// Forgets the attempts completed longer ago than the retention, with their output folders, and
    /// deletes the output folders of attempts the journal does not have once they are as old.
    pub fn purge(&self) -> Result<(), JournalError> {
        let cutoff = now() - KEEP_COMPLETE_MS;
        let (forgotten, known) = self.with(|c| {
            let tx = c.transaction()?;
            let forgotten = {
                let mut stmt =
                    tx.prepare("SELECT id FROM attempts WHERE complete = 1 AND finished_at < ?1")?;
                let rows = stmt.query_map([cutoff], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<Vec<String>>>()?
            };
            tx.execute(
                "DELETE FROM attempts WHERE complete = 1 AND finished_at < ?1",
                [cutoff],
            )?;
            let known = {
                let mut stmt = tx.prepare("SELECT id FROM attempts")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<Vec<String>>>()?
            };
            tx.commit()?;
            Ok((forgotten, known))
        })?;
        let state_dir = &self.inner.state_dir;
        for attempt_id in forgotten {
            files::remove_attempt(state_dir, &attempt_id);
        }
        let retention = std::time::Duration::from_millis(KEEP_COMPLETE_MS.unsigned_abs());
        files::remove_unknown_attempts(state_dir, &known, retention);
        *self
            .inner
            .purged
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = std::time::Instant::now();
        Ok(())
    }

    /// [`Journal::purge`], when the last one is an hour ago (a long-running agent's, from its loop).
    pub fn purge_if_due(&self) {
        let due = self
            .inner
            .purged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed()
            >= PURGE_EVERY;
        if due && let Err(e) = self.purge() {
            tracing::warn!("cannot purge the journal: {e}");
        }
    }

    /// Fits the rows an older agent wrote over the limits of what the agent sends (`limits`): each
    /// is replaced by its fitted form, and the error logged.
    /// One row at a time: each may be megabytes.
    fn fit_oversized(&self) -> Result<(), JournalError> {
        let max = limits::RESULT_MAX as i64;
        let events: Vec<(String, i64)> = self.with(|c| {
            let mut stmt =
                c.prepare("SELECT attempt_id, seq FROM events WHERE length(body) > ?1")?;
            let rows = stmt.query_map([max], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })?;
        for (attempt_id, seq) in events {
            let body: Option<Vec<u8>> = self.with(|c| {
                c.query_row(
                    "SELECT body FROM events WHERE attempt_id = ?1 AND seq = ?2",
                    params![attempt_id, seq],
                    |r| r.get(0),
                )
                .optional()
            })?;
            if let Some(event) = body.and_then(|b| pb::StepEvent::decode(b.as_slice()).ok()) {
                self.refit(event)?;
            }
        }
        let results: Vec<String> = self.with(|c| {
            let mut stmt = c.prepare("SELECT id FROM attempts WHERE length(result) > ?1")?;
            let rows = stmt.query_map([max], |r| r.get(0))?;
            rows.collect()
        })?;
        for attempt_id in results {
            let body: Option<Vec<u8>> = self.with(|c| {
                c.query_row(
                    "SELECT result FROM attempts WHERE id = ?1",
                    [&attempt_id],
                    |r| r.get(0),
                )
                .optional()
            })?;
            let Some(body) = body else {
                continue;
            };
            let Ok(mut result) = pb::StepFinished::decode(body.as_slice()) else {
                continue;
            };
            if limits::fit_result(&mut result) {
                tracing::error!(
                    attempt_id,
                    "the journaled result of attempt {attempt_id} was {} bytes, over the limit of what the agent sends; its long parts were cut",
                    body.len()
                );
                self.with(|c| {
                    c.execute(
                        "UPDATE attempts SET result = ?2 WHERE id = ?1",
                        params![attempt_id, result.encode_to_vec()],
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Replaces a journaled event over the limits by its fitted form (the error logged); the fitted
    /// event.
    fn refit(&self, mut event: pb::StepEvent) -> Result<pb::StepEvent, JournalError> {
        if let Some(problem) = limits::fit_event(&mut event) {
            tracing::error!(attempt_id = %event.attempt_id, "{problem}");
            let seq = i64::try_from(event.seq).unwrap_or(i64::MAX);
            self.with(|c| {
                c.execute(
                    "UPDATE events SET body = ?3 WHERE attempt_id = ?1 AND seq = ?2",
                    params![event.attempt_id, seq, event.encode_to_vec()],
                )
            })?;
        }
        Ok(event)
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, JournalError> {
        let mut conn = self
            .inner
            .conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(&mut conn).map_err(|source| JournalError {
            path: self.inner.path.clone(),
            source,
        })
    }

    /// Notified whenever an event is journaled.
    pub fn changed(&self) -> &Notify {
        &self.inner.changed
    }

    /// The running attempts whose process runs on, or whose program ran under the step host (it may
    /// have ended while no agent ran: its output and exit code are in its files), to be followed
    /// (`orphan`); the others are interrupted now.
    fn interrupt_running(
        &self,
        state_dir: &Path,
    ) -> Result<Vec<(String, ProcessId)>, JournalError> {
        let running: Vec<(String, Option<ProcessId>)> = self.with(|c| {
            let mut stmt =
                c.prepare("SELECT id, pid, pid_started FROM attempts WHERE state = 'running'")?;
            let rows = stmt.query_map([], |r| {
                let pid = r.get::<_, Option<i64>>(1)?;
                let started = r.get::<_, Option<i64>>(2)?.unwrap_or(0);
                Ok((
                    r.get(0)?,
                    pid.and_then(|p| u32::try_from(p).ok())
                        .filter(|&p| p > 0)
                        .map(|pid| ProcessId {
                            pid,
                            started: u64::try_from(started).unwrap_or(0),
                        }),
                ))
            })?;
            rows.collect()
        })?;
        let mut orphans = Vec::new();
        for (id, process) in running {
            let hosted = |_: &ProcessId| {
                files::Program::last_hosted(&files::attempt_dir(state_dir, &id)).is_some()
            };
            match process.filter(|p| hosted(p) || host::tree_alive(*p)) {
                Some(process) => orphans.push((id, process)),
                None => self.interrupt(&id, "", None)?,
            }
        }
        Ok(orphans)
    }

    /// Records the attempt as interrupted, with its final (failed) event: `detail` says what is
    /// known of its program (and `exit_code`, how it ended).
    pub fn interrupt(
        &self,
        attempt_id: &str,
        detail: &str,
        exit_code: Option<i32>,
    ) -> Result<(), JournalError> {
        let last_seq = self.find(attempt_id)?.map_or(0, |r| r.last_seq);
        let result = pb::StepFinished {
            outcome: pb::StepOutcome::Failed as i32,
            exit_code,
            error: format!(
                "interrupted: the agent stopped while this step ran{detail}; its outcome is unknown and it was not run again (check the server, then retry or skip the step)"
            ),
            ..Default::default()
        };
        self.finish_as(attempt_id, last_seq, result, "interrupted")
    }

    /// Records the agent's own result for an attempt whose last event was `last_seq` (its final
    /// event, `last_seq + 1`).
    pub fn finish(
        &self,
        attempt_id: &str,
        last_seq: u64,
        result: pb::StepFinished,
    ) -> Result<(), JournalError> {
        self.finish_as(attempt_id, last_seq, result, "finished")
    }

    fn finish_as(
        &self,
        attempt_id: &str,
        last_seq: u64,
        result: pb::StepFinished,
        state: &str,
    ) -> Result<(), JournalError> {
        let event = pb::StepEvent {
            attempt_id: attempt_id.to_string(),
            seq: last_seq + 1,
            at_unix_ms: now(),
            kind: Some(pb::step_event::Kind::Finished(result)),
        };
        self.record_as(&event, state)
    }

    /// Waits until the process an interrupted attempt started, and everything it started, has
    /// ended, then records the attempt as interrupted.
    pub async fn wait_and_interrupt(&self, attempt_id: &str, process: ProcessId) {
        while tokio::task::spawn_blocking(move || host::tree_alive(process))
            .await
            .unwrap_or(false)
        {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        let detail = format!(" (its process {} ran on, and has ended)", process.pid);
        if let Err(e) = self.interrupt(attempt_id, &detail, None) {
            tracing::error!(attempt_id, "cannot record an interrupted attempt: {e}");
        }
    }

    /// The newest coordinator epoch this agent has seen (0: none).
    pub fn highest_epoch(&self) -> Result<u64, JournalError> {
        self.with(|c| {
            c.query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map(|v| v.map_or(0, |v| u64::try_from(v).unwrap_or(0)))
        })
    }

    /// Records `epoch` as seen (the highest is kept).
    pub fn see_epoch(&self, epoch: u64) -> Result<(), JournalError> {
        let epoch = i64::try_from(epoch).unwrap_or(i64::MAX);
        self.with(|c| {
            c.execute(
                "INSERT INTO meta (key, value) VALUES ('epoch', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)",
                [epoch],
            )
            .map(|_| ())
        })
    }

    /// Journals a new attempt as running. `Ok(Err(report))` when the id is known: it is not run again.
    pub fn accept(
        &self,
        attempt_id: &str,
        epoch: u64,
        run_id: &str,
        step: &str,
    ) -> Result<Accept, JournalError> {
        self.accept_with(attempt_id, epoch, run_id, step, None)
    }

    /// [`Journal::accept`], keeping the assignment with the attempt (an attempt that may wait needs it
    /// to go on).
    pub fn accept_with(
        &self,
        attempt_id: &str,
        epoch: u64,
        run_id: &str,
        step: &str,
        assignment: Option<&pb::StepAssignment>,
    ) -> Result<Accept, JournalError> {
        if let Some(known) = self.find(attempt_id)? {
            return Ok(Accept::Known(Box::new(known)));
        }
        // One step at a time on a server: no second installer next to one still running (an attempt
        // the coordinator gave up on, or one that outlived a restart of this agent).
        let running = self.in_flight();
        if running > 0 {
            return Ok(Accept::Busy(running));
        }
        self.with(|c| {
            c.execute(
                "INSERT INTO attempts (id, epoch, run_id, step, state, accepted_at, assignment) VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?6)",
                params![
                    attempt_id,
                    i64::try_from(epoch).unwrap_or(i64::MAX),
                    run_id,
                    step,
                    now(),
                    assignment.map(Message::encode_to_vec)
                ],
            )
        })?;
        Ok(Accept::New)
    }

    /// Journals an event of an attempt (its result too, when it is the final one) and wakes the session.
    pub fn record(&self, event: &pb::StepEvent) -> Result<(), JournalError> {
        self.record_as(event, "finished")
    }

    /// Journals an event of the attempt after its last one (a program that outlived the agent).
    pub fn append(&self, attempt_id: &str, kind: pb::step_event::Kind) -> Result<(), JournalError> {
        let last_seq = self.find(attempt_id)?.map_or(0, |r| r.last_seq);
        self.record(&pb::StepEvent {
            attempt_id: attempt_id.to_string(),
            seq: last_seq + 1,
            at_unix_ms: now(),
            kind: Some(kind),
        })
    }

    fn record_as(&self, event: &pb::StepEvent, final_state: &str) -> Result<(), JournalError> {
        let mut fitted = event.clone();
        if let Some(problem) = limits::fit_event(&mut fitted) {
            tracing::error!(attempt_id = %event.attempt_id, "{problem}");
        }
        let event = &fitted;
        let seq = i64::try_from(event.seq).unwrap_or(i64::MAX);
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT OR IGNORE INTO events (attempt_id, seq, body) VALUES (?1, ?2, ?3)",
                params![event.attempt_id, seq, event.encode_to_vec()],
            )?;
            tx.execute(
                "UPDATE attempts SET last_seq = MAX(last_seq, ?2) WHERE id = ?1",
                params![event.attempt_id, seq],
            )?;
            if let Some(pb::step_event::Kind::Started(started)) = &event.kind
                && started.pid > 0
            {
                tx.execute(
                    "UPDATE attempts SET pid = ?2, pid_started = ?3 WHERE id = ?1",
                    params![
                        event.attempt_id,
                        i64::from(started.pid),
                        i64::try_from(started.process_started_unix_s).unwrap_or(0)
                    ],
                )?;
            }
            if let Some(pb::step_event::Kind::Waiting(waiting)) = &event.kind {
                tx.execute(
                    "UPDATE attempts SET state = 'waiting', waiting = ?2 WHERE id = ?1 AND state IN ('running', 'waiting')",
                    params![event.attempt_id, waiting.encode_to_vec()],
                )?;
            }
            if let Some(pb::step_event::Kind::Finished(result)) = &event.kind {
                tx.execute(
                    "UPDATE attempts SET state = ?2, result = ?3, finished_at = ?4 WHERE id = ?1",
                    params![event.attempt_id, final_state, result.encode_to_vec(), now()],
                )?;
            }
            tx.commit()
        })?;
        self.inner.changed.notify_one();
        Ok(())
    }

    /// A coordinator stored the attempt's events up to `up_to` (and its result, when `complete`).
    /// A complete attempt is a moment to purge the journal.
    pub fn ack(&self, attempt_id: &str, up_to: u64, complete: bool) -> Result<(), JournalError> {
        let up_to = i64::try_from(up_to).unwrap_or(i64::MAX);
        let complete = self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE attempts SET acked_seq = MAX(acked_seq, ?2) WHERE id = ?1",
                params![attempt_id, up_to],
            )?;
            // Only a finished attempt can be complete: a stray ack must not make the agent forget a
            // running one.
            let complete = complete
                && tx.execute(
                    "UPDATE attempts SET complete = 1 WHERE id = ?1 AND state IN ('finished', 'interrupted')",
                    [attempt_id],
                )? == 1;
            if complete {
                tx.execute("DELETE FROM events WHERE attempt_id = ?1", [attempt_id])?;
            } else {
                tx.execute(
                    "DELETE FROM events WHERE attempt_id = ?1 AND seq <= ?2",
                    params![attempt_id, up_to],
                )?;
            }
            tx.commit()?;
            Ok(complete)
        })?;
        if complete && let Err(e) = self.purge() {
            tracing::warn!("cannot purge the journal: {e}");
        }
        Ok(())
    }

    fn find(&self, attempt_id: &str) -> Result<Option<pb::AttemptReport>, JournalError> {
        self.with(|c| {
            c.query_row(
                "SELECT id, state, last_seq, acked_seq, result, epoch, waiting FROM attempts WHERE id = ?1",
                [attempt_id],
                report_row,
            )
            .optional()
        })
    }

    /// What the journal holds of an attempt (`UNKNOWN` when it was never received).
    pub fn report(&self, attempt_id: &str) -> Result<pb::AttemptReport, JournalError> {
        Ok(self.find(attempt_id)?.unwrap_or_else(|| pb::AttemptReport {
            attempt_id: attempt_id.to_string(),
            state: pb::AttemptState::Unknown as i32,
            ..Default::default()
        }))
    }

    /// Attempts whose result a coordinator has not confirmed: reported in every hello.
    pub fn unsettled(&self) -> Result<Vec<pb::AttemptReport>, JournalError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, state, last_seq, acked_seq, result, epoch, waiting FROM attempts WHERE complete = 0 ORDER BY accepted_at, id",
            )?;
            let rows = stmt.query_map([], report_row)?;
            rows.collect()
        })
    }

    /// Journaled events not acknowledged and above `sent` (per attempt), in order per attempt;
    /// `sent` is advanced past them.
    pub fn unsent(
        &self,
        sent: &mut HashMap<String, u64>,
    ) -> Result<Vec<pb::StepEvent>, JournalError> {
        let rows: Vec<(String, u64, Vec<u8>)> = self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT attempt_id, seq, body FROM events ORDER BY attempt_id, seq",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?))
            })?;
            rows.collect()
        })?;
        let mut out = Vec::new();
        for (attempt_id, seq, body) in rows {
            let cursor = sent.entry(attempt_id).or_insert(0);
            if seq <= *cursor {
                continue;
            }
            match pb::StepEvent::decode(body.as_slice()) {
                Ok(event) => {
                    *cursor = seq;
                    // Checked before it is sent: one over the limits is never sent.
                    out.push(self.refit(event)?);
                }
                Err(e) => tracing::error!("journal: an undecodable event ({e}); skipped"),
            }
        }
        Ok(out)
    }

    /// The attempts waiting for a reboot (in progress, or to be done by hand), with their
    /// assignments: after a start of the agent in another boot, each is verified and finished.
    pub fn waiting_for_reboot(&self) -> Result<Vec<Waiting>, JournalError> {
        let rows: Vec<(String, u64, Blob, Blob)> = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, last_seq, assignment, waiting FROM attempts WHERE state = 'waiting' ORDER BY accepted_at",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?, r.get(3)?))
            })?;
            rows.collect()
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|(attempt_id, last_seq, assignment, waiting)| {
                let waiting = waiting.and_then(|b| pb::StepWaiting::decode(b.as_slice()).ok())?;
                matches!(
                    waiting.reason(),
                    pb::WaitReason::Reboot | pb::WaitReason::RestartByHand
                )
                .then(|| Waiting {
                    attempt_id,
                    last_seq,
                    assignment: assignment
                        .and_then(|b| pb::StepAssignment::decode(b.as_slice()).ok()),
                    waiting,
                })
            })
            .collect())
    }

    /// Takes a waiting attempt up again (`running`), if it waits for `reason`: once only, so that a
    /// repeated approval does nothing. Its assignment and last seq, to go on with.
    pub fn take_up(
        &self,
        attempt_id: &str,
        reason: pb::WaitReason,
    ) -> Result<Option<Waiting>, JournalError> {
        let row: Option<(u64, Blob, Blob)> = self.with(|c| {
            let tx = c.transaction()?;
            let row = tx
                .query_row(
                    "SELECT last_seq, assignment, waiting FROM attempts WHERE id = ?1 AND state = 'waiting'",
                    [attempt_id],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)? as u64,
                            r.get::<_, Option<Vec<u8>>>(1)?,
                            r.get::<_, Option<Vec<u8>>>(2)?,
                        ))
                    },
                )
                .optional()?;
            let waits_for = row
                .as_ref()
                .and_then(|(_, _, w)| w.as_ref())
                .and_then(|b| pb::StepWaiting::decode(b.as_slice()).ok())
                .is_some_and(|w| w.reason() == reason);
            if !waits_for {
                return Ok(None);
            }
            // The process recorded before the wait (the installer, shutdown.exe) is not this one's.
            tx.execute(
                "UPDATE attempts SET state = 'running', pid = NULL, pid_started = NULL WHERE id = ?1 AND state = 'waiting'",
                [attempt_id],
            )?;
            tx.commit()?;
            Ok(row)
        })?;
        Ok(row.and_then(|(last_seq, assignment, waiting)| {
            Some(Waiting {
                attempt_id: attempt_id.to_string(),
                last_seq,
                assignment: assignment.and_then(|b| pb::StepAssignment::decode(b.as_slice()).ok()),
                waiting: waiting.and_then(|b| pb::StepWaiting::decode(b.as_slice()).ok())?,
            })
        }))
    }

    /// Ends an attempt that waits for the operator (its run was aborted): its final event says so.
    /// False when it is not waiting for the operator (nothing to cancel: it runs, or has ended).
    pub fn cancel_waiting(&self, attempt_id: &str, reason: &str) -> Result<bool, JournalError> {
        let mut taken = None;
        for (waits_for, what) in [
            (pb::WaitReason::AttendedInstall, "the attended install"),
            (pb::WaitReason::RestartByHand, "a restart of the server"),
        ] {
            if let Some(waiting) = self.take_up(attempt_id, waits_for)? {
                taken = Some((waiting, what));
                break;
            }
        }
        let Some((taken, what)) = taken else {
            return Ok(false);
        };
        let result = pb::StepFinished {
            outcome: pb::StepOutcome::Cancelled as i32,
            error: format!("cancelled while waiting for {what}: {reason}"),
            ..Default::default()
        };
        self.finish(attempt_id, taken.last_seq, result)?;
        Ok(true)
    }

    pub fn in_flight(&self) -> u32 {
        self.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM attempts WHERE state IN ('running', 'waiting')",
                [],
                |r| r.get::<_, i64>(0),
            )
        })
        .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
    }
}

/// A protobuf column that may be empty.
type Blob = Option<Vec<u8>>;

/// An attempt that waited, as the journal holds it.
#[derive(Debug, Clone)]
pub struct Waiting {
    pub attempt_id: String,
    pub last_seq: u64,
    /// `None` only for an attempt journaled by an agent too old to keep it.
    pub assignment: Option<pb::StepAssignment>,
    pub waiting: pb::StepWaiting,
}

/// What [`Journal::accept`] decided.
#[derive(Debug)]
pub enum Accept {
    /// Journaled as running: run it.
    New,
    /// Seen before: what is known of it; never run again.
    Known(Box<pb::AttemptReport>),
    /// This many other attempts still run here.
    Busy(u32),
}

fn report_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<pb::AttemptReport> {
    let state = match r.get::<_, String>(1)?.as_str() {
        "running" => pb::AttemptState::Running,
        "finished" => pb::AttemptState::Finished,
        "interrupted" => pb::AttemptState::Interrupted,
        "waiting" => pb::AttemptState::Waiting,
        _ => pb::AttemptState::Unspecified,
    };
    let result: Option<Vec<u8>> = r.get(4)?;
    let waiting: Option<Vec<u8>> = r.get(6)?;
    Ok(pb::AttemptReport {
        attempt_id: r.get(0)?,
        state: state as i32,
        last_seq: r.get::<_, i64>(2)? as u64,
        acked_seq: r.get::<_, i64>(3)? as u64,
        result: result
            .and_then(|b| pb::StepFinished::decode(b.as_slice()).ok())
            .map(|mut result| {
                limits::fit_result(&mut result);
                result
            }),
        epoch: r.get::<_, i64>(5)? as u64,
        waiting: waiting
            .filter(|_| state == pb::AttemptState::Waiting)
            .and_then(|b| pb::StepWaiting::decode(b.as_slice()).ok()),
    })
}

/// Brings a journal written by an older agent up to this schema.
fn add_columns(conn: &Connection) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info('attempts')")?;
    let have: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for (name, declaration) in ADDED_COLUMNS {
        if !have.iter().any(|h| h == name) {
            conn.execute_batch(&format!(
                "ALTER TABLE attempts ADD COLUMN {name} {declaration}"
            ))?;
        }
    }
    Ok(())
}

fn now() -> i64 {
    unix_ms(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Accept {
        fn fresh(self) {
            assert!(matches!(self, Accept::New), "{self:?}");
        }

        fn known(self) -> Box<pb::AttemptReport> {
            match self {
                Accept::Known(r) => r,
                other => panic!("{other:?}"),
            }
        }
    }

    fn event(attempt: &str, seq: u64, finished: bool) -> pb::StepEvent {
        let kind = if finished {
            pb::step_event::Kind::Finished(pb::StepFinished {
                outcome: pb::StepOutcome::Succeeded as i32,
                ..Default::default()
            })
        } else {
            pb::step_event::Kind::Log(pb::StepLog {
                stream: pb::LogStream::Stdout as i32,
                line: format!("line {seq}"),
            })
        };
        pb::StepEvent {
            attempt_id: attempt.into(),
            seq,
            at_unix_ms: 1,
            kind: Some(kind),
        }
    }

    #[test]
    fn an_attempt_is_accepted_once_even_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let (j, interrupted) = Journal::open(dir.path()).unwrap();
        assert!(interrupted.is_empty());
        j.accept("a", 3, "r", "upgrade").unwrap().fresh();
        assert_eq!(j.in_flight(), 1);
        let again = j.accept("a", 3, "r", "upgrade").unwrap().known();
        assert_eq!(again.state(), pb::AttemptState::Running);
        j.record(&event("a", 1, false)).unwrap();
        j.record(&event("a", 2, true)).unwrap();
        drop(j);
        let (j, interrupted) = Journal::open(dir.path()).unwrap();
        assert!(
            interrupted.is_empty(),
            "a finished attempt is not interrupted"
        );
        let done = j.accept("a", 4, "r", "upgrade").unwrap().known();
        assert_eq!(
            (done.state(), done.last_seq),
            (pb::AttemptState::Finished, 2)
        );
        assert_eq!(done.result.unwrap().outcome(), pb::StepOutcome::Succeeded);
        assert_eq!(j.report("b").unwrap().state(), pb::AttemptState::Unknown);
    }

    #[test]
    fn unacknowledged_events_are_sent_again_and_acknowledged_ones_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        j.accept("a", 1, "r", "s").unwrap().fresh();
        for seq in 1..=3 {
            j.record(&event("a", seq, false)).unwrap();
        }
        let mut sent = HashMap::new();
        let first: Vec<u64> = j.unsent(&mut sent).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(first, [1, 2, 3]);
        assert!(
            j.unsent(&mut sent).unwrap().is_empty(),
            "sent once per session"
        );
        j.ack("a", 2, false).unwrap();
        j.record(&event("a", 4, true)).unwrap();
        // A new session starts from scratch: everything not acknowledged, in order.
        let mut fresh = HashMap::new();
        let again: Vec<u64> = j
            .unsent(&mut fresh)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(again, [3, 4]);
        assert_eq!(j.unsettled().unwrap().len(), 1);
        j.ack("a", 4, true).unwrap();
        assert!(j.unsettled().unwrap().is_empty());
        assert!(j.unsent(&mut HashMap::new()).unwrap().is_empty());
        // Still known: a redelivery is answered, never run.
        j.accept("a", 1, "r", "s").unwrap().known();
    }

    #[test]
    fn a_complete_ack_for_a_running_attempt_forgets_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        j.accept("a", 1, "r", "s").unwrap().fresh();
        j.record(&event("a", 1, false)).unwrap();
        j.ack("a", 1, true).unwrap();
        assert_eq!(j.unsettled().unwrap().len(), 1);
    }

    #[test]
    fn an_attempt_running_when_the_agent_stopped_is_interrupted_not_rerun() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        j.accept("a", 1, "r", "s").unwrap().fresh();
        j.record(&event("a", 1, false)).unwrap();
        drop(j);
        let (j, orphans) = Journal::open(dir.path()).unwrap();
        assert!(
            orphans.is_empty(),
            "no process was recorded: interrupted at once"
        );
        let report = j.report("a").unwrap();
        assert_eq!(report.state(), pb::AttemptState::Interrupted);
        let result = report.result.unwrap();
        assert_eq!(result.outcome(), pb::StepOutcome::Failed);
        assert!(result.error.starts_with("interrupted"), "{}", result.error);
        let events = j.unsent(&mut HashMap::new()).unwrap();
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        j.accept("a", 2, "r", "s").unwrap().known();
        assert_eq!(j.in_flight(), 0);
    }

    #[test]
    fn the_highest_epoch_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        assert_eq!(j.highest_epoch().unwrap(), 0);
        j.see_epoch(5).unwrap();
        j.see_epoch(3).unwrap();
        drop(j);
        let (j, _) = Journal::open(dir.path()).unwrap();
        assert_eq!(j.highest_epoch().unwrap(), 5);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn an_interrupted_attempt_whose_process_runs_on_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        j.accept("a", 1, "r", "upgrade").unwrap().fresh();
        let mut child = sleeper().spawn().unwrap();
        let process = host::identify(child.id()).unwrap();
        j.record(&started("a", process)).unwrap();
        drop(j);
        let (j, orphans) = Journal::open(dir.path()).unwrap();
        assert_eq!(orphans, [("a".to_string(), process)]);
        assert_eq!(j.report("a").unwrap().state(), pb::AttemptState::Running);
        assert_eq!(j.in_flight(), 1, "nothing else should start meanwhile");
        let waiting = {
            let j = j.clone();
            tokio::spawn(async move { j.wait_and_interrupt("a", process).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        assert_eq!(j.report("a").unwrap().state(), pb::AttemptState::Running);
        child.kill().unwrap();
        child.wait().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .unwrap()
            .unwrap();
        let report = j.report("a").unwrap();
        assert_eq!(report.state(), pb::AttemptState::Interrupted);
        let error = report.result.unwrap().error;
        assert!(
            error.contains(&format!("its process {} ran on, and has ended", child.id())),
            "{error}"
        );
    }

    /// A process that took over the recorded id (same id, later start) is not the step's: the
    /// attempt is interrupted at once instead of waiting for a stranger.
    #[test]
    fn a_reused_process_id_is_not_the_steps_process() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        j.accept("a", 1, "r", "upgrade").unwrap().fresh();
        let mut child = sleeper().spawn().unwrap();
        let mut process = host::identify(child.id()).unwrap();
        process.started -= 60;
        j.record(&started("a", process)).unwrap();
        drop(j);
        let (j, orphans) = Journal::open(dir.path()).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(orphans, []);
        assert_eq!(
            j.report("a").unwrap().state(),
            pb::AttemptState::Interrupted
        );
    }

    /// The step's process has ended but a process it started runs on (setup's own installer): the
    /// attempt still waits for that.
    #[test]
    fn an_orphan_grandchild_keeps_the_attempt_running() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        j.accept("a", 1, "r", "upgrade").unwrap().fresh();
        // The step: a process that starts a sleeper and exits at once, in its own group (as the
        // runner starts it).
        #[cfg_attr(not(unix), allow(unused_mut))]
        let mut step = host::testing::helper(host::testing::ORPHAN);
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut step, 0);
        let mut child = step.spawn().unwrap();
        let process = host::identify(child.id()).unwrap();
        // The pipe stays open until the helper has exited (it still writes).
        let mut stdout = child.stdout.take().unwrap();
        let grandchild = host::testing::read_grandchild(&mut stdout);
        assert!(child.wait().unwrap().success());
        drop(stdout);
        j.record(&started("a", process)).unwrap();
        drop(j);
        let (j, orphans) = Journal::open(dir.path()).unwrap();
        assert_eq!(orphans, [("a".to_string(), process)]);
        assert_eq!(j.report("a").unwrap().state(), pb::AttemptState::Running);
        host::testing::kill(grandchild);
    }

    fn sleeper() -> std::process::Command {
        host::testing::helper(host::testing::SLEEP)
    }

    fn started(attempt: &str, process: ProcessId) -> pb::StepEvent {
        pb::StepEvent {
            attempt_id: attempt.into(),
            seq: 1,
            at_unix_ms: 1,
            kind: Some(pb::step_event::Kind::Started(pb::StepStarted {
                pid: process.pid,
                command: "setup".into(),
                process_started_unix_s: process.started,
            })),
        }
    }

    fn waiting(attempt: &str, seq: u64, reason: pb::WaitReason) -> pb::StepEvent {
        pb::StepEvent {
            attempt_id: attempt.into(),
            seq,
            at_unix_ms: 1,
            kind: Some(pb::step_event::Kind::Waiting(pb::StepWaiting {
                instruction: "run setup".into(),
                reason: reason as i32,
                boot_id: "boot-1".into(),
            })),
        }
    }

    fn assignment(id: &str) -> pb::StepAssignment {
        pb::StepAssignment {
            attempt_id: id.into(),
            step: "upgrade-master".into(),
            timeout_ms: 1000,
            ..Default::default()
        }
    }

    #[test]
    fn a_waiting_attempt_survives_restarts_and_is_taken_up_once() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        j.accept_with("a", 1, "r", "upgrade-master", Some(&assignment("a")))
            .unwrap()
            .fresh();
        j.record(&event("a", 1, false)).unwrap();
        j.record(&waiting("a", 2, pb::WaitReason::AttendedInstall))
            .unwrap();
        drop(j);
        // Not interrupted by a restart, and still busy: nothing else runs on the server.
        let (j, orphans) = Journal::open(dir.path()).unwrap();
        assert!(orphans.is_empty());
        let report = j.report("a").unwrap();
        assert_eq!(report.state(), pb::AttemptState::Waiting);
        assert_eq!(
            report.waiting.as_ref().map(|w| w.reason()),
            Some(pb::WaitReason::AttendedInstall)
        );
        assert_eq!(j.in_flight(), 1);
        assert!(matches!(
            j.accept("b", 1, "r", "x").unwrap(),
            Accept::Busy(1)
        ));
        assert!(
            j.waiting_for_reboot().unwrap().is_empty(),
            "it waits for the operator"
        );
        // A complete ack cannot make the agent forget it.
        j.ack("a", 2, true).unwrap();
        assert_eq!(j.unsettled().unwrap().len(), 1);
        // The wrong reason takes nothing; the right one once.
        assert!(j.take_up("a", pb::WaitReason::Reboot).unwrap().is_none());
        let taken = j
            .take_up("a", pb::WaitReason::AttendedInstall)
            .unwrap()
            .unwrap();
        assert_eq!(taken.last_seq, 2);
        assert_eq!(taken.assignment.unwrap().step, "upgrade-master");
        assert_eq!(j.report("a").unwrap().state(), pb::AttemptState::Running);
        assert!(
            j.take_up("a", pb::WaitReason::AttendedInstall)
                .unwrap()
                .is_none()
        );
        assert!(
            !j.cancel_waiting("a", "aborted").unwrap(),
            "running: not cancelled"
        );
    }

    #[test]
    fn reboots_are_found_at_start_and_cancels_end_only_operator_waits() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        j.accept_with("a", 1, "r", "upgrade", Some(&assignment("a")))
            .unwrap()
            .fresh();
        j.record(&waiting("a", 1, pb::WaitReason::Reboot)).unwrap();
        j.record(&event("a", 2, false)).unwrap();
        drop(j);
        let (j, _) = Journal::open(dir.path()).unwrap();
        let rebooted = j.waiting_for_reboot().unwrap();
        assert_eq!(rebooted.len(), 1);
        assert_eq!(
            (rebooted[0].attempt_id.as_str(), rebooted[0].last_seq),
            ("a", 2)
        );
        assert!(
            !j.cancel_waiting("a", "aborted").unwrap(),
            "a reboot is not cancelled"
        );

        let dir2 = tempfile::tempdir().unwrap();
        let (j2, _) = Journal::open(dir2.path()).unwrap();
        j2.accept("c", 1, "r", "upgrade").unwrap().fresh();
        j2.record(&waiting("c", 1, pb::WaitReason::AttendedInstall))
            .unwrap();
        assert!(
            j2.cancel_waiting("c", "the run was aborted by ops")
                .unwrap()
        );
        let report = j2.report("c").unwrap();
        assert_eq!(report.state(), pb::AttemptState::Finished);
        assert_eq!(report.last_seq, 2);
        let result = report.result.unwrap();
        assert_eq!(result.outcome(), pb::StepOutcome::Cancelled);
        assert!(
            result.error.contains("the run was aborted by ops"),
            "{}",
            result.error
        );
        assert_eq!(j2.in_flight(), 0);
    }

    /// A long-running agent forgets old complete attempts with their folders when another one is
    /// complete, and deletes an old folder no attempt has (a delete that failed before); a recent one
    /// stays.
    #[test]
    fn old_attempts_and_stray_folders_are_purged_while_the_agent_runs() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        let long_ago = SystemTime::now() - std::time::Duration::from_secs(31 * 24 * 3600);
        for id in ["old", "new"] {
            j.accept(id, 1, "r", "s").unwrap().fresh();
            j.record(&event(id, 1, true)).unwrap();
            std::fs::create_dir_all(files::attempt_dir(dir.path(), id)).unwrap();
        }
        j.ack("old", 1, true).unwrap();
        j.with(|c| {
            c.execute(
                "UPDATE attempts SET finished_at = ?1 WHERE id = 'old'",
                [unix_ms(long_ago)],
            )
        })
        .unwrap();
        let stray = files::attempt_dir(dir.path(), "stray");
        let recent = files::attempt_dir(dir.path(), "recent");
        for folder in [&stray, &recent] {
            std::fs::create_dir_all(folder).unwrap();
            std::fs::write(folder.join("1.out"), "x").unwrap();
        }
        // A folder is opened to set its time: read-only on Unix, for writing with
        // FILE_FLAG_BACKUP_SEMANTICS (0x0200_0000) on Windows.
        let mut options = std::fs::OpenOptions::new();
        #[cfg(unix)]
        options.read(true);
        #[cfg(windows)]
        std::os::windows::fs::OpenOptionsExt::custom_flags(options.write(true), 0x0200_0000);
        options
            .open(&stray)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        j.ack("new", 1, true).unwrap();
        assert_eq!(j.report("old").unwrap().state(), pb::AttemptState::Unknown);
        assert!(!files::attempt_dir(dir.path(), "old").exists());
        assert!(!stray.exists());
        assert!(recent.exists() && files::attempt_dir(dir.path(), "new").exists());
    }

    /// Rows an older agent wrote over the limits of what the agent sends are fitted when the journal
    /// opens: they are sent small, never refused and re-sent for ever.
    #[test]
    fn over_limit_rows_of_an_older_agent_are_fitted_when_the_journal_opens() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        j.accept("a", 1, "r", "s").unwrap().fresh();
        drop(j);
        let big = "e".repeat(5 << 20);
        let result = pb::StepFinished {
            outcome: pb::StepOutcome::Failed as i32,
            stderr_tail: vec![big.clone()],
            ..Default::default()
        };
        let mut line = event("a", 1, false);
        line.kind = Some(pb::step_event::Kind::Log(pb::StepLog {
            stream: pb::LogStream::Stderr as i32,
            line: big,
        }));
        {
            let conn = Connection::open(dir.path().join(FILE)).unwrap();
            conn.execute(
                "INSERT INTO events (attempt_id, seq, body) VALUES ('a', 1, ?1)",
                [line.encode_to_vec()],
            )
            .unwrap();
            conn.execute(
                "UPDATE attempts SET state = 'finished', last_seq = 1, result = ?1 WHERE id = 'a'",
                [result.encode_to_vec()],
            )
            .unwrap();
        }
        let (j, _) = Journal::open(dir.path()).unwrap();
        let sent = j.unsent(&mut HashMap::new()).unwrap();
        assert!(sent[0].encoded_len() < 20_000, "{}", sent[0].encoded_len());
        let reports = j.unsettled().unwrap();
        let tail = &reports[0].result.as_ref().unwrap().stderr_tail[0];
        assert!(
            tail.len() < 2_000 && tail.contains("truncated, 5242880 bytes"),
            "{tail}"
        );
        let rows: i64 = j
            .with(|c| {
                c.query_row(
                    "SELECT COUNT(*) FROM attempts WHERE length(result) > 100000",
                    [],
                    |r| r.get(0),
                )
            })
            .unwrap();
        assert_eq!(rows, 0, "the row itself was replaced");
    }

    #[test]
    fn a_journal_of_an_older_agent_gets_the_new_columns() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join(FILE)).unwrap();
            conn.execute_batch(
                "CREATE TABLE attempts (id TEXT PRIMARY KEY, epoch INTEGER NOT NULL, run_id TEXT NOT NULL,
                 step TEXT NOT NULL, state TEXT NOT NULL, accepted_at INTEGER NOT NULL, finished_at INTEGER,
                 last_seq INTEGER NOT NULL DEFAULT 0, acked_seq INTEGER NOT NULL DEFAULT 0, result BLOB,
                 complete INTEGER NOT NULL DEFAULT 0, pid INTEGER);
                 INSERT INTO attempts (id, epoch, run_id, step, state, accepted_at) VALUES ('old', 1, 'r', 's', 'finished', 1);",
            )
            .unwrap();
        }
        let (j, _) = Journal::open(dir.path()).unwrap();
        assert_eq!(j.report("old").unwrap().state(), pb::AttemptState::Finished);
        j.accept_with("new", 1, "r", "s", Some(&assignment("new")))
            .unwrap()
            .fresh();
        drop(j);
        // Opening again works on the new schema (the running attempt is interrupted, as always).
        let (j, _) = Journal::open(dir.path()).unwrap();
        assert_eq!(
            j.report("new").unwrap().state(),
            pb::AttemptState::Interrupted
        );
    }
}
