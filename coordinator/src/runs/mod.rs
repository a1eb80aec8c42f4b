//! The shell around the rollout engine: one task owns the state store and the active run. It turns
//! operator requests, agent messages, attachment changes and timer ticks into engine events, persists
//! what the engine decided (a dispatch is durable before it is sent), runs the coordinator's own steps,
//! sends assignments to agents and streams run events to watchers.
//!
//! Its SQLite work (a write waits for its fsync, `synchronous = FULL`) runs through [`off_worker`]: the
//! task waits for it, so decisions stay in order and each is committed before it is sent, but the
//! runtime worker it ran on goes on serving the agents' and operators' streams meanwhile.
//!
//! One run at a time: two runs over the same servers could break the ordering invariants.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::complaints::Complaints;
use crate::domain::{AttemptOutcome, NodeName, Role, RunId};
use crate::engine::{Command, Control, Event, Millis, Outcome, Run, StepState, Unresolved};
use crate::fleet::FleetHandle;
use crate::input::{clip, quote};
use crate::inventory::Inventory;
use crate::plan::{Plan, Selection, StepKind};
use crate::protocol::{AttemptReport, FromAgent, Progress, ToAgent};
use crate::store::{AuditEntry, NewArtifact, NewRun, Store};
use fleet_proto::unix_ms;

mod agents;
mod assign;
mod backup;
mod preflight;
mod queries;
mod recheck;
mod repeat;
mod view;
mod waits;

pub use assign::assignment;
use backup::{BackupJob, backup_database};
use preflight::{InstallerHashes, PreflightJob, SsoCheck, preflight};
pub use queries::{LogsPage, LogsQuery};
use view::run_event;
pub use view::{
    EnvironmentView, RunEventKind, RunEventView, RunSummaryView, RunView, SelectionView, StepView,
    plain_event, selection, selection_json,
};

/// Why a request about runs failed; the service maps each to a gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Precondition(String),
    #[error("run {} does not exist", quote(.0))]
    NotFound(String),
    #[error("{0}")]
    Internal(String),
}

impl From<crate::store::StoreError> for RunError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::UnknownRun(id) => RunError::NotFound(id),
            other => RunError::Internal(other.to_string()),
        }
    }
}

/// What an operator's control asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlAction {
    Pause,
    Resume,
    Abort,
    Approve,
    Retry,
    Skip,
}

impl ControlAction {
    /// The name the audit trail stores (`audit.action`). These spellings are in existing databases:
    /// never change one.
    pub fn as_str(self) -> &'static str {
        match self {
            ControlAction::Pause => "pause",
            ControlAction::Resume => "resume",
            ControlAction::Abort => "abort",
            ControlAction::Approve => "approve",
            ControlAction::Retry => "retry",
            ControlAction::Skip => "skip",
        }
    }
}

/// An operator's control, as requested (node and step are resolved to a step of the run here).
#[derive(Debug, Clone)]
pub struct ControlRequest {
    pub action: ControlAction,
    pub node: Option<NodeName>,
    pub step: Option<String>,
    pub comment: String,
    /// The idempotency key: a control the run applied with it already is not applied again.
    pub request_id: Option<String>,
}

type Reply<T> = oneshot::Sender<Result<T, RunError>>;

/// What the coordinator tells an agent about an attempt held for an attended install.
#[derive(Debug, Clone, Copy)]
enum AgentOrder {
    Continue,
    Cancel,
}

enum Request {
    Start {
        selection: Selection,
        plan_hash: Option<String>,
        operator: String,
        reply: Reply<RunId>,
    },
    Control {
        run_id: RunId,
        control: ControlRequest,
        operator: String,
        reply: Reply<RunView>,
    },
    Get {
        run_id: RunId,
        reply: Reply<RunView>,
    },
    List {
        reply: Reply<Vec<RunSummaryView>>,
    },
    Audit {
        run_id: Option<RunId>,
        reply: Reply<Vec<AuditEntry>>,
    },
    Watch {
        run_id: RunId,
        after_seq: u64,
        reply: Reply<(Vec<RunEventView>, Option<broadcast::Receiver<RunEventView>>)>,
    },
    Logs {
        query: LogsQuery,
        reply: Reply<LogsPage>,
    },
    /// A message of the agent process `instance` (its hello's instance id), attached for `node`.
    Agent {
        node: NodeName,
        instance: Arc<str>,
        message: Box<FromAgent>,
    },
    /// A preflight task's result: the installers' SHA-256 the environment's nodes agree on, per role
    /// (none where a role installs nothing), or why the environment must not go on.
    PreflightDone {
        run_id: String,
        step: usize,
        attempt: u32,
        result: Result<InstallerHashes, String>,
    },
    /// A line of progress of one of the coordinator's own steps (`backup-database`), stored like an
    /// agent's event.
    CoordinatorProgress {
        run_id: String,
        attempt_id: String,
        step: usize,
        seq: u64,
        at: Millis,
        percent: u32,
        message: String,
    },
    /// `backup-database` ended: the verified backup, or why there is none.
    BackupDone {
        run_id: String,
        step: usize,
        attempt: u32,
        attempt_id: String,
        result: Result<crate::sql::BackupDone, String>,
    },
    /// What a node reported before its upgrade was sent again (`recheck`).
    Rechecked(recheck::Rechecked),
    AttachmentChanged,
    /// An agent attached (or re-attached): what its journal holds of attempts not fully acknowledged.
    Attached {
        node: NodeName,
        instance: Arc<str>,
        reports: Vec<AttemptReport>,
    },
}

