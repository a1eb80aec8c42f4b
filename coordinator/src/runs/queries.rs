//! The manager's read-only answers: a run, the list of runs, events from a cursor, step logs a page
//! at a time.

use std::collections::{BTreeSet, HashMap};

use tokio::sync::broadcast;

use super::preflight::InstallerHashes;
use super::view::{
    self, EnvironmentView, RunEventView, RunSummaryView, RunView, StepView, log_event, plain_event,
    run_event,
};
use super::{Manager, RunError};
use crate::domain::{NodeName, RunId};
use crate::engine::{Run, RunStatus, StepState};
use crate::plan::Plan;
use crate::protocol::Artifact;
use crate::store::LogPosition;

/// A `Logs` page stays under this many bytes on the wire (gRPC refuses messages over 4 MB).
pub(super) const PAGE_BYTES: usize = 1 << 20;
/// Stored events read at a time while a page fills.
const LOG_ROWS_READ: usize = 256;

/// A page of a run's log, as an operator asks for it.
#[derive(Debug, Clone)]
pub struct LogsQuery {
    pub run_id: RunId,
    pub node: Option<NodeName>,
    pub step: Option<String>,
    /// Where the previous page ended; none: from the start.
    pub after: Option<LogPosition>,
    pub max_events: usize,
}

/// One page of a run's log, and where the next starts if more follow.
#[derive(Debug, Clone, Default)]
pub struct LogsPage {
    pub events: Vec<RunEventView>,
    pub next: Option<LogPosition>,
}

impl Manager {
    /// The run as `GetRun` shows it, read back from the store (the active run's engine state and
    /// plan from memory, a past run's restored from the store).
    pub(super) fn get(&mut self, run_id: &str) -> Result<RunView, RunError> {
        let row = self.store.run(run_id)?;
        let steps = self.store.steps(run_id)?;
        let artifacts = self.store.artifacts(run_id)?;
        let mut reports = step_reports(self.store.step_reports(run_id)?);
        let past = self.past_run(run_id);
        let shown = self.shown(run_id, past.as_ref());
        let environments = match shown {
            Some((run, ..)) => view::environments(run),
            // A run stored before its plan was: names only.
            None => self
                .store
                .run_environments(run_id)?
                .into_iter()
                .map(|name| EnvironmentView {
                    name,
                    ..Default::default()
                })
                .collect(),
        };
        let master_installer = shown.and_then(|(_, plan, _)| plan.master_installer.clone());
        let hashes = InstallerHashes::stored(
            master_installer.as_deref(),
            row.installer_sha256,
            row.master_installer_sha256,
        );
        Ok(RunView {
            id: row.id.clone(),
            workflow: view::workflow(&row.workflow),
            state: RunStatus::parse(&row.state),
            started_at: row.started_at,
            finished_at: row.finished_at,
            started_by: row.started_by,
            reason: row.reason,
            last_event_seq: shown.map_or(0, |(.., last_seq)| last_seq),
            target_version: row.target_version,
            installer: row.installer,
            plan_hash: row.plan_hash,
            selection: view::selection(&row.selection_json, &row.workflow),
            environments,
            // The members' installer, else the master's where it is the same file.
            installer_sha256: if master_installer.is_some() {
                hashes.member
            } else {
                hashes.member.or(hashes.master.clone())
            }
            .unwrap_or_default(),
            master_installer_sha256: master_installer
                .as_ref()
                .and(hashes.master)
                .unwrap_or_default(),
            master_installer: master_installer.unwrap_or_default(),
            steps: steps
                .into_iter()
                .map(|s| {
                    let state = StepState::parse(&s.state);
                    let report = reports.remove(&s.index).unwrap_or_default();
                    StepView {
                        index: s.index,
                        environment: s.environment,
                        node: s.node,
                        step: s.step,
                        state,
                        attempts: s.attempts,
                        attempt_id: report.attempt_id,
                        percent: if state == Some(StepState::Succeeded) {
                            100
                        } else {
                            report.percent
                        },
                        outputs: report.outputs,
                        message: s.message,
                        started_at: s.started_at,
                        finished_at: s.finished_at,
                        batch: s.batch,
                        artifacts: artifacts
                            .iter()
                            .filter(|a| a.step == s.index)
                            .map(|a| Artifact {
                                kind: a.kind.clone(),
                                path: a.path.clone(),
                                size_bytes: a.size_bytes,
                                sha256: a.sha256.clone(),
                                note: a.note.clone(),
                            })
                            .collect(),
                    }
                })
                .collect(),
        })
    }

