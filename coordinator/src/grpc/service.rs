//! The gRPC services: authorization by certificate identity, the agent service and the operator
//! service. Errors become a `tonic::Status` here.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use fleet_proto::identity::{PeerIdentity, Role};
use fleet_proto::pb;
use fleet_proto::pb::agent_message::Body as AgentBody;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::{agent_wire, convert, run_wire};
use crate::complaints::Complaints;
use crate::domain::NodeName;
use crate::fleet::{FleetHandle, Session, SessionEnd};
use crate::inventory::Inventory;
use crate::protocol::ToAgent;
use crate::runs::{RunError, RunEventView, RunsHandle};

/// How long an agent has to send its `Hello` after opening the stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest agent instance id or agent version a hello may carry (a uuid is 36 bytes).
const MAX_AGENT_ID: usize = 128;

/// A tonic interceptor admitting only peers whose certificate names `role` in `trust_domain`; the
/// identity is put into the request extensions for the handlers.
pub fn require_role(
    role: Role,
    trust_domain: String,
    service: &'static str,
) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request: Request<()>| {
        let peer = request
            .remote_addr()
            .map_or_else(|| "an unknown address".to_string(), |a| a.to_string());
        let Some(leaf) = request.peer_certs().and_then(|c| c.first().cloned()) else {
            tracing::warn!(%peer, "refused a call to the {service} service from {peer}: no client certificate");
            return Err(Status::unauthenticated("a client certificate is required"));
        };
        let identity = match PeerIdentity::from_certificate_der(&leaf) {
            Ok(identity) => identity,
            Err(e) => {
                tracing::warn!(%peer, "refused a call to the {service} service from {peer}: {e}");
                return Err(Status::unauthenticated(format!("certificate refused: {e}")));
            }
        };
        if identity.trust_domain() != trust_domain {
            tracing::warn!(%peer, identity = %identity, "refused {identity} from {peer} on the {service} service: trust domain is not {trust_domain}");
            return Err(Status::permission_denied(format!(
                "{identity} is not in trust domain {trust_domain}"
            )));
        }
        if identity.role() != role {
            tracing::warn!(
                %peer, identity = %identity,
                "refused {identity} from {peer} on the {service} service: only {role} certificates may use it"
            );
            return Err(Status::permission_denied(format!(
                "the {service} service is for {role} certificates; this certificate is {identity}"
            )));
        }
        request.extensions_mut().insert(identity);
        Ok(request)
    }
}

fn caller(extensions: &tonic::Extensions) -> Result<PeerIdentity, Status> {
    extensions
        .get::<PeerIdentity>()
        .cloned()
        .ok_or_else(|| Status::internal("no caller identity (interceptor missing)"))
}

/// Shared by both services.
pub struct Shared {
    pub inventory: Inventory,
    pub fleet: FleetHandle,
    pub runs: RunsHandle,
    pub epoch: u64,
    pub coordinator_id: String,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub shutdown: CancellationToken,
    next_session: AtomicU64,
}

impl Shared {
    pub fn new(
        inventory: Inventory,
        fleet: FleetHandle,
        runs: RunsHandle,
        epoch: u64,
        heartbeat_interval: Duration,
        heartbeat_timeout: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            inventory,
            fleet,
            runs,
            epoch,
            coordinator_id: uuid::Uuid::new_v4().to_string(),
            heartbeat_interval,
            heartbeat_timeout,
            shutdown,
            next_session: AtomicU64::new(1),
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Agent service

pub struct AgentService {
    pub shared: Arc<Shared>,
}

/// The stream to an agent: the fleet's messages, on the wire.
type ToAgentStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>,
>;

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for AgentService {
    type AttachStream = ToAgentStream;

    async fn attach(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let identity = caller(request.extensions())?;
        let remote_addr = request.remote_addr();
        let peer = remote_addr.map_or_else(|| "?".to_string(), |a| a.to_string());
        let cert_node = identity
            .node()
            .and_then(|n| NodeName::new(n).ok())
            .ok_or_else(|| Status::internal("agent identity without a node name"))?;
        let shared = &self.shared;
        if shared.inventory.find_node(&cert_node).is_none() {
            tracing::warn!(
                node = %cert_node, %peer,
                "refused agent {cert_node} from {peer}: node {cert_node} is not in the inventory {}",
                shared.inventory.path.display()
            );
            return Err(Status::permission_denied(format!(
                "node {cert_node} is not in the coordinator's inventory"
            )));
        }

        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(pb::AgentMessage {
                body: Some(AgentBody::Hello(hello)),
            }))) => hello,
            Ok(Ok(Some(_))) => {
                tracing::warn!(node = %cert_node, %peer, "refused agent {cert_node} from {peer}: its first message was not a hello");
                return Err(Status::invalid_argument(
                    "the first message must be a hello",
                ));
            }
            Ok(Ok(None)) | Ok(Err(_)) => {
                return Err(Status::cancelled(
                    "the agent closed the stream before its hello",
                ));
            }
            Err(_) => {
                tracing::warn!(node = %cert_node, %peer, "refused agent {cert_node} from {peer}: no hello within {HELLO_TIMEOUT:?}");
                return Err(Status::deadline_exceeded("no hello received in time"));
            }
        };
        match NodeName::new(&hello.node) {
            Ok(said) if said == cert_node => {}
            _ => {
                let said = crate::input::quote(&hello.node);
                tracing::warn!(
                    node = %cert_node, %peer,
                    "refused agent from {peer}: its certificate is for node {cert_node} but its configuration says node {said}"
                );
                return Err(Status::permission_denied(format!(
                    "this certificate is for node {cert_node}, but agent.toml says node {said}"
                )));
            }
        }