#[derive(Clone)]
pub struct RunsHandle {
    tx: mpsc::Sender<Request>,
}

impl RunsHandle {
    pub fn spawn(
        store: Store,
        inventory: Inventory,
        fleet: FleetHandle,
        epoch: u64,
        shutdown: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        let mut manager = Manager {
            store,
            inventory,
            fleet,
            epoch,
            active: None,
            attached: BTreeSet::new(),
            requests: tx.clone(),
            broken: None,
            unacked: BTreeSet::new(),
            attachment_changed: false,
            complaints: HashMap::new(),
        };
        tokio::spawn(async move {
            manager.resume().await;
            manager.run(rx, shutdown).await;
        });
        Self { tx }
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, RunError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| RunError::Internal("the coordinator is shutting down".into()))?;
        rx.await
            .map_err(|_| RunError::Internal("the coordinator is shutting down".into()))?
    }

    pub async fn start(
        &self,
        selection: Selection,
        plan_hash: Option<String>,
        operator: String,
    ) -> Result<RunId, RunError> {
        self.ask(|reply| Request::Start {
            selection,
            plan_hash,
            operator,
            reply,
        })
        .await
    }

    pub async fn control(
        &self,
        run_id: RunId,
        control: ControlRequest,
        operator: String,
    ) -> Result<RunView, RunError> {
        self.ask(|reply| Request::Control {
            run_id,
            control,
            operator,
            reply,
        })
        .await
    }

    pub async fn get(&self, run_id: RunId) -> Result<RunView, RunError> {
        self.ask(|reply| Request::Get { run_id, reply }).await
    }

    pub async fn list(&self) -> Result<Vec<RunSummaryView>, RunError> {
        self.ask(|reply| Request::List { reply }).await
    }

    pub async fn audit(&self, run_id: Option<RunId>) -> Result<Vec<AuditEntry>, RunError> {
        self.ask(|reply| Request::Audit { run_id, reply }).await
    }

    /// Stored events after `after_seq`, and live ones after those while the run is active.
    pub async fn watch(
        &self,
        run_id: RunId,
        after_seq: u64,
    ) -> Result<(Vec<RunEventView>, Option<broadcast::Receiver<RunEventView>>), RunError> {
        self.ask(|reply| Request::Watch {
            run_id,
            after_seq,
            reply,
        })
        .await
    }

    pub async fn logs(&self, query: LogsQuery) -> Result<LogsPage, RunError> {
        self.ask(|reply| Request::Logs { query, reply }).await
    }

    pub async fn agent_message(&self, node: NodeName, instance: Arc<str>, message: FromAgent) {
        let _ = self
            .tx
            .send(Request::Agent {
                node,
                instance,
                message: Box::new(message),
            })
            .await;
    }

    pub async fn attachment_changed(&self) {
        let _ = self.tx.send(Request::AttachmentChanged).await;
    }

    /// A node's agent attached; `reports` are the attempts its journal reported in the hello.
    pub async fn attached(&self, node: NodeName, instance: Arc<str>, reports: Vec<AttemptReport>) {
        let _ = self
            .tx
            .send(Request::Attached {
                node,
                instance,
                reports,
            })
            .await;
    }
}

struct Active {
    id: String,
    run: Run,
    plan: Plan,
    /// The inventory as the run started from it (a restart resumes with it, not with today's file).
    inventory: Inventory,
    /// step → uuid of its current attempt
    attempts: HashMap<usize, String>,
    /// uuid → step, of every attempt in `attempts` (and of earlier attempts: check against `attempts`)
    attempt_steps: HashMap<String, usize>,
    /// node → its steps, in plan order
    node_steps: HashMap<NodeName, Vec<usize>>,
    events: broadcast::Sender<RunEventView>,
    last_seq: u64,
    /// Per role, recorded by the first preflight that read it; every later environment must match
    /// (invariant 8).
    installer_sha256: InstallerHashes,
}

impl Active {
    /// Streams a step's event to watchers as it happens (it is stored already, with its attempt's
    /// events, not in the run's event log).
    fn send_live(
        &self,
        step: usize,
        node: Option<String>,
        attempt_id: &str,
        at: Millis,
        kind: RunEventKind,
    ) {
        let Some(s) = self.run.steps().get(step) else {
            return;
        };
        let _ = self.events.send(RunEventView {
            // Not in the run's event log: no seq (operator.proto, `RunEvent.seq`).
            seq: 0,
            at,
            run_id: self.id.clone(),
            environment: self.run.env_name(s.plan().env).to_string(),
            node,
            step: s.plan().kind.name().into(),
            attempt_id: attempt_id.to_string(),
            kind: Some(kind),
        });
    }
}

struct Manager {
    store: Store,
    inventory: Inventory,
    fleet: FleetHandle,
    epoch: u64,
    active: Option<Active>,
    attached: BTreeSet<NodeName>,
    /// For tasks that report back (preflight).
    requests: mpsc::Sender<Request>,
    /// The state database failed a write: the run in memory may be ahead of it, so nothing more is
    /// decided or sent until the coordinator restarts and resumes from what was stored.
    broken: Option<String>,
    /// Attempts with agent events taken but not yet written and acknowledged (node, attempt id).
    unacked: BTreeSet<(NodeName, String)>,
    /// An agent detached or attached since the run last looked.
    attachment_changed: bool,
    /// Warnings about what agents sent wrong, rate-limited per node (a certificate must not flood
    /// the log).
    complaints: HashMap<NodeName, Complaints>,
}

