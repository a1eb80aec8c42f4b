//! Attaching to the coordinator: one long-lived `Attach` stream, heartbeats both ways, and re-attaching
//! with backoff whenever the stream ends, forever, until shutdown.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fleet_proto::identity::Role;
use fleet_proto::pb::agent_message::Body as AgentBody;
use fleet_proto::pb::agent_service_client::AgentServiceClient;
use fleet_proto::pb::coordinator_message::Body as CoordinatorBody;
use fleet_proto::tls::TlsMaterial;
use fleet_proto::{pb, unix_ms};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::attempt;
use crate::backoff::Backoff;
use crate::cancel::{Cancel, Running};
use crate::catalogue::ActionName;
use crate::config::AgentConfig;
use crate::executor::{self, Assignment};
use crate::facts;
use crate::host;
use crate::journal::{Accept, Journal, JournalError, Waiting};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A session that lasted this long resets the re-attach backoff.
const STABLE_SESSION: Duration = Duration::from_secs(10);
/// Until the coordinator's welcome says otherwise.
const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Tls(#[from] fleet_proto::tls::TlsError),
    #[error("state directory {}: {detail}", path.display())]
    StateDir {
        path: std::path::PathBuf,
        detail: String,
    },
    #[error("{0}")]
    Journal(#[from] JournalError),
}

/// Why one attach attempt ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("{0}")]
    Connect(String),
    #[error("the coordinator refused this agent: {0}")]
    Refused(String),
    /// The TLS handshake failed: a certificate refused by either side, in words.
    #[error("{0}")]
    Tls(String),
    #[error("refusing a stale coordinator: {0}")]
    Stale(String),
    #[error("{0}")]
    Lost(String),
}

/// The agent process: loads its TLS material, then attaches until `shutdown`.
pub struct Agent {
    config: AgentConfig,
    tls: Arc<rustls::ClientConfig>,
    instance_id: String,
    started_at: SystemTime,
    highest_epoch: u64,
    /// Attempts, their events until acknowledged, and the newest epoch seen: what survives a restart.
    journal: Journal,
    /// Attempts that were running when the agent last stopped and whose process still runs.
    orphans: Vec<(String, host::ProcessId)>,
    /// The attempts running in this process, to cancel.
    running: Running,
    /// Messages that need not survive a broken stream (facts), from tasks that outlive one.
    outbox: mpsc::Sender<pb::AgentMessage>,
    outbox_rx: Option<mpsc::Receiver<pb::AgentMessage>>,
}

impl Agent {
    pub fn new(config: AgentConfig) -> Result<Self, AgentError> {
        let material = TlsMaterial::load(&config.tls, Role::Agent)?;
        if material.identity().node() != Some(config.node.as_str()) {
            tracing::error!(
                "{}: node is {:?} but the certificate {} names {}; the coordinator will refuse this agent",
                config.path.display(),
                config.node,
                config.tls.cert.display(),
                material.identity()
            );
        }
        let tls = material.client_config(material.coordinator_identity())?;
        std::fs::create_dir_all(&config.state_dir).map_err(|e| AgentError::StateDir {
            path: config.state_dir.clone(),
            detail: e.to_string(),
        })?;
        let (journal, orphans) = Journal::open(&config.state_dir)?;
        remove_leftover_secret_files(&config.state_dir);
        let highest_epoch = journal.highest_epoch()?;
        let (outbox, outbox_rx) = mpsc::channel(64);
        Ok(Self {
            config,
            tls,
            instance_id: uuid_v4(),
            started_at: SystemTime::now(),
            highest_epoch,
            journal,
            orphans,
            running: Running::default(),
            outbox,
            outbox_rx: Some(outbox_rx),
        })
    }