        if hello.highest_epoch_seen > shared.epoch {
            tracing::error!(
                node = %cert_node, %peer,
                "refused agent {cert_node}: it has seen coordinator epoch {}, newer than this coordinator's epoch {}; \
                 another coordinator with a newer state directory is running, or this one was started from an old backup",
                hello.highest_epoch_seen, shared.epoch
            );
            return Err(Status::failed_precondition(format!(
                "this coordinator's epoch {} is older than epoch {} the agent has seen",
                shared.epoch, hello.highest_epoch_seen
            )));
        }
        // Identifiers the agent chose are logged and shown: bounded, like every field an agent sends.
        if hello.agent_instance_id.is_empty()
            || hello.agent_instance_id.len() > MAX_AGENT_ID
            || hello.agent_version.len() > MAX_AGENT_ID
        {
            tracing::warn!(node = %cert_node, %peer, "refused agent {cert_node} from {peer}: its hello has no agent instance id, or an instance id or version over {MAX_AGENT_ID} bytes");
            return Err(Status::invalid_argument(format!(
                "the hello's agent_instance_id must be 1 to {MAX_AGENT_ID} bytes, and its agent_version at most {MAX_AGENT_ID}"
            )));
        }
        let (tx, rx) = mpsc::channel(256);
        let welcome = ToAgent::Welcome {
            epoch: shared.epoch,
            coordinator_id: shared.coordinator_id.clone(),
            heartbeat_interval: shared.heartbeat_interval,
            heartbeat_timeout: shared.heartbeat_timeout,
        };
        // Queued before the session can be seen (nothing else is sent to it before the welcome).
        tx.send(Ok(welcome))
            .await
            .map_err(|_| Status::cancelled("the agent left"))?;

        let session_id = shared.next_session.fetch_add(1, Ordering::Relaxed);
        let closed = shared.shutdown.child_token();
        let session = Session {
            id: session_id,
            sender: tx.clone(),
            closed: closed.clone(),
            remote_addr,
            agent_version: hello.agent_version.clone(),
            agent_instance_id: hello.agent_instance_id.clone(),
        };
        let instance: Arc<str> = Arc::from(hello.agent_instance_id.as_str());
        shared
            .fleet
            .attach(
                cert_node.clone(),
                session,
                hello.facts.map(agent_wire::facts),
            )
            .await
            .map_err(|refused| Status::already_exists(refused.to_string()))?;
        // Before anything the agent sends on this stream: the run settles what the agent's journal
        // reported and asks about attempts it may have missed.
        shared
            .runs
            .attached(
                cert_node.clone(),
                instance.clone(),
                hello
                    .attempts
                    .into_iter()
                    .map(agent_wire::attempt_report)
                    .collect(),
            )
            .await;

        tokio::spawn(send_heartbeats(
            tx,
            shared.heartbeat_interval,
            closed.clone(),
        ));
        let span = tracing::info_span!("node", node = %cert_node, session = session_id);
        tokio::spawn(
            receive(
                shared.fleet.clone(),
                shared.runs.clone(),
                cert_node,
                instance,
                session_id,
                inbound,
                closed,
            )
            .instrument(span),
        );
        let outbound = tokio_stream::StreamExt::map(ReceiverStream::new(rx), agent_wire::to_agent);
        Ok(Response::new(Box::pin(outbound)))
    }
}