/// Requests handled at most between two writes of agent events.
const MAX_BATCH: usize = 512;

fn now_ms() -> Millis {
    unix_ms(SystemTime::now())
}

/// Runs the state store's blocking work `f` where the manager's task is, without holding a runtime
/// worker: tokio hands the worker's other tasks to another thread first (`block_in_place`). The task
/// itself waits for `f`, as it did, so the order of what it does is unchanged. On a current-thread
/// runtime (no other thread to hand them to) `f` simply runs.
///
/// Through here: every write (each waits for an fsync) and the operators' queries. The indexed reads
/// made for each agent message (which attempt, whether an event is stored) are cache hits that cost
/// less than the hand-over, and stay inline.
fn off_worker<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

impl Manager {
    async fn run(mut self, mut rx: mpsc::Receiver<Request>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    self.refresh_attachment().await;
                    self.apply(Event::Tick).await;
                }
                request = rx.recv() => match request {
                    Some(request) => {
                        self.handle(request).await;
                        // What else already waits is handled before the events are written, so
                        // that events arriving together are written (and fsynced) once.
                        for _ in 0..MAX_BATCH {
                            let Ok(request) = rx.try_recv() else { break };
                            self.handle(request).await;
                        }
                    }
                    None => return,
                },
            }
            if self.attachment_changed {
                self.refresh_attachment().await;
            }
            self.flush_events().await;
        }
    }

    /// Writes the agent events taken since the last flush, then acknowledges them to their agents.
    /// Not written: nothing is acknowledged, and the agents send them again when they re-attach.
    async fn flush_events(&mut self) {
        if let Err(e) = off_worker(|| self.store.flush_events()) {
            tracing::error!("cannot store agent events: {e}");
            self.unacked.clear();
            return;
        }
        for (node, attempt_id) in std::mem::take(&mut self.unacked) {
            self.ack(&node, &attempt_id, None).await;
        }
    }

    async fn handle(&mut self, request: Request) {
        match request {
            Request::Start {
                selection,
                plan_hash,
                operator,
                reply,
            } => {
                let started = self.start(selection, plan_hash, operator).await;
                let _ =
                    reply.send(started.and_then(|id| RunId::new(&id).map_err(RunError::Internal)));
            }
            Request::Control {
                run_id,
                control,
                operator,
                reply,
            } => {
                let _ = reply.send(self.control(run_id.as_str(), control, &operator).await);
            }
            Request::Get { run_id, reply } => {
                let _ = reply.send(off_worker(|| self.get(run_id.as_str())));
            }
            Request::List { reply } => {
                let _ = reply.send(off_worker(|| self.list()));
            }
            Request::Audit { run_id, reply } => {
                let entries =
                    off_worker(|| self.store.audit_entries(run_id.as_ref().map(RunId::as_str)))
                        .map_err(RunError::from);
                let _ = reply.send(entries);
            }
            Request::Watch {
                run_id,
                after_seq,
                reply,
            } => {
                let _ = reply.send(off_worker(|| self.watch(run_id.as_str(), after_seq)));
            }
            Request::Logs { query, reply } => {
                let _ = reply.send(off_worker(|| self.logs(&query)));
            }
            Request::Agent {
                node,
                instance,
                message,
            } => self.agent(node, &instance, *message).await,
            Request::PreflightDone {
                run_id,
                step,
                attempt,
                result,
            } => self.preflight_done(&run_id, step, attempt, result).await,
            Request::CoordinatorProgress {
                run_id,
                attempt_id,
                step,
                seq,
                at,
                percent,
                message,
            } => self.coordinator_progress(&run_id, &attempt_id, step, seq, at, percent, message),
            Request::BackupDone {
                run_id,
                step,
                attempt,
                attempt_id,
                result,
            } => {
                self.backup_done(&run_id, step, attempt, &attempt_id, result)
                    .await
            }
            // Looked at once the requests waiting now are handled: an agent storm (a coordinator
            // restart, a network outage) is one look, not one per agent.
            Request::AttachmentChanged => self.attachment_changed = true,
            Request::Rechecked(rechecked) => self.rechecked(rechecked).await,
            Request::Attached {
                node,
                instance,
                reports,
            } => self.agent_attached(node, &instance, reports).await,
        }
    }

    async fn refresh_attachment(&mut self) {
        self.attachment_changed = false;
        let Some(now) = self.fleet.attached().await else {
            return;
        };
        let gone: Vec<NodeName> = self.attached.difference(&now).cloned().collect();
        let came: Vec<NodeName> = now.difference(&self.attached).cloned().collect();
        self.attached = now;
        for node in gone {
            self.apply(Event::NodeDetached(node)).await;
        }
        if !came.is_empty() {
            self.apply(Event::NodesAttached(came)).await;
        }
    }

    async fn start(
        &mut self,
        selection: Selection,
        plan_hash: Option<String>,
        operator: String,
    ) -> Result<String, RunError> {
        if let Some(active) = &self.active {
            let running = active.run.has_running_steps();
            if !active.run.status().is_final() || running {
                let what = if running && active.run.status().is_final() {
                    format!(
                        "{}, but steps of it still run on their agents",
                        active.run.status().as_str()
                    )
                } else {
                    active.run.status().as_str().to_string()
                };
                return Err(RunError::Precondition(format!(
                    "run {} is {what}: one run at a time (wait for it, or `fleetctl abort {}`)",
                    active.id, active.id
                )));
            }
        }
        self.refresh_attachment().await;
        let nodes = self
            .fleet
            .list()
            .await
            .ok_or_else(|| RunError::Internal("the coordinator is shutting down".into()))?;
        let reports = crate::fleet::reports(&nodes);
        let plan = crate::plan::plan(&self.inventory, &selection, &reports)
            .map_err(|e| RunError::Invalid(e.to_string()))?;
        if let Some(expected) = plan_hash
            && expected != plan.hash
        {
            return Err(RunError::Precondition(format!(
                "the fleet has drifted from the reviewed plan: its hash is now {}, not {expected}; run `fleetctl plan` again and review it",
                plan.hash
            )));
        }
        if let Some(broken) = &self.broken {
            return Err(RunError::Internal(broken.clone()));
        }
        let id = uuid::Uuid::new_v4().to_string();
        let step_timeout_ms = Millis::try_from(self.inventory.policy.step_timeout.as_millis())
            .unwrap_or(Millis::MAX / 4);
        let mut run = Run::new(&plan, step_timeout_ms, self.attached.clone());
        run.set_windows(windows_of(&self.inventory, &plan));
        let inventory_toml = self.inventory.source.clone();
        let selection_json = view::selection_json(&selection, &plan);
        let started_at = now_ms();
        let target_version = plan.target_version.to_string();
        off_worker(|| {
            self.store.create_run(
                &NewRun {
                    id: &id,
                    workflow: plan.workflow.as_str(),
                    started_by: &operator,
                    started_at,
                    inventory_toml: &inventory_toml,
                    selection_json: &selection_json,
                    plan_hash: &plan.hash,
                    target_version: &target_version,
                    installer: &plan.installer,
                    step_timeout_ms,
                },
                &plan,
                &run,
                Some(&AuditEntry {
                    at: started_at,
                    operator: operator.clone(),
                    action: "start".into(),
                    run_id: id.clone(),
                    node: None,
                    step: None,
                    detail: format!("plan {}", plan.hash),
                    request_id: None,
                }),
            )
        })?;
        tracing::info!(run = %id, operator = %operator, plan = %plan.hash, workflow = plan.workflow.as_str(), "run started");
        let (events, _) = broadcast::channel(4096);
        let node_steps = steps_by_node(&run);
        self.active = Some(Active {
            id: id.clone(),
            run,
            plan,
            inventory: self.inventory.clone(),
            attempts: HashMap::new(),
            attempt_steps: HashMap::new(),
            node_steps,
            events,
            last_seq: 0,
            installer_sha256: InstallerHashes::default(),
        });
        self.apply(Event::Start).await;
        Ok(id)
    }

    /// Applies an event to the active run, persists the decision, then carries out its commands.
    /// False when the decision could not be stored.
    async fn apply(&mut self, event: Event) -> bool {
        let Some(active) = self.active.as_mut() else {
            return true;
        };
        let now = now_ms();
        let commands = match active.run.apply(event, now) {
            Ok(c) => c,
            Err(refused) => {
                tracing::debug!("{refused}");
                return true;
            }
        };
        self.carry_out(commands, now, None).await
    }

    /// Persists the engine's decision (with the audit entry of the control that caused it, if any),
    /// streams it to watchers, then sends what it dispatched. False when it could not be stored.
    async fn carry_out(
        &mut self,
        commands: Vec<Command>,
        now: Millis,
        audit: Option<AuditEntry>,
    ) -> bool {
        if commands.is_empty() && audit.is_none() {
            return true;
        }
        let Some(active) = self.active.as_mut() else {
            return true;
        };
        let store = &mut self.store;
        let ids = match off_worker(|| {
            store.commit(&active.id, &active.run, &commands, now, audit.as_ref())
        }) {
            Ok(ids) => ids,
            Err(e) => {
                // Nothing is sent that is not stored, and the run in memory is now ahead of the
                // database: drop it. A restarted coordinator resumes from what was stored.
                let problem = format!(
                    "cannot persist run {}: {e}; nothing more is dispatched until the coordinator is restarted",
                    active.id
                );
                tracing::error!(run = %active.id, "{problem}");
                self.broken = Some(problem);
                self.active = None;
                return false;
            }
        };
        self.stream_stored();
        let mut ids = ids.into_iter();
        let mut follow_ups = Vec::new();
        for command in commands {
            let (step, attempt) = match command {
                Command::Dispatch { step, attempt } => (step, attempt),
                Command::Continue { step, .. } => {
                    self.tell_agent(step, AgentOrder::Continue, audit.as_ref())
                        .await;
                    continue;
                }
                Command::Cancel { step, .. } => {
                    self.tell_agent(step, AgentOrder::Cancel, audit.as_ref())
                        .await;
                    continue;
                }
                _ => continue,
            };
            let Some(attempt_id) = ids.next() else {
                continue;
            };
            if let Some(active) = self.active.as_mut() {
                active.attempts.insert(step, attempt_id.clone());
                active.attempt_steps.insert(attempt_id.clone(), step);
            }
            follow_ups.extend(self.send_step(step, attempt, &attempt_id).await);
        }
        for event in follow_ups {
            if !Box::pin(self.apply(event)).await {
                return false;
            }
        }
        true
    }

    /// Tells the agent of `step` to go on with its attended install's attempt (verify and finish), or
    /// to end it because the run was aborted. Not delivered: the agent reports the attempt waiting
    /// when it is back, and is told again then.
    async fn tell_agent(&mut self, step: usize, order: AgentOrder, audit: Option<&AuditEntry>) {
        let Some(active) = self.active.as_ref() else {
            return;
        };
        let (Some(node), Some(attempt_id)) = (
            active.run.steps()[step].plan().node.clone(),
            active.attempts.get(&step).cloned(),
        ) else {
            return;
        };
        let operator = audit.map(|a| a.operator.clone()).unwrap_or_default();
        match order {
            AgentOrder::Continue => {
                let message = ToAgent::Continue {
                    attempt_id: attempt_id.into(),
                    operator,
                    epoch: self.epoch,
                };
                let _ = self.fleet.send(node, message).await;
            }
            AgentOrder::Cancel => {
                let reason = if operator.is_empty() {
                    "the run was aborted, or the step skipped".to_string()
                } else {
                    format!("the operator {operator} aborted the run or skipped the step")
                };
                self.cancel_attempt(node, &attempt_id, reason).await;
            }
        }
    }

    /// Sends stored run events that watchers have not had yet.
    fn stream_stored(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let store = &self.store;
        if let Ok(stored) = off_worker(|| store.run_events(&active.id, active.last_seq, usize::MAX))
        {
            for event in stored {
                active.last_seq = event.seq;
                let _ = active
                    .events
                    .send(run_event(&active.id, &active.run, &event));
            }
        }
    }

    /// Sends an agent step's assignment to its node. Returns the events to apply when it cannot.
    async fn send_assignment(&mut self, step: usize, attempt: u32, attempt_id: &str) -> Vec<Event> {
        let Some(active) = self.active.as_ref() else {
            return Vec::new();
        };
        let planned = active.run.steps()[step].plan();
        let Some(node) = planned.node.clone() else {
            return Vec::new();
        };
        let mut assignment = assignment(
            &active.inventory,
            &active.plan,
            &active.id,
            self.epoch,
            &active.run,
            step,
            attempt_id,
        );
        if planned.kind.installs()
            && let Some(role) = planned.kind.role()
        {
            assignment.expected_installer_sha256 = active
                .installer_sha256
                .get(role)
                .cloned()
                .unwrap_or_default();
        }
        let message = ToAgent::Assign(assignment);
        // Queued to a session that may be dying is not yet delivered: the agent is asked about the
        // attempt whenever it attaches, and an attempt it never got starts again.
        if self.fleet.send(node.clone(), message).await {
            Vec::new()
        } else {
            // It detached since the run last looked: the run learns that first, so that the step
            // waits for the node instead of being sent again at once.
            self.attached.remove(&node);
            vec![
                Event::NodeDetached(node),
                Event::StepNotDelivered { step, attempt },
            ]
        }
    }

    /// A node was asked what it has before its upgrade is sent again: on the target, the step
    /// succeeds without it (the attempt is recorded so); otherwise the assignment goes out now.
    async fn rechecked(&mut self, r: recheck::Rechecked) {
        if !self.running_attempt(&r.run_id, r.step, r.attempt) {
            return;
        }
        // Aborted while the node was asked: the upgrade never left, and does not now.
        if self
            .active
            .as_ref()
            .is_some_and(|a| a.run.status().is_final())
        {
            let outcome = Outcome::Failed(
                "not sent: the run was aborted before this upgrade went out".to_string(),
            );
            self.apply(Event::StepFinished {
                step: r.step,
                attempt: r.attempt,
                outcome,
            })
            .await;
            return;
        }
        let Some(found) = r.found else {
            for event in self.send_assignment(r.step, r.attempt, &r.attempt_id).await {
                if !self.apply(event).await {
                    return;
                }
            }
            return;
        };
        let message = format!(
            "not installed again: the node already reports ESSO {found} with ENTSSO running, so an earlier attempt that was interrupted had installed it; its verify checks it"
        );
        if let Err(e) = off_worker(|| {
            self.store.finish_attempt(
                &r.attempt_id,
                now_ms(),
                AttemptOutcome::Succeeded,
                &message,
                None,
                &[],
            )
        }) {
            tracing::error!("cannot store the result of attempt {}: {e}", r.attempt_id);
            return;
        }
        self.apply(Event::StepAlreadyDone {
            step: r.step,
            attempt: r.attempt,
            message,
        })
        .await;
    }

    /// Starts a dispatched attempt: sends an agent step to its node, or runs a coordinator step.
    /// Returns the events to apply when it cannot start.
    async fn send_step(&mut self, step: usize, attempt: u32, attempt_id: &str) -> Vec<Event> {
        let Some(active) = self.active.as_ref() else {
            return Vec::new();
        };
        let planned = active.run.steps()[step].plan();
        if planned.kind.awaits_operator() {
            let (kind, note, run_id) = (planned.kind, planned.note.clone(), active.id.clone());
            return self.operator_wait(step, attempt, kind, &note, &run_id);
        }
        if planned.kind.on_agent() {
            if attempt > 1
                && let Some(job) =
                    recheck::Recheck::of(active, step, attempt, attempt_id, self.epoch)
            {
                tokio::spawn(recheck::run(job, self.fleet.clone(), self.requests.clone()));
                return Vec::new();
            }
            self.send_assignment(step, attempt, attempt_id).await
        } else if planned.kind == StepKind::Preflight {
            let env_name = active.run.env_name(planned.env);
            let sso = active.inventory.environment(env_name).and_then(|e| {
                e.sso_database.clone().map(|db| SsoCheck {
                    db,
                    master: e.master.clone(),
                    env: env_name.to_string(),
                })
            });
            let job = PreflightJob::new(
                &active.id,
                &active.run,
                &active.plan,
                step,
                attempt,
                self.epoch,
                sso,
            );
            tokio::spawn(preflight(job, self.fleet.clone(), self.requests.clone()));
            Vec::new()
        } else if planned.kind == StepKind::BackupDatabase {
            let env_name = active.run.env_name(planned.env).to_string();
            let Some((db, backup_dir)) = active
                .inventory
                .environment(&env_name)
                .and_then(|e| e.sso_database.clone().map(|db| (db, e.backup_dir.clone())))
            else {
                return vec![Event::StepFinished {
                    step,
                    attempt,
                    outcome: Outcome::Failed(format!(
                        "{env_name} has no sso_database in this run's inventory"
                    )),
                }];
            };
            let path =
                crate::sql::backup_path(&backup_dir, &db.database, &env_name, &active.id, attempt);
            let job = BackupJob {
                run_id: active.id.clone(),
                env: env_name,
                step,
                attempt,
                attempt_id: attempt_id.to_string(),
                db,
                path,
                first_seq: off_worker(|| self.store.contiguous_seq(attempt_id)).unwrap_or(0) + 1,
            };
            tokio::spawn(backup_database(job, self.requests.clone()));
            Vec::new()
        } else {
            vec![Event::StepFinished {
                step,
                attempt,
                outcome: Outcome::Failed(format!("{} is not built yet", planned.kind.name())),
            }]
        }
    }

    /// A coordinator step that waits for the operator: it waits with what to do (for the review, what
    /// the export reported), until `fleetctl approve`.
    fn operator_wait(
        &mut self,
        step: usize,
        attempt: u32,
        kind: StepKind,
        note: &str,
        run_id: &str,
    ) -> Vec<Event> {
        let export_log = if kind == StepKind::ReviewExport {
            match off_worker(|| {
                self.store
                    .step_log(run_id, None, Some(waits::EXPORT_STEP.name()))
            }) {
                Ok(log) => log,
                Err(e) => {
                    return vec![Event::StepFinished {
                        step,
                        attempt,
                        outcome: Outcome::Failed(format!(
                            "cannot read what the export reported: {e}"
                        )),
                    }];
                }
            }
        } else {
            Vec::new()
        };
        let instruction = waits::instruction(kind, note, run_id, &export_log);
        vec![Event::StepWaiting {
            step,
            attempt,
            instruction,
        }]
    }

    /// Whether `attempt` is still the running attempt of `step` in the active run `run_id` (what a
    /// coordinator step's task reports on).
    fn running_attempt(&self, run_id: &str, step: usize, attempt: u32) -> bool {
        self.active
            .as_ref()
            .filter(|a| a.id == run_id)
            .and_then(|a| a.run.steps().get(step))
            .is_some_and(|s| s.attempt() == attempt && s.state() == StepState::Running)
    }

    async fn preflight_done(
        &mut self,
        run_id: &str,
        step: usize,
        attempt: u32,
        result: Result<InstallerHashes, String>,
    ) {
        // A late answer of an attempt the run has moved past changes nothing.
        if !self.running_attempt(run_id, step, attempt) {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let read = match result {
            Ok(read) => read,
            Err(problem) => {
                let outcome = Outcome::Failed(problem);
                self.apply(Event::StepFinished {
                    step,
                    attempt,
                    outcome,
                })
                .await;
                return;
            }
        };
        // Invariant 8, per role: the first environment that reads a role's installer records its
        // SHA-256; every later one must read the same.
        let mut problems = Vec::new();
        for role in [Role::Master, Role::Member] {
            let Some(hash) = read.get(role) else {
                continue;
            };
            match active.installer_sha256.get(role) {
                Some(recorded) if recorded == hash => {}
                Some(recorded) => problems.push(format!(
                    "the {} installer {} here has SHA-256 {hash}, but this run installed {recorded} in the environments before: one run installs one installer per role",
                    role.as_str(),
                    active.plan.installer_for(role)
                )),
                None => {
                    let store = &mut self.store;
                    if let Err(e) = off_worker(|| store.set_installer_sha256(run_id, role, hash)) {
                        tracing::error!("cannot record the installer's SHA-256: {e}");
                        return;
                    }
                    active.installer_sha256.set(role, hash.clone());
                }
            }
        }
        let outcome = if problems.is_empty() {
            Outcome::Succeeded
        } else {
            Outcome::Failed(problems.join("; "))
        };
        self.apply(Event::StepFinished {
            step,
            attempt,
            outcome,
        })
        .await;
    }

    #[allow(clippy::too_many_arguments)]
    fn coordinator_progress(
        &mut self,
        run_id: &str,
        attempt_id: &str,
        step: usize,
        seq: u64,
        at: Millis,
        percent: u32,
        message: String,
    ) {
        let payload = serde_json::json!({ "percent": percent, "message": message });
        match self
            .store
            .agent_event(attempt_id, seq, at, "progress", &payload)
        {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::error!("cannot store a backup-database event: {e}");
                return;
            }
        }
        let Some(active) = self.active.as_ref().filter(|a| a.id == run_id) else {
            return;
        };
        active.send_live(
            step,
            None,
            attempt_id,
            at,
            RunEventKind::Progress(Progress { percent, message }),
        );
    }

    /// Stores the backup's result (the file as an artifact) and applies it, if it is still the step's
    /// current attempt.
    async fn backup_done(
        &mut self,
        run_id: &str,
        step: usize,
        attempt: u32,
        attempt_id: &str,
        result: Result<crate::sql::BackupDone, String>,
    ) {
        if !self.running_attempt(run_id, step, attempt) {
            return;
        }
        let (outcome, error, artifacts) = match &result {
            Ok(done) => (
                AttemptOutcome::Succeeded,
                String::new(),
                vec![NewArtifact {
                    kind: "sso-database-backup".to_string(),
                    path: done.path.clone(),
                    size_bytes: done.size_bytes,
                    sha256: String::new(),
                    note: String::new(),
                }],
            ),
            Err(e) => (AttemptOutcome::Failed, e.clone(), Vec::new()),
        };
        if let Err(e) = off_worker(|| {
            self.store
                .finish_attempt(attempt_id, now_ms(), outcome, &error, None, &artifacts)
        }) {
            tracing::error!("cannot store the result of backup-database: {e}");
            return;
        }
        self.apply(Event::StepFinished {
            step,
            attempt,
            outcome: match result {
                Ok(_) => Outcome::Succeeded,
                Err(e) => Outcome::Failed(e),
            },
        })
        .await;
    }

    async fn control(
        &mut self,
        run_id: &str,
        request: ControlRequest,
        operator: &str,
    ) -> Result<RunView, RunError> {
        if let Some(broken) = &self.broken {
            return Err(RunError::Internal(broken.clone()));
        }
        let action = request.action.as_str();
        // Applied with this request id already (the answer was lost, the caller retried): nothing
        // changes again, and the answer is the run as it is now.
        if let Some(request_id) = request.request_id.as_deref()
            && let Some(applied) = off_worker(|| self.store.control_by_request(run_id, request_id))?
        {
            repeat::same_control(&applied, action, &request, operator)?;
            tracing::info!(run = %run_id, operator = %operator, "operator {operator}: {action} repeated with request id {request_id}: applied already, nothing changed");
            return off_worker(|| self.get(run_id));
        }
        let Some(active) = self.active.as_mut().filter(|a| a.id == run_id) else {
            off_worker(|| self.store.run(run_id))?;
            return Err(RunError::Precondition(format!(
                "run {run_id} is not active in this coordinator"
            )));
        };
        // Which step the control means is the engine's to say; how it is refused, the operator API's.
        let unresolved = |why| unresolved(why, run_id);
        let target = || {
            active
                .run
                .target(request.node.as_ref(), request.step.as_deref())
                .map_err(unresolved)
        };
        let control = match request.action {
            ControlAction::Pause => Control::Pause,
            ControlAction::Resume => Control::Resume,
            ControlAction::Abort => Control::Abort,
            ControlAction::Approve => match request.node.as_ref() {
                Some(node) => Control::ApproveInstall {
                    step: active.run.waiting_install(node).map_err(unresolved)?,
                },
                None => Control::Approve,
            },
            ControlAction::Retry => Control::Retry { step: target()? },
            ControlAction::Skip => Control::Skip { step: target()? },
        };
        let (node, step_name) = match &control {
            Control::Retry { step } | Control::Skip { step } | Control::ApproveInstall { step } => {
                let s = active.run.steps()[*step].plan();
                (
                    s.node.as_ref().map(ToString::to_string),
                    Some(s.kind.name().to_string()),
                )
            }
            _ => (request.node.as_ref().map(ToString::to_string), None),
        };
        let now = now_ms();
        let commands = active
            .run
            .apply(Event::Control(control), now)
            .map_err(|r| RunError::Precondition(r.0))?;
        let audit = AuditEntry {
            at: now,
            operator: operator.to_string(),
            action: action.to_string(),
            run_id: run_id.to_string(),
            node,
            step: step_name,
            detail: request.comment.clone(),
            request_id: request.request_id.clone(),
        };
        // The control's audit entry is stored with the decision it caused, or neither is.
        if !self.carry_out(commands, now, Some(audit)).await {
            return Err(RunError::Internal(self.broken.clone().unwrap_or_default()));
        }
        tracing::info!(run = %run_id, operator = %operator, "operator {operator}: {action}");
        off_worker(|| self.get(run_id))
    }

    /// At start: takes up the run the previous coordinator left unfinished. Steps out on agents stay
    /// running; each agent is asked about them when it attaches. A result stored just before the
    /// crash is applied now; a preflight that was running starts over (it only reads).
    async fn resume(&mut self) {
        let ids = match off_worker(|| self.store.unfinished_runs()) {
            Ok(ids) => ids,
            Err(e) => {
                self.broken = Some(format!("cannot read the state database: {e}"));
                tracing::error!("cannot read the state database: {e}");
                return;
            }
        };
        // One run at a time; should there be more, the newest is resumed and the others reported.
        let Some((newest, older)) = ids.split_last() else {
            return;
        };
        for id in older {
            tracing::error!(run = %id, "run {id} was left unfinished by an older coordinator and is not resumed: only one run is active at a time");
            self.broken = Some(format!(
                "runs {} were left unfinished; only the newest is resumed: abort the others' steps by hand and restart",
                older.join(", ")
            ));
        }
        let stored = match off_worker(|| self.store.load_run(newest)) {
            Ok(stored) => stored,
            Err(e) => {
                let problem = format!("cannot resume run {newest}: {e}");
                tracing::error!(run = %newest, "{problem}");
                self.broken = Some(format!(
                    "{problem}; no new run starts while it may still have steps out on agents (restart the coordinator once the cause is fixed)"
                ));
                return;
            }
        };
        let inventory = match Inventory::parse(&self.inventory.path, &stored.inventory_toml) {
            Ok(inventory) => inventory,
            Err(e) => {
                let problem = format!(
                    "cannot resume run {newest}: its inventory snapshot no longer parses: {e}"
                );
                tracing::error!(run = %newest, "{problem}");
                self.broken = Some(format!(
                    "{problem}; no new run starts while it may still have steps out on agents (restart the coordinator once the cause is fixed)"
                ));
                return;
            }
        };
        let windows = windows_of(&inventory, &stored.plan);
        let run = match Run::restore(
            &stored.plan,
            stored.step_timeout_ms,
            windows,
            stored.records,
            stored.durable,
            BTreeSet::new(),
        ) {
            Ok(run) => run,
            Err(e) => {
                let problem = format!("cannot resume run {newest}: {e}");
                tracing::error!(run = %newest, "{problem}");
                self.broken = Some(format!(
                    "{problem}; no new run starts while it may still have steps out on agents (restart the coordinator once the cause is fixed)"
                ));
                return;
            }
        };
        let attempts: HashMap<usize, String> = stored
            .attempts
            .iter()
            .map(|a| (a.step, a.id.clone()))
            .collect();
        let (events, _) = broadcast::channel(4096);
        let in_flight: Vec<(usize, u32)> = run
            .steps()
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state() == StepState::Running)
            .map(|(i, s)| (i, s.attempt()))
            .collect();
        let note = format!(
            "the coordinator restarted (epoch {}) and resumed the run; {} step(s) in flight",
            self.epoch,
            in_flight.len()
        );
        tracing::info!(run = %newest, status = run.status().as_str(), "{note}");
        if let Err(e) = off_worker(|| self.store.note(newest, now_ms(), &note)) {
            let problem = format!("cannot resume run {newest}: {e}");
            tracing::error!(run = %newest, "{problem}");
            self.broken = Some(format!(
                "{problem}; no new run starts while it may still have steps out on agents (restart the coordinator once the cause is fixed)"
            ));
            return;
        }
        // The clock of steps out on agents starts again (the engine decides nothing else on it).
        let mut run = run;
        if let Err(refused) = run.apply(Event::Resumed, now_ms()) {
            tracing::debug!("{refused}");
        }
        let never_started = !run.started();
        let node_steps = steps_by_node(&run);
        let installer_sha256 = InstallerHashes::stored(
            stored.plan.master_installer.as_deref(),
            stored.installer_sha256.clone(),
            stored.master_installer_sha256.clone(),
        );
        self.active = Some(Active {
            id: stored.id.clone(),
            run,
            plan: stored.plan,
            inventory,
            attempt_steps: attempts.iter().map(|(s, id)| (id.clone(), *s)).collect(),
            attempts,
            node_steps,
            events,
            last_seq: stored.last_seq,
            installer_sha256,
        });
        self.stream_stored();
        if never_started {
            // Stored, then stopped before its first decision.
            self.apply(Event::Start).await;
        }
        for (step, attempt) in in_flight {
            let Some(a) = stored
                .attempts
                .iter()
                .find(|a| a.step == step && a.number == attempt)
            else {
                continue;
            };
            let Some(active) = self.active.as_ref() else {
                return;
            };
            let kind = active.run.steps()[step].plan().kind;
            if let Some((outcome, error)) = &a.result {
                // Stored, not yet applied when the previous coordinator stopped.
                let outcome = if *outcome == AttemptOutcome::Succeeded {
                    Outcome::Succeeded
                } else {
                    Outcome::Failed(error.clone())
                };
                self.apply(Event::StepFinished {
                    step,
                    attempt,
                    outcome,
                })
                .await;
            } else if !kind.on_agent() {
                let id = a.id.clone();
                let events = self.send_step(step, attempt, &id).await;
                for event in events {
                    self.apply(event).await;
                }
            }
        }
    }
}

