//! The manager's read-only answers: a run, the list of runs, events from a cursor, step logs a page
//! at a time.

use fleet_proto::pb;
use tokio::sync::broadcast;

use super::wire::{plain_event, run_event, run_state, step_state};
use super::{Manager, RunError};
use crate::domain::NodeName;
use crate::store::LogPosition;

/// A `Logs` page stays under this many bytes on the wire (gRPC refuses messages over 4 MB).
pub const PAGE_BYTES: usize = 1 << 20;
/// Stored events read at a time while a page fills.
const LOG_ROWS_READ: usize = 256;

/// A page of a run's log, as an operator asks for it.
#[derive(Debug, Clone)]
pub struct LogsQuery {
    pub run_id: String,
    pub node: Option<NodeName>,
    pub step: Option<String>,
    /// Where the previous page ended; none: from the start.
    pub after: Option<LogPosition>,
    pub max_events: usize,
}

/// One page of a run's log, and where the next starts if more follow.
#[derive(Debug, Clone, Default)]
pub struct LogsPage {
    pub events: Vec<pb::RunEvent>,
    pub next: Option<LogPosition>,
}

impl Manager {
    pub(super) fn get(&self, run_id: &str) -> Result<pb::Run, RunError> {
        let row = self.store.run(run_id)?;
        let steps = self.store.steps(run_id)?;
        let artifacts = self.store.artifacts(run_id)?;
        let active = self.active.as_ref().filter(|a| a.id == run_id);
        Ok(pb::Run {
            id: row.id.clone(),
            workflow: super::wire::workflow(&row.workflow) as i32,
            state: run_state(&row.state) as i32,
            started_at_unix_ms: row.started_at,
            finished_at_unix_ms: row.finished_at,
            started_by: row.started_by,
            reason: row.reason,
            last_event_seq: active.map_or(0, |a| a.last_seq),
            target_version: active
                .map(|a| a.plan.target_version.to_string())
                .unwrap_or_default(),
            installer: active.map(|a| a.plan.installer.clone()).unwrap_or_default(),
            plan_hash: active.map(|a| a.plan.hash.clone()).unwrap_or_default(),
            // The members' installer, else the master's where it is the same file.
            installer_sha256: active
                .and_then(|a| {
                    let hashes = &a.installer_sha256;
                    if a.plan.master_installer.is_some() {
                        hashes.member.clone()
                    } else {
                        hashes.member.clone().or_else(|| hashes.master.clone())
                    }
                })
                .unwrap_or_default(),
            master_installer: active
                .and_then(|a| a.plan.master_installer.clone())
                .unwrap_or_default(),
            master_installer_sha256: active
                .filter(|a| a.plan.master_installer.is_some())
                .and_then(|a| a.installer_sha256.master.clone())
                .unwrap_or_default(),
            steps: steps
                .into_iter()
                .map(|s| pb::RunStep {
                    index: u32::try_from(s.index).unwrap_or(u32::MAX),
                    environment: s.environment,
                    node: s.node,
                    step: s.step,
                    state: step_state(&s.state) as i32,
                    attempts: s.attempts,
                    message: s.message,
                    started_at_unix_ms: s.started_at,
                    finished_at_unix_ms: s.finished_at,
                    batch: s.batch,
                    artifacts: artifacts
                        .iter()
                        .filter(|a| a.step == s.index)
                        .map(|a| pb::Artifact {
                            kind: a.kind.clone(),
                            path: a.path.clone(),
                            size_bytes: a.size_bytes,
                            sha256: a.sha256.clone(),
                            note: a.note.clone(),
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    pub(super) fn list(&self) -> Result<Vec<pb::RunSummary>, RunError> {
        Ok(self
            .store
            .runs()?
            .into_iter()
            .map(|r| pb::RunSummary {
                id: r.id,
                workflow: super::wire::workflow(&r.workflow) as i32,
                state: run_state(&r.state) as i32,
                started_at_unix_ms: r.started_at,
                finished_at_unix_ms: r.finished_at,
                started_by: r.started_by,
                environments: Vec::new(),
            })
            .collect())
    }

    pub(super) fn watch(
        &self,
        run_id: &str,
        after_seq: u64,
    ) -> Result<(Vec<pb::RunEvent>, Option<broadcast::Receiver<pb::RunEvent>>), RunError> {
        self.store.run(run_id)?;
        let active = self.active.as_ref().filter(|a| a.id == run_id);
        let stored = self.store.run_events(run_id, after_seq, usize::MAX)?;
        let events = match active {
            Some(a) => stored
                .iter()
                .map(|e| run_event(run_id, &a.run, e))
                .collect(),
            None => stored.iter().map(|e| plain_event(run_id, e)).collect(),
        };
        let live = active
            .filter(|a| !a.run.status().is_final())
            .map(|a| a.events.subscribe());
        Ok((events, live))
    }

    /// A page of the run's log: at most `query.max_events` events, and no more than [`PAGE_BYTES`]
    /// on the wire (one larger event comes alone), with where the next page starts if any follows.
    pub(super) fn logs(&mut self, query: &LogsQuery) -> Result<LogsPage, RunError> {
        self.store.run(&query.run_id)?;
        let node = query.node.as_ref().map(NodeName::as_str);
        let mut page = LogsPage::default();
        let mut after = query.after;
        let mut bytes = 0;
        loop {
            let rows = self.store.step_log_page(
                &query.run_id,
                node,
                query.step.as_deref(),
                after,
                LOG_ROWS_READ,
            )?;
            let more = rows.len() == LOG_ROWS_READ;
            for row in rows {
                let position = row.position;
                if let Some(event) = log_event(&query.run_id, row) {
                    let size = prost::Message::encoded_len(&event);
                    let full = page.events.len() >= query.max_events
                        || (!page.events.is_empty() && bytes + size > PAGE_BYTES);
                    if full {
                        page.next = after;
                        return Ok(page);
                    }
                    bytes += size;
                    page.events.push(event);
                }
                after = Some(position);
            }
            if !more {
                return Ok(page);
            }
        }
    }
}

/// One stored agent event as `Logs` shows it; `None` for kinds it does not show.
fn log_event(run_id: &str, row: crate::store::LogRow) -> Option<pb::RunEvent> {
    let crate::store::LogRow {
        node,
        step,
        kind,
        payload,
        ..
    } = row;
    let text = |k: &str| {
        payload
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let kind = match kind.as_str() {
        "log" => pb::run_event::Kind::Log(pb::StepLog {
            stream: if payload.get("stderr").and_then(serde_json::Value::as_bool) == Some(true) {
                pb::LogStream::Stderr
            } else {
                pb::LogStream::Stdout
            } as i32,
            line: text("line"),
        }),
        "progress" => pb::run_event::Kind::Progress(pb::StepProgress {
            percent: u32::try_from(
                payload
                    .get("percent")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0),
            )
            .unwrap_or(0),
            message: text("message"),
        }),
        "output" => pb::run_event::Kind::Output(pb::StepOutput {
            key: text("key"),
            value: text("value"),
        }),
        "finished" => pb::run_event::Kind::Log(pb::StepLog {
            stream: pb::LogStream::Agent as i32,
            line: format!("finished: {} {}", text("outcome"), text("error"))
                .trim_end()
                .to_string(),
        }),
        "waiting" => pb::run_event::Kind::Waiting(pb::StepWaiting {
            instruction: text("instruction"),
            reason: super::wire::wait_reason(&text("reason")) as i32,
            boot_id: String::new(),
        }),
        "started" => pb::run_event::Kind::Log(pb::StepLog {
            stream: pb::LogStream::Agent as i32,
            line: format!("started: {}", text("command")),
        }),
        _ => return None,
    };
    Some(pb::RunEvent {
        run_id: run_id.to_string(),
        node: (!node.is_empty()).then_some(node),
        step,
        kind: Some(kind),
        ..Default::default()
    })
}