async fn send_heartbeats(
    tx: mpsc::Sender<Result<ToAgent, SessionEnd>>,
    interval: Duration,
    closed: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    loop {
        tokio::select! {
            () = closed.cancelled() => return,
            _ = tick.tick() => {}
        }
        let beat = ToAgent::Heartbeat {
            sent_at: SystemTime::now(),
        };
        // An agent that stops reading fills the buffer: skip the beat rather than block (and hold the
        // stream open) past the session's end.
        if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Ok(beat)) {
            return;
        }
    }
}

async fn receive(
    fleet: FleetHandle,
    runs: RunsHandle,
    node: NodeName,
    instance: Arc<str>,
    session: u64,
    mut inbound: Streaming<pb::AgentMessage>,
    closed: CancellationToken,
) {
    let mut complaints = Complaints::default();
    let reason = loop {
        let message = tokio::select! {
            () = closed.cancelled() => break None,
            message = inbound.message() => message,
        };
        match message {
            Ok(Some(pb::AgentMessage { body: Some(body) })) => {
                fleet.seen(node.clone(), session).await;
                if let Some(problem) = malformed(&body) {
                    if let Some(more) = complaints.admit() {
                        tracing::warn!(node = %node, "ignored a message of agent {node}: {problem} ({more} more ignored since the last warning)");
                    }
                    continue;
                }
                match body {
                    AgentBody::Heartbeat(_) => {}
                    AgentBody::Facts(facts) => {
                        fleet
                            .facts(node.clone(), session, agent_wire::facts(facts))
                            .await;
                    }
                    AgentBody::Hello(_) => {
                        tracing::warn!(node = %node, "agent {node} sent a second hello; ignored");
                    }
                    body @ (AgentBody::Event(_)
                    | AgentBody::AssignmentAck(_)
                    | AgentBody::AttemptReport(_)) => {
                        if let Some(message) = agent_wire::from_agent(body) {
                            runs.agent_message(node.clone(), instance.clone(), message)
                                .await;
                        }
                    }
                }
            }
            Ok(Some(pb::AgentMessage { body: None })) => fleet.seen(node.clone(), session).await,
            Ok(None) => break Some("the agent closed its stream".to_string()),
            Err(status) => break Some(format!("stream error: {}", status.message())),
        }
    };
    if let Some(reason) = reason {
        fleet.detach(node, session, reason).await;
    }
    runs.attachment_changed().await;
}

/// What is wrong with an agent's message that no agent of ours sends: an attempt id longer than
/// the coordinator's uuids. Such a message is ignored (and the warning rate-limited).
fn malformed(body: &AgentBody) -> Option<String> {
    let attempt_id = match body {
        AgentBody::Event(e) => &e.attempt_id,
        AgentBody::AssignmentAck(a) => &a.attempt_id,
        AgentBody::AttemptReport(r) => &r.attempt_id,
        AgentBody::Hello(_) | AgentBody::Heartbeat(_) | AgentBody::Facts(_) => return None,
    };
    (attempt_id.len() > MAX_AGENT_ID).then(|| {
        format!(
            "attempt id {} is longer than {MAX_AGENT_ID} bytes",
            crate::input::quote(attempt_id)
        )
    })
}

// ---------------------------------------------------------------------------------------------------
// Operator service

pub struct OperatorService {
    pub shared: Arc<Shared>,
}

type WatchStream = ReceiverStream<Result<pb::RunEvent, Status>>;