/// Why no step answers to what the operator's control named, as the operator API says it.
fn unresolved(why: Unresolved, run_id: &str) -> RunError {
    match why {
        Unresolved::NodeNeeded => RunError::Invalid(
            "name the node: --node N (only a failed coordinator step, such as preflight, backup-database or a migration's review, is retried without one)"
                .into(),
        ),
        Unresolved::NothingOn(node) => RunError::Invalid(format!(
            "node {} has no failed or pending step in run {run_id}",
            quote(node.as_str())
        )),
        Unresolved::NoInstallWaits(node) => RunError::Precondition(format!(
            "no attended install on {} waits for approval in run {run_id}",
            quote(node.as_str())
        )),
    }
}

/// The maintenance window of each of the plan's environments, from `inventory`.
/// Each node's steps, in plan order.
fn steps_by_node(run: &Run) -> HashMap<NodeName, Vec<usize>> {
    let mut by_node: HashMap<NodeName, Vec<usize>> = HashMap::new();
    for (i, step) in run.steps().iter().enumerate() {
        if let Some(node) = &step.plan().node {
            by_node.entry(node.clone()).or_default().push(i);
        }
    }
    by_node
}

fn windows_of(inventory: &Inventory, plan: &Plan) -> Vec<Option<crate::inventory::Window>> {
    plan.environments
        .iter()
        .map(|e| {
            inventory
                .environment(e.name.as_str())
                .and_then(|i| i.window.clone())
        })
        .collect()
}