    /// A run other than the active one, restored from the store as a restart would resume it; `None`
    /// for the active run, and for a run stored before its plan was (or that no longer restores).
    fn past_run(&self, run_id: &str) -> Option<PastRun> {
        if self.active.as_ref().is_some_and(|a| a.id == run_id) {
            return None;
        }
        let stored = self
            .store
            .load_run(run_id)
            .map_err(|e| tracing::debug!(run = %run_id, "shown without its plan: {e}"))
            .ok()?;
        let run = Run::restore(
            &stored.plan,
            stored.step_timeout_ms,
            Vec::new(),
            stored.records,
            stored.durable,
            BTreeSet::new(),
        )
        .map_err(|e| tracing::debug!(run = %run_id, "shown without its plan: {e}"))
        .ok()?;
        Some(PastRun {
            run,
            plan: stored.plan,
            last_seq: stored.last_seq,
        })
    }

    /// The engine state, plan and latest stored event of `run_id`: the active run's, else `past`'s.
    fn shown<'a>(&'a self, run_id: &str, past: Option<&'a PastRun>) -> Option<Shown<'a>> {
        match self.active.as_ref().filter(|a| a.id == run_id) {
            Some(a) => Some((&a.run, &a.plan, a.last_seq)),
            None => past.map(|p| (&p.run, &p.plan, p.last_seq)),
        }
    }

    pub(super) fn list(&self) -> Result<Vec<RunSummaryView>, RunError> {
        self.store
            .runs()?
            .into_iter()
            .map(|r| {
                Ok(RunSummaryView {
                    environments: self.store.run_environments(&r.id)?,
                    id: r.id,
                    workflow: view::workflow(&r.workflow),
                    state: RunStatus::parse(&r.state),
                    started_at: r.started_at,
                    finished_at: r.finished_at,
                    started_by: r.started_by,
                })
            })
            .collect()
    }

    pub(super) fn watch(
        &self,
        run_id: &str,
        after_seq: u64,
    ) -> Result<(Vec<RunEventView>, Option<broadcast::Receiver<RunEventView>>), RunError> {
        self.store.run(run_id)?;
        let stored = self.store.run_events(run_id, after_seq, usize::MAX)?;
        let past = self.past_run(run_id);
        let events = match self.shown(run_id, past.as_ref()) {
            Some((run, ..)) => stored.iter().map(|e| run_event(run_id, run, e)).collect(),
            None => stored.iter().map(|e| plain_event(run_id, e)).collect(),
        };
        let live = self
            .active
            .as_ref()
            .filter(|a| a.id == run_id && !a.run.status().is_final())
            .map(|a| a.events.subscribe());
        Ok((events, live))
    }

    /// A page of the run's log: at most `query.max_events` events, and no more than [`PAGE_BYTES`]
    /// on the wire (one larger event comes alone), with where the next page starts if any follows.
    pub(super) fn logs(&mut self, query: &LogsQuery) -> Result<LogsPage, RunError> {
        self.store.run(query.run_id.as_str())?;
        let node = query.node.as_ref().map(NodeName::as_str);
        let mut page = LogsPage::default();
        let mut after = query.after;
        let mut bytes = 0;
        loop {
            let rows = self.store.step_log_page(
                query.run_id.as_str(),
                node,
                query.step.as_deref(),
                after,
                LOG_ROWS_READ,
            )?;
            let more = rows.len() == LOG_ROWS_READ;
            for row in rows {
                let position = row.position;
                if let Some(event) = log_event(query.run_id.as_str(), row) {
                    let size = event.size();
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

/// A past run as the store restores it.
struct PastRun {
    run: Run,
    plan: Plan,
    last_seq: u64,
}

/// A run's engine state, plan and latest stored event's seq.
type Shown<'a> = (&'a Run, &'a Plan, u64);

/// What a step's current attempt reported, as `GetRun` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct StepReport {
    attempt_id: String,
    /// The last percent it reported (0: none).
    percent: u32,
    /// Its outputs; a later value of a key replaces an earlier one.
    outputs: std::collections::HashMap<String, String>,
}

/// The stored reports of the steps' current attempts, by step index.
fn step_reports(rows: Vec<crate::store::StepReportRow>) -> HashMap<usize, StepReport> {
    let mut reports: HashMap<usize, StepReport> = HashMap::new();
    for row in rows {
        let report = reports.entry(row.step).or_default();
        report.attempt_id = row.attempt_id;
        let Some((kind, payload)) = row.event else {
            continue;
        };
        let text = |k: &str| payload.get(k).and_then(|v| v.as_str()).map(str::to_string);
        match kind.as_str() {
            "progress" => {
                if let Some(percent) = payload
                    .get("percent")
                    .and_then(serde_json::Value::as_u64)
                    .and_then(|p| u32::try_from(p).ok())
                {
                    report.percent = percent;
                }
            }
            "output" => {
                if let (Some(key), Some(value)) = (text("key"), text("value")) {
                    report.outputs.insert(key, value);
                }
            }
            _ => {}
        }
    }
    reports
}