#[tonic::async_trait]
impl pb::operator_service_server::OperatorService for OperatorService {
    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let operator = caller(request.extensions())?;
        tracing::debug!(operator = %operator, "list nodes");
        let nodes = self
            .shared
            .fleet
            .list()
            .await
            .ok_or_else(|| Status::unavailable("the coordinator is shutting down"))?;
        Ok(Response::new(pb::ListNodesResponse {
            nodes: nodes.into_iter().map(agent_wire::node_status).collect(),
        }))
    }

    async fn plan(
        &self,
        request: Request<pb::PlanRequest>,
    ) -> Result<Response<pb::PlanResponse>, Status> {
        let inventory = &self.shared.inventory;
        let selection = convert::selection(request.get_ref().selection.as_ref(), inventory)
            .map_err(Status::invalid_argument)?;
        let nodes = self
            .shared
            .fleet
            .list()
            .await
            .ok_or_else(|| Status::unavailable("the coordinator is shutting down"))?;
        let mut plan = crate::plan::plan(inventory, &selection, &crate::fleet::reports(&nodes))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        plan.warnings
            .extend(crate::fleet::fitness_warnings(&plan, &nodes));
        Ok(Response::new(convert::plan_response(&plan, inventory)))
    }

    async fn start_run(
        &self,
        request: Request<pb::StartRunRequest>,
    ) -> Result<Response<pb::StartRunResponse>, Status> {
        let operator = operator_name(request.extensions())?;
        let inventory = &self.shared.inventory;
        let selection = convert::selection(request.get_ref().selection.as_ref(), inventory)
            .map_err(Status::invalid_argument)?;
        let plan_hash = convert::plan_hash(request.get_ref().plan_hash.as_deref())
            .map_err(Status::invalid_argument)?;
        let run_id = self
            .shared
            .runs
            .start(selection, plan_hash, operator)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::StartRunResponse {
            run_id: run_id.into(),
        }))
    }

    type WatchRunStream = WatchStream;

    async fn watch_run(
        &self,
        request: Request<pb::WatchRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        let r = convert::watch(request.into_inner()).map_err(Status::invalid_argument)?;
        let run_id = convert::run_id(&r.run_id).map_err(Status::invalid_argument)?;
        let (stored, live) = self
            .shared
            .runs
            .watch(run_id, r.after_seq)
            .await
            .map_err(status)?;
        let keep = move |e: &RunEventView| {
            r.node.as_ref().is_none_or(|n| e.node.as_ref() == Some(n))
                && r.step.as_ref().is_none_or(|s| &e.step == s)
        };
        let (tx, rx) = mpsc::channel(1024);
        let follow = r.follow;
        tokio::spawn(async move {
            for event in stored.into_iter().filter(|e| keep(e)) {
                if tx.send(Ok(run_wire::run_event(event))).await.is_err() {
                    return;
                }
            }
            let Some(mut live) = live.filter(|_| follow) else {
                return;
            };
            loop {
                match live.recv().await {
                    Ok(event) => {
                        let done = event.ends_the_run();
                        if keep(&event) && tx.send(Ok(run_wire::run_event(event))).await.is_err() {
                            return;
                        }
                        if done {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx
                            .send(Err(Status::data_loss(format!(
                                "the watcher fell {n} events behind; watch again from the last seq"
                            ))))
                            .await;
                        return;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_run(
        &self,
        request: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let run_id =
            convert::run_id(&request.into_inner().run_id).map_err(Status::invalid_argument)?;
        let run = self.shared.runs.get(run_id).await.map_err(status)?;
        Ok(Response::new(run_wire::run(run)))
    }

    async fn list_runs(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let mut runs = self.shared.runs.list().await.map_err(status)?;
        let limit = request.get_ref().limit as usize;
        if limit > 0 {
            runs.truncate(limit);
        }
        Ok(Response::new(pb::ListRunsResponse {
            runs: runs.into_iter().map(run_wire::run_summary).collect(),
        }))
    }

    async fn control(
        &self,
        request: Request<pb::ControlRequest>,
    ) -> Result<Response<pb::ControlResponse>, Status> {
        let operator = operator_name(request.extensions())?;
        let (run_id, control) =
            convert::control(request.into_inner()).map_err(Status::invalid_argument)?;
        let run = self
            .shared
            .runs
            .control(run_id, control, operator)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ControlResponse {
            run: Some(run_wire::run(run)),
        }))
    }

    async fn logs(
        &self,
        request: Request<pb::LogsRequest>,
    ) -> Result<Response<pb::LogsResponse>, Status> {
        let query = convert::logs(request.get_ref()).map_err(Status::invalid_argument)?;
        let page = self.shared.runs.logs(query).await.map_err(status)?;
        Ok(Response::new(pb::LogsResponse {
            events: page.events.into_iter().map(run_wire::run_event).collect(),
            next_page_token: convert::next_page_token(page.next),
        }))
    }

    async fn audit(
        &self,
        request: Request<pb::AuditRequest>,
    ) -> Result<Response<pb::AuditResponse>, Status> {
        let run_id = request
            .into_inner()
            .run_id
            .as_deref()
            .map(convert::run_id)
            .transpose()
            .map_err(Status::invalid_argument)?;
        let entries = self.shared.runs.audit(run_id).await.map_err(status)?;
        Ok(Response::new(pb::AuditResponse {
            entries: entries.into_iter().map(run_wire::audit_entry).collect(),
        }))
    }
}

fn operator_name(extensions: &tonic::Extensions) -> Result<String, Status> {
    let identity = caller(extensions)?;
    identity
        .operator_name()
        .map(str::to_string)
        .ok_or_else(|| Status::internal("operator identity without a name"))
}

fn status(e: RunError) -> Status {
    match e {
        RunError::Invalid(m) => Status::invalid_argument(m),
        RunError::Precondition(m) => Status::failed_precondition(m),
        e @ RunError::NotFound(_) => Status::not_found(e.to_string()),
        RunError::Internal(m) => Status::internal(m),
    }
}