    /// Attaches, and re-attaches with backoff whenever the stream ends, until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let span = tracing::info_span!("node", node = %self.config.node);
        for (attempt_id, process) in std::mem::take(&mut self.orphans) {
            tracing::warn!(
                attempt_id = %attempt_id,
                "step attempt {attempt_id} was running when this agent stopped and its process {} (or one it started) still runs: \
                 its output is followed, and it is reported interrupted once they have ended, and not run again", process.pid
            );
            let journal = self.journal.clone();
            let state_dir = self.config.state_dir.clone();
            tokio::spawn(async move {
                crate::orphan::follow(journal, &state_dir, &attempt_id, process).await;
                // An orphaned configuration program may have held its file open until now (on
                // Windows the delete at the start then failed).
                remove_leftover_secret_files(&state_dir);
            });
        }
        // Attempts that wait for a reboot: in another boot the install is verified now and the attempt
        // finished; in the same boot (the agent restarted, the server did not) they wait on.
        match self.journal.waiting_for_reboot() {
            Ok(waiting) if !waiting.is_empty() => {
                let boot = host::boot_id(self.config.tools.boot_id.as_deref()).await;
                let _enter = span.enter();
                for w in waiting {
                    self.after_start(w, &boot);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::error!("cannot read the journal: {e}"),
        }
        let journal = self.journal.clone();
        self.attach_forever(shutdown).instrument(span).await;
        // What the journal knows stays there: a running attempt's program runs on, and the next start
        // waits for it (or reports it interrupted); a waiting one waits on.
        let in_flight = journal.in_flight();
        if in_flight > 0 {
            tracing::warn!(
                "the agent stops with {in_flight} step attempt(s) running or waiting: their programs are left to finish, and the next start reports them as the journal knows them"
            );
        }
    }

    async fn attach_forever(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(self.config.reconnect_initial, self.config.reconnect_max);
        let Some(mut outbox) = self.outbox_rx.take() else {
            return;
        };
        loop {
            let mut welcomed = None;
            let end = tokio::select! {
                () = shutdown.cancelled() => return,
                end = self.session(&mut welcomed, &shutdown, &mut outbox) => end,
            };
            if shutdown.is_cancelled() {
                tracing::info!("the agent stops");
                return;
            }
            // Only a session that lasted resets the backoff: two agents fighting over one certificate,
            // or a coordinator that drops every stream, must not make a tight loop.
            if welcomed.is_some_and(|at: std::time::Instant| at.elapsed() >= STABLE_SESSION) {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            match &end {
                SessionEnd::Refused(_) | SessionEnd::Stale(_) | SessionEnd::Tls(_) => {
                    tracing::error!(
                        coordinator = %self.config.coordinator,
                        "{end}; retrying in {}", humantime::format_duration(round_ms(delay))
                    )
                }
                _ => tracing::warn!(
                    coordinator = %self.config.coordinator,
                    "{end}; re-attaching in {}", humantime::format_duration(round_ms(delay))
                ),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn session(
        &mut self,
        welcomed: &mut Option<std::time::Instant>,
        shutdown: &CancellationToken,
        outbox: &mut mpsc::Receiver<pb::AgentMessage>,
    ) -> SessionEnd {
        let params = fact_params(&self.config);
        let facts = facts::collect(&self.config, &params).await;
        if !facts.error.is_empty() {
            tracing::warn!(node = %self.config.node, "facts: {}", facts.error);
        }
        let url = &self.config.coordinator;
        let channel =
            match fleet_proto::transport::connect(url, self.tls.clone(), CONNECT_TIMEOUT).await {
                Ok(channel) => channel,
                Err(e @ fleet_proto::transport::ConnectError::Refused { .. }) => {
                    return SessionEnd::Tls(e.to_string());
                }
                Err(e) => return SessionEnd::Connect(e.to_string()),
            };
        let (tx, rx) = mpsc::channel::<pb::AgentMessage>(256);
        let unsettled = match self.journal.unsettled() {
            Ok(attempts) => attempts,
            Err(e) => return SessionEnd::Lost(format!("cannot read the journal: {e}")),
        };
        let mut hello = pb::Hello {
            node: self.config.node.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            facts: Some(facts),
            highest_epoch_seen: self.highest_epoch,
            attempts: unsettled,
            agent_instance_id: self.instance_id.clone(),
            started_at_unix_ms: unix_ms(self.started_at),
            protocol_version: fleet_proto::PROTOCOL_VERSION,
        };
        // What the hello cannot carry follows it, once the coordinator welcomed this agent.
        let overflow = crate::limits::split_hello(&mut hello);
        let Some(hello) = crate::limits::sendable(message(AgentBody::Hello(hello))) else {
            return SessionEnd::Lost("the hello is over the limit of what the agent sends".into());
        };
        if tx.send(hello).await.is_err() {
            return SessionEnd::Lost("the outbound stream closed before the hello".into());
        }
        let mut client = AgentServiceClient::new(channel);
        let mut inbound = match client.attach(ReceiverStream::new(rx)).await {
            Ok(response) => response.into_inner(),
            Err(status) => return classify(&status, url),
        };

        let welcome = match tokio::time::timeout(DEFAULT_HEARTBEAT_TIMEOUT, inbound.message()).await
        {
            Ok(Ok(Some(pb::CoordinatorMessage {
                body: Some(CoordinatorBody::Welcome(w)),
            }))) => w,
            Ok(Ok(Some(_))) => {
                return SessionEnd::Lost(
                    "the coordinator's first message was not a welcome".into(),
                );
            }
            Ok(Ok(None)) => {
                return SessionEnd::Lost(
                    "the coordinator closed the stream before its welcome".into(),
                );
            }
            Ok(Err(status)) => return classify(&status, url),
            Err(_) => return SessionEnd::Lost("no welcome from the coordinator in time".into()),
        };
        if welcome.epoch < self.highest_epoch {
            return SessionEnd::Stale(format!(
                "its epoch {} is older than epoch {} this agent has seen; a newer coordinator exists",
                welcome.epoch, self.highest_epoch
            ));
        }
        if let Err(e) = self.journal.see_epoch(welcome.epoch) {
            return SessionEnd::Lost(format!("cannot record the coordinator's epoch: {e}"));
        }
        *welcomed = Some(std::time::Instant::now());
        self.highest_epoch = welcome.epoch;
        let interval = Duration::from_millis(u64::from(welcome.heartbeat_interval_ms.max(100)));
        let timeout =
            Duration::from_millis(u64::from(welcome.heartbeat_timeout_ms)).max(interval * 2);
        tracing::info!(
            node = %self.config.node, coordinator = %url, epoch = welcome.epoch,
            "attached to {url} as {} (coordinator epoch {})", self.config.node, welcome.epoch
        );

        let mut heartbeat = tokio::time::interval(interval);
        heartbeat.tick().await;
        // Only what the coordinator sends resets this: a link that died silently is noticed in `timeout`.
        let silence = tokio::time::sleep(timeout);
        tokio::pin!(silence);
        // What goes out, in order; never awaited on while something could arrive (no deadlock with a
        // coordinator that is itself waiting to send).
        let mut queue: VecDeque<pb::AgentMessage> = overflow
            .into_iter()
            .map(|report| message(AgentBody::AttemptReport(report)))
            .collect();
        // Per attempt, the highest event seq queued in this session; a new session starts from what
        // the journal still holds (everything not acknowledged).
        let mut sent: HashMap<String, u64> = HashMap::new();
        if let Err(e) = self.pull(&mut sent, &mut queue, outbox) {
            return SessionEnd::Lost(format!("cannot read the journal: {e}"));
        }
        loop {
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => return SessionEnd::Lost("shutting down".into()),
                () = &mut silence => {
                    return SessionEnd::Lost(format!(
                        "nothing heard from the coordinator for {}",
                        humantime::format_duration(timeout)
                    ));
                }
                next = inbound.message() => next,
                permit = tx.reserve(), if !queue.is_empty() => {
                    let Ok(permit) = permit else {
                        return SessionEnd::Lost("the stream to the coordinator closed".into());
                    };
                    // Checked as it leaves: nothing over the coordinator's limit is sent.
                    if let Some(message) = queue.pop_front().and_then(crate::limits::sendable) {
                        permit.send(message);
                    }
                    continue;
                }
                _ = heartbeat.tick() => {
                    self.journal.purge_if_due();
                    let beat = pb::Heartbeat {
                        sent_at_unix_ms: unix_ms(SystemTime::now()),
                        attempts_in_flight: self.journal.in_flight(),
                    };
                    // A full outbound buffer means the link is stuck: skip this beat, never block on it.
                    if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(message(AgentBody::Heartbeat(beat))) {
                        return SessionEnd::Lost("the stream to the coordinator closed".into());
                    }
                    continue;
                }
                () = self.journal.changed().notified() => {
                    if let Err(e) = self.pull(&mut sent, &mut queue, outbox) {
                        tracing::error!("cannot read the journal: {e}");
                    }
                    continue;
                }
                Some(out) = outbox.recv() => {
                    queue.push_back(out);
                    continue;
                }
            };
            silence
                .as_mut()
                .reset(tokio::time::Instant::now() + timeout);
            let body = match next {
                Err(status) => return classify(&status, url),
                Ok(None) => return SessionEnd::Lost("the coordinator closed the stream".into()),
                Ok(Some(pb::CoordinatorMessage { body: None })) => continue,
                Ok(Some(pb::CoordinatorMessage { body: Some(body) })) => body,
            };
            match body {
                CoordinatorBody::Heartbeat(_) => {}
                CoordinatorBody::EventAck(ack) => {
                    if ack.epoch < self.highest_epoch {
                        tracing::warn!(attempt_id = %ack.attempt_id, "an acknowledgement from older epoch {}; ignored", ack.epoch);
                    } else if let Err(e) =
                        self.journal
                            .ack(&ack.attempt_id, ack.up_to_seq, ack.complete)
                    {
                        tracing::error!("cannot record an acknowledgement: {e}");
                    }
                }
                CoordinatorBody::Welcome(_) => {
                    tracing::warn!("a second welcome from the coordinator; ignored")
                }
                CoordinatorBody::RefreshFacts(request) => {
                    // Facts may take minutes (hashing an installer on a share): never in this loop.
                    let mut params = fact_params(&self.config);
                    if !request.installer.is_empty() {
                        params.insert("installer".into(), request.installer);
                    }
                    let config = self.config.clone();
                    let outbox = self.outbox.clone();
                    tokio::spawn(async move {
                        let facts = facts::collect(&config, &params).await;
                        let _ = outbox.send(message(AgentBody::Facts(facts))).await;
                    });
                }
                CoordinatorBody::Assign(assignment) => {
                    let ack = self.assign(assignment);
                    queue.push_back(message(AgentBody::AssignmentAck(ack)));
                }
                CoordinatorBody::AttemptQuery(query) => {
                    if query.epoch < self.highest_epoch {
                        tracing::warn!(
                            "an attempt query from older epoch {}; ignored",
                            query.epoch
                        );
                        continue;
                    }
                    for attempt_id in query.attempt_ids {
                        match self.journal.report(&attempt_id) {
                            Ok(report) => {
                                queue.push_back(message(AgentBody::AttemptReport(report)))
                            }
                            // Not answering is safe: the coordinator asks again at the next attach.
                            Err(e) => tracing::error!("cannot read the journal: {e}"),
                        }
                    }
                }
                CoordinatorBody::Cancel(c) if c.epoch >= self.highest_epoch => {
                    match self.journal.cancel_waiting(&c.attempt_id, &c.reason) {
                        Ok(true) => {
                            tracing::info!(attempt_id = %c.attempt_id, "the waiting attempt was cancelled: {}", c.reason)
                        }
                        Ok(false) => match self.running.cancel(&c.attempt_id, &c.reason) {
                            Cancel::Cancelled => tracing::info!(
                                attempt_id = %c.attempt_id,
                                "cancelling the running step: {}", c.reason
                            ),
                            Cancel::NeverStopped(action) => tracing::warn!(
                                attempt_id = %c.attempt_id,
                                "not cancelling {action}: an install is never stopped halfway (it would leave the server in an unknown state); it runs to its end"
                            ),
                            Cancel::NotRunning => tracing::debug!(
                                attempt_id = %c.attempt_id,
                                "nothing to cancel: the attempt does not run here"
                            ),
                        },
                        Err(e) => tracing::error!("cannot read the journal: {e}"),
                    }
                }
                CoordinatorBody::ContinueAttempt(c) if c.epoch >= self.highest_epoch => {
                    let why = if c.operator.is_empty() {
                        "the attended install was approved".to_string()
                    } else {
                        format!("the attended install was approved by {}", c.operator)
                    };
                    // An approval also ends a wait for a restart by hand: verify now.
                    let verify_now = format!(
                        "{} approved verifying the install without a restart",
                        if c.operator.is_empty() {
                            "the operator"
                        } else {
                            c.operator.as_str()
                        }
                    );
                    if !self.take_up(&c.attempt_id, pb::WaitReason::AttendedInstall, &why)
                        && !self.take_up(&c.attempt_id, pb::WaitReason::RestartByHand, &verify_now)
                    {
                        // Not waiting here (never received, lost with its journal, or already
                        // going on): the coordinator hears what the journal knows of it.
                        match self.journal.report(&c.attempt_id) {
                            Ok(report) => {
                                queue.push_back(message(AgentBody::AttemptReport(report)))
                            }
                            Err(e) => tracing::error!("cannot read the journal: {e}"),
                        }
                    }
                }
                CoordinatorBody::Cancel(_) | CoordinatorBody::ContinueAttempt(_) => {
                    tracing::warn!("a cancel or approval from an older coordinator epoch; ignored")
                }
            }
        }
    }

    /// Queues what is new: first the non-durable messages already waiting (facts read before a
    /// result must reach the coordinator before it), then journaled events not yet queued.
    fn pull(
        &self,
        sent: &mut HashMap<String, u64>,
        queue: &mut VecDeque<pb::AgentMessage>,
        outbox: &mut mpsc::Receiver<pb::AgentMessage>,
    ) -> Result<(), JournalError> {
        let events = self.journal.unsent(sent)?;
        while let Ok(out) = outbox.try_recv() {
            queue.push_back(out);
        }
        queue.extend(events.into_iter().map(|e| message(AgentBody::Event(e))));
        Ok(())
    }

    /// Decides on an assignment and, when accepted, starts it in its own task.
    fn assign(&self, raw: pb::StepAssignment) -> pb::AssignmentAck {
        let attempt_id = raw.attempt_id.clone();
        let refuse = |decision: pb::AssignmentDecision,
                      reason: String,
                      report: Option<pb::AttemptReport>| {
            tracing::warn!(attempt_id = %attempt_id, "refusing step assignment: {reason}");
            pb::AssignmentAck {
                attempt_id: attempt_id.clone(),
                decision: decision as i32,
                reason,
                report,
            }
        };
        if raw.epoch < self.highest_epoch {
            return refuse(
                pb::AssignmentDecision::StaleEpoch,
                format!(
                    "epoch {} is older than epoch {} this agent has seen",
                    raw.epoch, self.highest_epoch
                ),
                None,
            );
        }
        let mut raw = raw;
        if raw.action() == pb::Action::InstallSso {
            // The verification that finishes an install after an approval or a reboot reads ESSO's
            // events since the install began: the attempt's acceptance, kept with its assignment.
            raw.params
                .entry("installed_at_unix_ms".into())
                .or_insert_with(|| fleet_proto::unix_ms(SystemTime::now()).to_string());
        }
        let kept = raw.clone();
        let assignment = match Assignment::from_proto(raw) {
            Ok(a) => a,
            Err((decision, reason)) => return refuse(decision, reason, None),
        };
        match self.journal.accept_with(
            &assignment.attempt_id,
            assignment.epoch,
            &assignment.run_id,
            &assignment.step,
            Some(&kept),
        ) {
            Ok(Accept::New) => {}
            Ok(Accept::Busy(running)) => {
                return refuse(
                    pb::AssignmentDecision::Busy,
                    format!(
                        "{running} step attempt(s) still run on this server; one step at a time"
                    ),
                    None,
                );
            }
            // Redelivered: report, never run again.
            Ok(Accept::Known(known)) => {
                return pb::AssignmentAck {
                    attempt_id,
                    decision: pb::AssignmentDecision::Duplicate as i32,
                    reason: "this attempt was already received".into(),
                    report: Some(*known),
                };
            }
            // Not journaled, so not run: it could not be told from a redelivery later.
            Err(e) => {
                return refuse(
                    pb::AssignmentDecision::Busy,
                    format!("cannot journal the attempt: {e}"),
                    None,
                );
            }
        }
        self.start(assignment, None);
        pb::AssignmentAck {
            attempt_id,
            decision: pb::AssignmentDecision::Accepted as i32,
            reason: String::new(),
            report: None,
        }
    }

    /// Runs an accepted attempt in its own task, or (`continuation`: its last seq and why) goes on
    /// with one that waited. Its events go into the journal, never waiting on the network: a step's
    /// timeout holds while the coordinator is unreachable.
    fn start(&self, assignment: Assignment, continuation: Option<(u64, String)>) {
        let span = tracing::info_span!(
            "step", run = %assignment.run_id, environment = %assignment.environment,
            step = %assignment.step, attempt_id = %assignment.attempt_id
        );
        let (config, journal) = (self.config.clone(), self.journal.clone());
        let facts_outbox = self.outbox.clone();
        let ticket = self
            .running
            .register(&assignment.attempt_id, assignment.action);
        tokio::spawn(
            async move {
                let result =
                    attempt::run(&config, &journal, &assignment, continuation, ticket).await;
                match &result {
                    Some(result) => tracing::info!(outcome = ?result.outcome(), error = %result.error, "step finished"),
                    None => tracing::info!("step waits (for the operator, or a reboot)"),
                }
                // The node changed: fresh facts, after the result so that they never delay it (facts
                // may take seconds on Windows). The coordinator takes the verified version from the
                // result itself.
                if result.is_some()
                    && matches!(
                        assignment.action,
                        ActionName::InstallSso | ActionName::VerifySso
                    )
                {
                    let facts = facts::collect(&config, &fact_params(&config)).await;
                    let _ = facts_outbox.try_send(message(AgentBody::Facts(facts)));
                }
            }
            .instrument(span),
        );
    }

    /// An attempt that waits for a reboot, at the agent's start in `boot`: verified when the server
    /// restarted since the install (or when the install's boot is unknown, as with an older agent);
    /// otherwise it waits for a restart by hand, and says so.
    fn after_start(&self, w: Waiting, boot: &Result<String, String>) {
        let then = w.waiting.boot_id.as_str();
        let not_rebooted = match boot {
            _ if then.is_empty() => None,
            Ok(now) if now == then => Some(
                "the server has not restarted (the agent restarted in the same boot)".to_string(),
            ),
            Ok(_) => None,
            Err(e) => Some(format!(
                "the agent restarted and cannot tell whether the server did ({e})"
            )),
        };
        let Some(problem) = not_rebooted else {
            self.take_up(
                &w.attempt_id,
                w.waiting.reason(),
                "the server restarted after the install",
            );
            return;
        };
        tracing::warn!(attempt_id = %w.attempt_id, "{problem}: the install waits for a restart of the server");
        if w.waiting.reason() == pb::WaitReason::RestartByHand {
            return;
        }
        let event = pb::StepEvent {
            attempt_id: w.attempt_id.clone(),
            seq: w.last_seq + 1,
            at_unix_ms: unix_ms(SystemTime::now()),
            kind: Some(pb::step_event::Kind::Waiting(pb::StepWaiting {
                instruction: executor::restart_by_hand(
                    &self.config.node,
                    &format!("installed, but {problem}"),
                ),
                reason: pb::WaitReason::RestartByHand as i32,
                boot_id: w.waiting.boot_id.clone(),
            })),
        };
        if let Err(e) = self.journal.record(&event) {
            tracing::error!(attempt_id = %w.attempt_id, "cannot journal a step event: {e}");
        }
    }

    /// Goes on with an attempt the journal holds as waiting, if it waits for `reason`; false when
    /// it does not.
    fn take_up(&self, attempt_id: &str, reason: pb::WaitReason, why: &str) -> bool {
        let waiting = match self.journal.take_up(attempt_id, reason) {
            Ok(Some(waiting)) => waiting,
            Ok(None) => {
                tracing::debug!(
                    attempt_id,
                    "attempt {attempt_id} does not wait for {reason:?}; nothing to do"
                );
                return false;
            }
            Err(e) => {
                tracing::error!(attempt_id, "cannot read the journal: {e}");
                return false;
            }
        };
        let assignment = waiting
            .assignment
            .ok_or_else(|| "the journal kept no assignment for it".to_string())
            .and_then(|a| Assignment::from_proto(a).map_err(|(_, why)| why));
        match assignment {
            Ok(assignment) => self.start(assignment, Some((waiting.last_seq, why.to_string()))),
            Err(problem) => {
                tracing::error!(
                    attempt_id,
                    "cannot go on with attempt {attempt_id}: {problem}"
                );
                let result = pb::StepFinished {
                    outcome: pb::StepOutcome::Failed as i32,
                    error: format!(
                        "{why}, but the agent cannot verify the install: {problem}; check the server, then retry the step"
                    ),
                    ..Default::default()
                };
                if let Err(e) = self.journal.finish(attempt_id, waiting.last_seq, result) {
                    tracing::error!(attempt_id, "cannot journal a step event: {e}");
                }
            }
        }
        true
    }
}

/// The placeholder values a facts command gets: the node's name.
/// A configuration file holds the ENTSSO account's password only while its program runs; one left
/// behind is a crashed agent's (ESSO's configuration program reads it when it starts): deleted at
/// the start, and again once an orphaned program has ended.
fn remove_leftover_secret_files(state_dir: &std::path::Path) {
    for leftover in crate::builtin::remove_leftover_secret_files(state_dir) {
        tracing::warn!(file = %leftover.display(), "deleted a secret file a previous run left behind");
    }
}

fn fact_params(config: &AgentConfig) -> BTreeMap<String, String> {
    BTreeMap::from([("node".to_string(), config.node.clone())])
}

fn classify(status: &tonic::Status, url: &str) -> SessionEnd {
    use tonic::Code;
    match status.code() {
        // AlreadyExists: another agent process holds this node's session (one live session per node).
        Code::PermissionDenied | Code::Unauthenticated | Code::AlreadyExists => {
            SessionEnd::Refused(status.message().to_string())
        }
        Code::FailedPrecondition => SessionEnd::Stale(status.message().to_string()),
        Code::Unavailable | Code::Unknown => {
            // In TLS 1.3 a refused client certificate is told after the handshake, on the stream.
            if let Some(reason) =
                std::error::Error::source(status).and_then(fleet_proto::transport::tls_refusal)
            {
                return SessionEnd::Tls(format!("the TLS handshake with {url} failed: {reason}"));
            }
            let detail = std::error::Error::source(status)
                .map(fleet_proto::transport::describe_chain)
                .unwrap_or_else(|| status.message().to_string());
            SessionEnd::Lost(format!("connection to {url} lost: {detail}"))
        }
        _ => SessionEnd::Lost(format!("stream ended: {}", status.message())),
    }
}

fn message(body: AgentBody) -> pb::AgentMessage {
    pb::AgentMessage { body: Some(body) }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn uuid_v4() -> String {
    uuid::Uuid::new_v4().to_string()
}
