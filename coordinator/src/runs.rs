//! The shell around the rollout engine: one task owns the state store and the active run. It turns
//! operator requests, agent messages, attachment changes and timer ticks into engine events, persists
//! what the engine decided (a dispatch is durable before it is sent), runs the coordinator's own steps,
//! sends assignments to agents and streams run events to watchers.
//!
//! One run at a time: two runs over the same servers could break the ordering invariants.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use fleet_proto::pb;
use fleet_proto::pb::agent_message::Body as AgentBody;
use fleet_proto::pb::coordinator_message::Body as CoordinatorBody;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::domain::NodeName;
use crate::engine::{Command, Control, Event, Millis, Outcome, Run};
use crate::fleet::{FleetHandle, unix_ms};
use crate::inventory::{InstallMode, Inventory};
use crate::plan::{Expected, Plan, Selection, StepKind};
use crate::store::{AuditEntry, NewRun, Store, StoredEvent};

/// Why a request about runs failed; the service maps each to a gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Precondition(String),
    #[error("run {0} does not exist")]
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

/// An operator's control, as requested (node and step are resolved to a step of the run here).
#[derive(Debug, Clone)]
pub struct ControlRequest {
    pub action: pb::ControlAction,
    pub node: Option<String>,
    pub step: Option<String>,
    pub comment: String,
}

type Reply<T> = oneshot::Sender<Result<T, RunError>>;

enum Request {
    Start {
        selection: Selection,
        plan_hash: Option<String>,
        operator: String,
        reply: Reply<String>,
    },
    Control {
        run_id: String,
        control: ControlRequest,
        operator: String,
        reply: Reply<pb::Run>,
    },
    Get {
        run_id: String,
        reply: Reply<pb::Run>,
    },
    List {
        reply: Reply<Vec<pb::RunSummary>>,
    },
    Audit {
        run_id: Option<String>,
        reply: Reply<Vec<pb::AuditEntry>>,
    },
    Watch {
        run_id: String,
        after_seq: u64,
        reply: Reply<(Vec<pb::RunEvent>, Option<broadcast::Receiver<pb::RunEvent>>)>,
    },
    Logs {
        run_id: String,
        node: Option<String>,
        step: Option<String>,
        reply: Reply<Vec<pb::RunEvent>>,
    },
    Agent {
        node: NodeName,
        body: Box<AgentBody>,
    },
    /// A preflight task's result: the installer's SHA-256 the environment's nodes agree on (none when
    /// nothing is installed), or why the environment must not go on.
    PreflightDone {
        run_id: String,
        step: usize,
        attempt: u32,
        result: Result<Option<String>, String>,
    },
    AttachmentChanged,
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
        let manager = Manager {
            store,
            inventory,
            fleet,
            epoch,
            active: None,
            attached: BTreeSet::new(),
            requests: tx.clone(),
        };
        tokio::spawn(manager.run(rx, shutdown));
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
    ) -> Result<String, RunError> {
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
        run_id: String,
        control: ControlRequest,
        operator: String,
    ) -> Result<pb::Run, RunError> {
        self.ask(|reply| Request::Control {
            run_id,
            control,
            operator,
            reply,
        })
        .await
    }

    pub async fn get(&self, run_id: String) -> Result<pb::Run, RunError> {
        self.ask(|reply| Request::Get { run_id, reply }).await
    }

    pub async fn list(&self) -> Result<Vec<pb::RunSummary>, RunError> {
        self.ask(|reply| Request::List { reply }).await
    }

    pub async fn audit(&self, run_id: Option<String>) -> Result<Vec<pb::AuditEntry>, RunError> {
        self.ask(|reply| Request::Audit { run_id, reply }).await
    }

    /// Stored events after `after_seq`, and live ones after those while the run is active.
    pub async fn watch(
        &self,
        run_id: String,
        after_seq: u64,
    ) -> Result<(Vec<pb::RunEvent>, Option<broadcast::Receiver<pb::RunEvent>>), RunError> {
        self.ask(|reply| Request::Watch {
            run_id,
            after_seq,
            reply,
        })
        .await
    }

    pub async fn logs(
        &self,
        run_id: String,
        node: Option<String>,
        step: Option<String>,
    ) -> Result<Vec<pb::RunEvent>, RunError> {
        self.ask(|reply| Request::Logs {
            run_id,
            node,
            step,
            reply,
        })
        .await
    }

    pub async fn agent_message(&self, node: NodeName, body: AgentBody) {
        let _ = self
            .tx
            .send(Request::Agent {
                node,
                body: Box::new(body),
            })
            .await;
    }

    pub async fn attachment_changed(&self) {
        let _ = self.tx.send(Request::AttachmentChanged).await;
    }
}

struct Active {
    id: String,
    run: Run,
    plan: Plan,
    /// step → uuid of its current attempt
    attempts: HashMap<usize, String>,
    events: broadcast::Sender<pb::RunEvent>,
    last_seq: u64,
    /// Recorded by the first preflight that read it; every later environment must match (invariant 8).
    installer_sha256: Option<String>,
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
}

fn now_ms() -> Millis {
    unix_ms(SystemTime::now())
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
                    Some(request) => self.handle(request).await,
                    None => return,
                },
            }
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
                let _ = reply.send(self.start(selection, plan_hash, operator).await);
            }
            Request::Control {
                run_id,
                control,
                operator,
                reply,
            } => {
                let _ = reply.send(self.control(&run_id, control, &operator).await);
            }
            Request::Get { run_id, reply } => {
                let _ = reply.send(self.get(&run_id));
            }
            Request::List { reply } => {
                let _ = reply.send(self.list());
            }
            Request::Audit { run_id, reply } => {
                let entries = self
                    .store
                    .audit_entries(run_id.as_deref())
                    .map_err(RunError::from)
                    .map(|entries| {
                        entries
                            .into_iter()
                            .map(|e| pb::AuditEntry {
                                at_unix_ms: e.at,
                                operator: e.operator,
                                action: e.action,
                                run_id: e.run_id,
                                node: e.node,
                                step: e.step,
                                detail: e.detail,
                            })
                            .collect()
                    });
                let _ = reply.send(entries);
            }
            Request::Watch {
                run_id,
                after_seq,
                reply,
            } => {
                let _ = reply.send(self.watch(&run_id, after_seq));
            }
            Request::Logs {
                run_id,
                node,
                step,
                reply,
            } => {
                let _ = reply.send(self.logs(&run_id, node.as_deref(), step.as_deref()));
            }
            Request::Agent { node, body } => self.agent(node, *body).await,
            Request::PreflightDone {
                run_id,
                step,
                attempt,
                result,
            } => self.preflight_done(&run_id, step, attempt, result).await,
            Request::AttachmentChanged => {
                self.refresh_attachment().await;
            }
        }
    }

    async fn refresh_attachment(&mut self) {
        let Some(nodes) = self.fleet.list().await else {
            return;
        };
        let now: BTreeSet<NodeName> = nodes
            .iter()
            .filter(|n| n.attached)
            .filter_map(|n| NodeName::new(&n.name).ok())
            .collect();
        let gone: Vec<NodeName> = self.attached.difference(&now).cloned().collect();
        let came: Vec<NodeName> = now.difference(&self.attached).cloned().collect();
        self.attached = now;
        for node in gone {
            self.apply(Event::NodeDetached(node)).await;
        }
        for node in came {
            self.apply(Event::NodeAttached(node)).await;
        }
    }

    async fn start(
        &mut self,
        selection: Selection,
        plan_hash: Option<String>,
        operator: String,
    ) -> Result<String, RunError> {
        if let Some(active) = &self.active
            && !active.run.status().is_final()
        {
            return Err(RunError::Precondition(format!(
                "run {} is {}: one run at a time (wait for it, or `fleetctl abort {}`)",
                active.id,
                active.run.status().as_str(),
                active.id
            )));
        }
        self.refresh_attachment().await;
        let nodes = self
            .fleet
            .list()
            .await
            .ok_or_else(|| RunError::Internal("the coordinator is shutting down".into()))?;
        let versions = crate::convert::versions(&nodes);
        let plan = crate::plan::plan(&self.inventory, &selection, &versions)
            .map_err(|e| RunError::Invalid(e.to_string()))?;
        if let Some(expected) = plan_hash
            && expected != plan.hash
        {
            return Err(RunError::Precondition(format!(
                "the fleet has drifted from the reviewed plan: its hash is now {}, not {expected}; run `fleetctl plan` again and review it",
                plan.hash
            )));
        }
        let id = uuid::Uuid::new_v4().to_string();
        let step_timeout_ms = Millis::try_from(self.inventory.policy.step_timeout.as_millis())
            .unwrap_or(Millis::MAX / 4);
        let run = Run::new(&plan, step_timeout_ms, self.attached.clone());
        let inventory_toml = std::fs::read_to_string(&self.inventory.path).unwrap_or_default();
        let selection_json = serde_json::json!({
            "environments": selection.environments.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
            "master_only": selection.master_only,
            "max_parallel": plan.max_parallel,
            "max_failures": plan.max_failures,
        })
        .to_string();
        let started_at = now_ms();
        self.store.create_run(
            &NewRun {
                id: &id,
                workflow: "upgrade",
                started_by: &operator,
                started_at,
                inventory_toml: &inventory_toml,
                selection_json: &selection_json,
                plan_hash: &plan.hash,
                target_version: &plan.target_version,
                installer: &plan.installer,
                step_timeout_ms,
            },
            &run,
        )?;
        self.store.audit(&AuditEntry {
            at: started_at,
            operator: operator.clone(),
            action: "start".into(),
            run_id: id.clone(),
            node: None,
            step: None,
            detail: format!("plan {}", plan.hash),
        })?;
        tracing::info!(run = %id, operator = %operator, plan = %plan.hash, "run started");
        let (events, _) = broadcast::channel(4096);
        self.active = Some(Active {
            id: id.clone(),
            run,
            plan,
            attempts: HashMap::new(),
            events,
            last_seq: 0,
            installer_sha256: None,
        });
        self.apply(Event::Start).await;
        Ok(id)
    }

    /// Applies an event to the active run, persists the decision, then carries out its commands.
    async fn apply(&mut self, event: Event) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if active.run.status().is_final() && !matches!(event, Event::StepFinished { .. }) {
            return;
        }
        let now = now_ms();
        let commands = match active.run.apply(event, now) {
            Ok(c) => c,
            Err(refused) => {
                tracing::debug!("{refused}");
                return;
            }
        };
        self.carry_out(commands, now).await;
    }

    async fn carry_out(&mut self, commands: Vec<Command>, now: Millis) {
        if commands.is_empty() {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let ids = match self.store.commit(&active.id, &active.run, &commands, now) {
            Ok(ids) => ids,
            Err(e) => {
                // Nothing is sent that is not stored: the run stops here, visibly.
                tracing::error!(run = %active.id, "cannot persist the run's state: {e}; nothing more is dispatched");
                return;
            }
        };
        // Stream what was stored.
        if let Ok(stored) = self
            .store
            .run_events(&active.id, active.last_seq, usize::MAX)
        {
            for event in stored {
                active.last_seq = event.seq;
                let _ = active
                    .events
                    .send(run_event(&active.id, &active.run, &event));
            }
        }
        let mut ids = ids.into_iter();
        let mut follow_ups = Vec::new();
        for command in commands {
            let Command::Dispatch { step, attempt } = command else {
                continue;
            };
            let Some(attempt_id) = ids.next() else {
                continue;
            };
            active.attempts.insert(step, attempt_id.clone());
            let planned = &active.run.steps[step].plan;
            if planned.kind.on_agent() {
                let node = planned.node.clone();
                let assignment = assignment(
                    &self.inventory,
                    &active.plan,
                    &active.id,
                    self.epoch,
                    &active.run,
                    step,
                    &attempt_id,
                );
                let sent = match &node {
                    Some(node) => {
                        self.fleet
                            .send(
                                node.clone(),
                                pb::CoordinatorMessage {
                                    body: Some(CoordinatorBody::Assign(assignment)),
                                },
                            )
                            .await
                    }
                    None => false,
                };
                if !sent {
                    follow_ups.push(Event::StepFinished {
                        step,
                        attempt,
                        outcome: Outcome::Failed(
                            "the node was not attached when the step was dispatched".into(),
                        ),
                    });
                }
            } else if planned.kind == StepKind::Preflight {
                let job = PreflightJob::new(
                    &active.id,
                    &active.run,
                    step,
                    attempt,
                    &active.plan.installer,
                    self.epoch,
                );
                tokio::spawn(preflight(
                    job,
                    self.attached.clone(),
                    self.fleet.clone(),
                    self.requests.clone(),
                ));
            } else {
                let outcome = Outcome::Failed(format!("{} is not built yet", planned.kind.name()));
                follow_ups.push(Event::StepFinished {
                    step,
                    attempt,
                    outcome,
                });
            }
        }
        for event in follow_ups {
            Box::pin(self.apply(event)).await;
        }
    }

    async fn preflight_done(
        &mut self,
        run_id: &str,
        step: usize,
        attempt: u32,
        result: Result<Option<String>, String>,
    ) {
        let Some(active) = self.active.as_mut().filter(|a| a.id == run_id) else {
            return;
        };
        let outcome = match (result, &active.installer_sha256) {
            (Err(problem), _) => Outcome::Failed(problem),
            (Ok(None), _) => Outcome::Succeeded,
            (Ok(Some(hash)), None) => {
                if let Err(e) = self.store.set_installer_sha256(run_id, &hash) {
                    tracing::error!("cannot record the installer's SHA-256: {e}");
                    return;
                }
                active.installer_sha256 = Some(hash);
                Outcome::Succeeded
            }
            (Ok(Some(hash)), Some(recorded)) if &hash == recorded => Outcome::Succeeded,
            (Ok(Some(hash)), Some(recorded)) => Outcome::Failed(format!(
                "the installer here has SHA-256 {hash}, but this run installed {recorded} in the environments before: one run installs one installer"
            )),
        };
        self.apply(Event::StepFinished {
            step,
            attempt,
            outcome,
        })
        .await;
    }

    async fn agent(&mut self, node: NodeName, body: AgentBody) {
        match body {
            AgentBody::Event(event) => self.step_event(node, event).await,
            AgentBody::AssignmentAck(ack) => {
                if ack.decision() != pb::AssignmentDecision::Accepted {
                    tracing::warn!(node = %node, attempt_id = %ack.attempt_id, decision = ?ack.decision(), "assignment not accepted: {}", ack.reason);
                    if let Some((step, attempt)) = self.current_attempt(&ack.attempt_id)
                        && ack.decision() != pb::AssignmentDecision::Duplicate
                    {
                        let outcome =
                            Outcome::Failed(format!("{node} refused the step: {}", ack.reason));
                        self.apply(Event::StepFinished {
                            step,
                            attempt,
                            outcome,
                        })
                        .await;
                    }
                }
            }
            AgentBody::AttemptReport(_)
            | AgentBody::Hello(_)
            | AgentBody::Heartbeat(_)
            | AgentBody::Facts(_) => {}
        }
    }

    fn current_attempt(&self, attempt_id: &str) -> Option<(usize, u32)> {
        let active = self.active.as_ref()?;
        let (&step, _) = active
            .attempts
            .iter()
            .find(|(_, id)| id.as_str() == attempt_id)?;
        Some((step, active.run.steps[step].attempt))
    }

    async fn step_event(&mut self, node: NodeName, event: pb::StepEvent) {
        use pb::step_event::Kind;
        let Some(kind) = event.kind.clone() else {
            return;
        };
        let (name, payload) = match &kind {
            Kind::Started(s) => ("started", serde_json::json!({ "command": s.command })),
            Kind::Progress(p) => (
                "progress",
                serde_json::json!({ "percent": p.percent, "message": p.message }),
            ),
            Kind::Output(o) => (
                "output",
                serde_json::json!({ "key": o.key, "value": o.value }),
            ),
            Kind::Log(l) => (
                "log",
                serde_json::json!({ "line": l.line, "stderr": l.stream() == pb::LogStream::Stderr }),
            ),
            Kind::Waiting(w) => (
                "waiting",
                serde_json::json!({ "instruction": w.instruction }),
            ),
            Kind::Finished(f) => (
                "finished",
                serde_json::json!({ "outcome": format!("{:?}", f.outcome()), "error": f.error, "exit_code": f.exit_code }),
            ),
        };
        let Ok(Some((run_id, step, attempt))) = self.store.attempt(&event.attempt_id) else {
            tracing::warn!(node = %node, attempt_id = %event.attempt_id, "an event for an attempt this coordinator never dispatched; ignored");
            return;
        };
        let fresh = match self.store.agent_event(
            &event.attempt_id,
            event.seq,
            event.at_unix_ms,
            name,
            &payload,
        ) {
            Ok(fresh) => fresh,
            Err(e) => {
                tracing::error!("cannot store an agent event: {e}");
                return;
            }
        };
        if let Ok(up_to) = self.store.contiguous_seq(&event.attempt_id) {
            let ack = pb::EventAck {
                attempt_id: event.attempt_id.clone(),
                up_to_seq: up_to,
                complete: false,
                epoch: self.epoch,
            };
            let _ = self
                .fleet
                .send(
                    node.clone(),
                    pb::CoordinatorMessage {
                        body: Some(CoordinatorBody::EventAck(ack)),
                    },
                )
                .await;
        }
        if !fresh {
            return;
        }
        let Some(active) = self.active.as_ref().filter(|a| a.id == run_id) else {
            return;
        };
        let live = pb::RunEvent {
            seq: active.last_seq,
            at_unix_ms: event.at_unix_ms,
            run_id: run_id.clone(),
            environment: active.run.env_names[active.run.steps[step].plan.env].clone(),
            node: Some(node.to_string()),
            step: active.run.steps[step].plan.kind.name().into(),
            attempt_id: event.attempt_id.clone(),
            kind: match kind.clone() {
                Kind::Progress(p) => Some(pb::run_event::Kind::Progress(p)),
                Kind::Output(o) => Some(pb::run_event::Kind::Output(o)),
                Kind::Log(l) => Some(pb::run_event::Kind::Log(l)),
                Kind::Waiting(w) => Some(pb::run_event::Kind::Waiting(w)),
                Kind::Started(_) | Kind::Finished(_) => None,
            },
        };
        if live.kind.is_some() {
            let _ = active.events.send(live);
        }
        if let Kind::Finished(result) = kind {
            let artifacts: Vec<(String, String, u64, String)> = result
                .artifacts
                .iter()
                .map(|a| {
                    (
                        a.kind.clone(),
                        a.path.clone(),
                        a.size_bytes,
                        a.sha256.clone(),
                    )
                })
                .collect();
            if let Err(e) = self.store.finish_attempt(
                &event.attempt_id,
                now_ms(),
                &format!("{:?}", result.outcome()),
                &result.error,
                result.exit_code,
                &artifacts,
            ) {
                tracing::error!("cannot store a step result: {e}");
                return;
            }
            let outcome = match result.outcome() {
                pb::StepOutcome::Succeeded => Outcome::Succeeded,
                other => Outcome::Failed(if result.error.is_empty() {
                    format!("{other:?}")
                } else {
                    result.error.clone()
                }),
            };
            self.apply(Event::StepFinished {
                step,
                attempt,
                outcome,
            })
            .await;
        }
    }

    async fn control(
        &mut self,
        run_id: &str,
        request: ControlRequest,
        operator: &str,
    ) -> Result<pb::Run, RunError> {
        let Some(active) = self.active.as_mut().filter(|a| a.id == run_id) else {
            self.store.run(run_id)?;
            return Err(RunError::Precondition(format!(
                "run {run_id} is not active in this coordinator"
            )));
        };
        let find_step = |kinds: &[StepKind]| -> Result<usize, RunError> {
            let node = request
                .node
                .as_deref()
                .ok_or_else(|| RunError::Invalid("name the node: --node N".into()))
                .and_then(|n| NodeName::new(n).map_err(RunError::Invalid))?;
            let candidates: Vec<usize> = active
                .run
                .steps
                .iter()
                .enumerate()
                .filter(|(_, s)| s.plan.node.as_ref() == Some(&node))
                .filter(|(_, s)| {
                    request
                        .step
                        .as_deref()
                        .is_none_or(|name| s.plan.kind.name() == name)
                })
                .filter(|(_, s)| kinds.is_empty() || kinds.contains(&s.plan.kind))
                .map(|(i, _)| i)
                .collect();
            // The node's step the operator means: the failed one, else the first still pending.
            candidates
                .iter()
                .copied()
                .find(|&i| active.run.steps[i].state == crate::engine::StepState::Failed)
                .or_else(|| {
                    candidates
                        .iter()
                        .copied()
                        .find(|&i| active.run.steps[i].state == crate::engine::StepState::Pending)
                })
                .ok_or_else(|| {
                    RunError::Invalid(format!(
                        "node {node} has no failed or pending step in run {run_id}"
                    ))
                })
        };
        let control = match request.action {
            pb::ControlAction::Pause => Control::Pause,
            pb::ControlAction::Resume => Control::Resume,
            pb::ControlAction::Abort => Control::Abort,
            pb::ControlAction::Approve if request.node.is_some() => {
                return Err(RunError::Invalid(
                    "approving an attended install (--node) is not built yet".into(),
                ));
            }
            pb::ControlAction::Approve => Control::Approve,
            pb::ControlAction::Retry => Control::Retry {
                step: find_step(&[])?,
            },
            pb::ControlAction::Skip => Control::Skip {
                step: find_step(&[])?,
            },
            pb::ControlAction::Unspecified => {
                return Err(RunError::Invalid("no control action".into()));
            }
        };
        let step_name = match &control {
            Control::Retry { step } | Control::Skip { step } => {
                Some(active.run.steps[*step].plan.kind.name().to_string())
            }
            _ => None,
        };
        let now = now_ms();
        let commands = active
            .run
            .apply(Event::Control(control), now)
            .map_err(|r| RunError::Precondition(r.0))?;
        let action = format!("{:?}", request.action).to_ascii_lowercase();
        self.store.audit(&AuditEntry {
            at: now,
            operator: operator.to_string(),
            action: action.clone(),
            run_id: run_id.to_string(),
            node: request.node.clone(),
            step: step_name,
            detail: request.comment.clone(),
        })?;
        tracing::info!(run = %run_id, operator = %operator, "operator {operator}: {action}");
        self.carry_out(commands, now).await;
        self.get(run_id)
    }

    fn get(&self, run_id: &str) -> Result<pb::Run, RunError> {
        let row = self.store.run(run_id)?;
        let steps = self.store.steps(run_id)?;
        let artifacts = self.store.artifacts(run_id)?;
        let active = self.active.as_ref().filter(|a| a.id == run_id);
        Ok(pb::Run {
            id: row.id.clone(),
            workflow: pb::Workflow::Upgrade as i32,
            state: run_state(&row.state) as i32,
            started_at_unix_ms: row.started_at,
            finished_at_unix_ms: row.finished_at,
            started_by: row.started_by,
            reason: row.reason,
            last_event_seq: active.map_or(0, |a| a.last_seq),
            target_version: active
                .map(|a| a.plan.target_version.clone())
                .unwrap_or_default(),
            installer: active.map(|a| a.plan.installer.clone()).unwrap_or_default(),
            plan_hash: active.map(|a| a.plan.hash.clone()).unwrap_or_default(),
            installer_sha256: active
                .and_then(|a| a.installer_sha256.clone())
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
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn list(&self) -> Result<Vec<pb::RunSummary>, RunError> {
        Ok(self
            .store
            .runs()?
            .into_iter()
            .map(|r| pb::RunSummary {
                id: r.id,
                workflow: pb::Workflow::Upgrade as i32,
                state: run_state(&r.state) as i32,
                started_at_unix_ms: r.started_at,
                finished_at_unix_ms: r.finished_at,
                started_by: r.started_by,
                environments: Vec::new(),
            })
            .collect())
    }

    fn watch(
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

    fn logs(
        &self,
        run_id: &str,
        node: Option<&str>,
        step: Option<&str>,
    ) -> Result<Vec<pb::RunEvent>, RunError> {
        self.store.run(run_id)?;
        let rows = self.store.step_log(run_id, node, step)?;
        Ok(rows
            .into_iter()
            .filter_map(|row| {
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
                        stream: if payload.get("stderr").and_then(serde_json::Value::as_bool)
                            == Some(true)
                        {
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
                    "started" => pb::run_event::Kind::Log(pb::StepLog {
                        stream: pb::LogStream::Agent as i32,
                        line: format!("started: {}", text("command")),
                    }),
                    _ => return None,
                };
                Some(pb::RunEvent {
                    run_id: run_id.to_string(),
                    node: Some(node),
                    step,
                    kind: Some(kind),
                    ..Default::default()
                })
            })
            .collect())
    }
}

/// The assignment for an agent step: the action and placeholder values, never a command line.
fn assignment(
    inventory: &Inventory,
    plan: &Plan,
    run_id: &str,
    epoch: u64,
    run: &Run,
    step: usize,
    attempt_id: &str,
) -> pb::StepAssignment {
    let s = &run.steps[step].plan;
    let env_name = &plan.environments[s.env].name;
    let env = inventory.environments.iter().find(|e| &e.name == env_name);
    let mut params = std::collections::HashMap::from([
        ("target_version".to_string(), plan.target_version.clone()),
        ("installer".to_string(), plan.installer.clone()),
    ]);
    if let Some(env) = env {
        params.insert("backup_dir".into(), env.backup_dir.clone());
    }
    let action = match s.kind {
        StepKind::BackupSecret => pb::Action::BackupSecret,
        StepKind::UpgradeMaster | StepKind::UpgradeMember => pb::Action::InstallSso,
        StepKind::VerifyMaster | StepKind::VerifyMember => pb::Action::VerifySso,
        StepKind::Preflight | StepKind::BackupDatabase | StepKind::Gate => pb::Action::Unspecified,
    };
    pb::StepAssignment {
        epoch,
        attempt_id: attempt_id.to_string(),
        run_id: run_id.to_string(),
        environment: env_name.to_string(),
        step: s.kind.name().to_string(),
        action: action as i32,
        params,
        timeout_ms: u64::try_from(run.step_timeout_ms).unwrap_or(u64::MAX),
        install_mode: match env.map(|e| e.install) {
            Some(InstallMode::Attended) => pb::InstallMode::Attended,
            _ => pb::InstallMode::Unattended,
        } as i32,
        expected_installer_sha256: String::new(),
    }
}

/// What a preflight checks: the nodes of one environment that have steps to run, and which of them install.
struct PreflightJob {
    run_id: String,
    step: usize,
    attempt: u32,
    installer: String,
    epoch: u64,
    nodes: BTreeSet<NodeName>,
    installing: BTreeSet<NodeName>,
}

impl PreflightJob {
    fn new(
        run_id: &str,
        run: &Run,
        step: usize,
        attempt: u32,
        installer: &str,
        epoch: u64,
    ) -> Self {
        let env = run.steps[step].plan.env;
        let steps = &run.steps[run.envs[env].steps.clone()];
        let nodes = steps
            .iter()
            .filter(|x| matches!(x.plan.expected, Expected::Run))
            .filter_map(|x| x.plan.node.clone())
            .collect();
        let installing = steps
            .iter()
            .filter(|x| matches!(x.plan.expected, Expected::Run))
            .filter(|x| {
                matches!(
                    x.plan.kind,
                    StepKind::UpgradeMaster | StepKind::UpgradeMember
                )
            })
            .filter_map(|x| x.plan.node.clone())
            .collect();
        Self {
            run_id: run_id.to_string(),
            step,
            attempt,
            installer: installer.to_string(),
            epoch,
            nodes,
            installing,
        }
    }
}

/// Preflight, off the manager's task: every node with a step to run is attached and its facts have no
/// error; every installing node reads the installer, and all of them read the same SHA-256.
async fn preflight(
    job: PreflightJob,
    attached: BTreeSet<NodeName>,
    fleet: FleetHandle,
    requests: mpsc::Sender<Request>,
) {
    const WAIT: Duration = Duration::from_secs(120);
    let result = async {
        let detached: Vec<String> = job
            .nodes
            .iter()
            .filter(|n| !attached.contains(*n))
            .map(|n| format!("{n} is not attached"))
            .collect();
        if !detached.is_empty() {
            return Err(detached.join("; "));
        }
        // Ask each installing node for fresh facts, the installer's SHA-256 among them.
        let mut asked = Vec::new();
        for node in &job.installing {
            let before = fleet
                .facts_of(node.clone())
                .await
                .map_or(0, |(generation, _)| generation);
            let message = pb::CoordinatorMessage {
                body: Some(CoordinatorBody::RefreshFacts(pb::RefreshFacts {
                    installer: job.installer.clone(),
                    epoch: job.epoch,
                })),
            };
            if !fleet.send(node.clone(), message).await {
                return Err(format!("{node} is not attached"));
            }
            asked.push((node.clone(), before));
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut hashes: Vec<(NodeName, String)> = Vec::new();
        let mut problems = Vec::new();
        for (node, before) in asked {
            let facts = loop {
                match fleet.facts_of(node.clone()).await {
                    Some((generation, facts)) if generation > before => break Some(facts),
                    _ if tokio::time::Instant::now() > deadline => break None,
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            match facts {
                None => problems.push(format!(
                    "{node} did not report its facts within {} s",
                    WAIT.as_secs()
                )),
                Some(f) if !f.error.is_empty() => problems.push(format!("{node}: {}", f.error)),
                Some(f) => match f.installer_sha256 {
                    Some(hash) => hashes.push((node, hash)),
                    None => problems.push(format!("{node} did not report the installer's SHA-256")),
                },
            }
        }
        // Nodes that only verify must still report healthy facts.
        for node in job.nodes.difference(&job.installing) {
            if let Some((_, facts)) = fleet.facts_of(node.clone()).await
                && !facts.error.is_empty()
            {
                problems.push(format!("{node}: {}", facts.error));
            }
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let first = hashes.first().map(|(_, h)| h.clone());
        if let Some(first) = &first {
            let differing: Vec<String> = hashes
                .iter()
                .filter(|(_, h)| h != first)
                .map(|(n, h)| format!("{n} has {h}"))
                .collect();
            if !differing.is_empty() {
                return Err(format!(
                    "the nodes read different installers at {}: {} has {first}, {}",
                    job.installer,
                    hashes[0].0,
                    differing.join(", ")
                ));
            }
        }
        Ok(first)
    }
    .await;
    let _ = requests
        .send(Request::PreflightDone {
            run_id: job.run_id,
            step: job.step,
            attempt: job.attempt,
            result,
        })
        .await;
}

fn run_state(state: &str) -> pb::RunState {
    match state {
        "running" => pb::RunState::Running,
        "paused" => pb::RunState::Paused,
        "waiting-approval" => pb::RunState::WaitingApproval,
        "halted" => pb::RunState::Halted,
        "succeeded" => pb::RunState::Succeeded,
        "failed" => pb::RunState::Failed,
        "aborted" => pb::RunState::Aborted,
        _ => pb::RunState::Unspecified,
    }
}

fn step_state(state: &str) -> pb::StepState {
    match state {
        "pending" => pb::StepState::Pending,
        "running" => pb::StepState::Running,
        "waiting" => pb::StepState::Waiting,
        "succeeded" => pb::StepState::Succeeded,
        "failed" => pb::StepState::Failed,
        "skipped" => pb::StepState::Skipped,
        "already-current" => pb::StepState::AlreadyCurrent,
        _ => pb::StepState::Unspecified,
    }
}

/// A stored run event, with the step's environment, node and name from the run.
fn run_event(run_id: &str, run: &Run, e: &StoredEvent) -> pb::RunEvent {
    let mut event = plain_event(run_id, e);
    if let Some(step) = e.step.and_then(|i| run.steps.get(i)) {
        event.environment = run.env_names[step.plan.env].clone();
        event.node = step.plan.node.as_ref().map(ToString::to_string);
        event.step = step.plan.kind.name().to_string();
    }
    event
}

fn plain_event(run_id: &str, e: &StoredEvent) -> pb::RunEvent {
    let text = |k: &str| {
        e.payload
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let kind = match e.kind.as_str() {
        "step" => Some(pb::run_event::Kind::StepState(pb::StepStateChanged {
            state: step_state(&text("state")) as i32,
            message: text("message"),
            ..Default::default()
        })),
        "dispatched" => Some(pb::run_event::Kind::StepState(pb::StepStateChanged {
            state: pb::StepState::Running as i32,
            attempt_id: text("attempt_id"),
            attempt: u32::try_from(
                e.payload
                    .get("attempt")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0),
            )
            .unwrap_or(0),
            message: String::new(),
        })),
        "run" => Some(pb::run_event::Kind::RunState(pb::RunStateChanged {
            state: run_state(&text("state")) as i32,
            reason: text("reason"),
        })),
        "environment" => Some(pb::run_event::Kind::EnvironmentState(
            pb::EnvironmentStateChanged {
                state: 0,
                waiting_for: text("status"),
            },
        )),
        _ => None,
    };
    pb::RunEvent {
        seq: e.seq,
        at_unix_ms: e.at,
        run_id: run_id.to_string(),
        environment: text("environment"),
        kind,
        ..Default::default()
    }
}
