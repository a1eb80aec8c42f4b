//! The live view of the fleet: which agent is attached over which stream, its latest facts, when it
//! was last heard from. One task owns this state; the gRPC services talk to it through [`FleetHandle`].
//!
//! A node has at most one live session, held by one agent process (its instance id). That process's
//! new attach replaces its old session (it reconnected before the old stream was noticed dead); another
//! process's attach is refused while the session is live — two agents for one node (a copy started by
//! hand beside the service, a cloned server) would otherwise take the node's stream in turns, and
//! each would be asked about attempts only the other has (SPEC §9). The refusal is logged (once a
//! minute per node) and shown in `nodes`. A session silent past the heartbeat timeout is closed and
//! the node shown detached, so a newcomer is let in once the first process is gone.
//!
//! Whoever waits for the fleet to change (preflight waits for nodes to attach and for fresh facts)
//! is woken by [`FleetHandle::changes`] rather than asking again and again.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use fleet_proto::version::Version;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::complaints::Complaints;
use crate::domain::NodeName;
use crate::inventory::Inventory;
use crate::protocol::{Facts, ToAgent};

mod view;

pub use view::{NodeView, RefusedView, fitness_warnings, reports};

/// Outbound half of an agent's stream: messages, or why the coordinator ends the stream.
pub type AgentSender = mpsc::Sender<Result<ToAgent, SessionEnd>>;

/// Why the coordinator ends an agent's stream (the gRPC layer tells the agent with a status).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionEnd {
    /// The same agent process attached again.
    #[error("replaced by a new stream of the same agent process")]
    Replaced,
    #[error("heartbeat timeout: stream closed by the coordinator")]
    HeartbeatTimeout,
}

/// Why an attach was refused, for the agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AttachRefused(pub String);

/// A live stream from one agent process.
#[derive(Debug)]
pub struct Session {
    pub id: u64,
    pub sender: AgentSender,
    /// Cancelled when the session is closed from this side (timeout, replaced).
    pub closed: CancellationToken,
    pub remote_addr: Option<SocketAddr>,
    pub agent_version: String,
    pub agent_instance_id: String,
}

#[derive(Debug, Default)]
struct NodeEntry {
    session: Option<Session>,
    attached_since: Option<SystemTime>,
    last_seen: Option<SystemTime>,
    last_seen_at: Option<tokio::time::Instant>,
    facts: Option<Facts>,
    /// Counts facts received, so a caller can wait for facts newer than its request (no clocks compared).
    facts_generation: u64,
    agent_version: String,
    remote_addr: Option<SocketAddr>,
    /// The latest second agent process refused while this node's session was live.
    refused: Option<Refused>,
}

/// A second agent process refused for a node; its refusals are logged as complaints (once a minute).
#[derive(Debug)]
struct Refused {
    instance_id: String,
    remote_addr: Option<SocketAddr>,
    at: SystemTime,
    times: u64,
    complaints: Complaints,
    attached_instance_id: String,
}

enum Command {
    Attach {
        node: NodeName,
        session: Session,
        facts: Option<Facts>,
        reply: oneshot::Sender<Result<(), AttachRefused>>,
    },
    Seen {
        node: NodeName,
        session: u64,
    },
    Facts {
        node: NodeName,
        session: u64,
        facts: Facts,
    },
    Detach {
        node: NodeName,
        session: u64,
        reason: String,
    },
    List(oneshot::Sender<Vec<NodeView>>),
    Attached(oneshot::Sender<BTreeSet<NodeName>>),
    FactsOf {
        node: NodeName,
        reply: oneshot::Sender<Option<(u64, Facts)>>,
    },
    Verified {
        node: NodeName,
        version: String,
    },
    AskFacts {
        nodes: Vec<NodeName>,
        message: ToAgent,
        reply: oneshot::Sender<Vec<(NodeName, Option<u64>)>>,
    },
    FactsSince {
        nodes: Vec<(NodeName, u64)>,
        reply: oneshot::Sender<Vec<Option<Facts>>>,
    },
    Send {
        node: NodeName,
        message: ToAgent,
        reply: oneshot::Sender<bool>,
    },
}

/// Talks to the fleet task. Cheap to clone.
#[derive(Clone)]
pub struct FleetHandle {
    tx: mpsc::Sender<Command>,
    changes: watch::Receiver<u64>,
}

impl FleetHandle {
    /// Starts the fleet task for `inventory`; it ends when `shutdown` is cancelled.
    pub fn spawn(
        inventory: Inventory,
        heartbeat_timeout: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let nodes = inventory
            .nodes()
            .map(|(_, n, _)| (n.clone(), NodeEntry::default()))
            .collect();
        let (changed, changes) = watch::channel(0);
        let task = FleetTask {
            inventory,
            nodes,
            heartbeat_timeout,
            changed,
        };
        tokio::spawn(task.run(rx, shutdown));
        Self { tx, changes }
    }

    /// Changes whenever an agent attaches or detaches, or a node's facts arrive: wait on it, then
    /// look again (what changed is not said). Its value counts the changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Makes `session` the node's live session, or refuses it (the reason, for the agent) while
    /// another agent process holds a live one.
    pub async fn attach(
        &self,
        node: NodeName,
        session: Session,
        facts: Option<Facts>,
    ) -> Result<(), AttachRefused> {
        let shutting_down = || AttachRefused("the coordinator is shutting down".to_string());
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Attach {
                node,
                session,
                facts,
                reply,
            })
            .await
            .map_err(|_| shutting_down())?;
        rx.await.map_err(|_| shutting_down())?
    }

    pub async fn seen(&self, node: NodeName, session: u64) {
        let _ = self.tx.send(Command::Seen { node, session }).await;
    }

    pub async fn facts(&self, node: NodeName, session: u64, facts: Facts) {
        let _ = self
            .tx
            .send(Command::Facts {
                node,
                session,
                facts,
            })
            .await;
    }

    pub async fn detach(&self, node: NodeName, session: u64, reason: String) {
        let _ = self
            .tx
            .send(Command::Detach {
                node,
                session,
                reason,
            })
            .await;
    }

    /// The node's latest facts and their generation (which grows with every facts message).
    pub async fn facts_of(&self, node: NodeName) -> Option<(u64, Facts)> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::FactsOf { node, reply }).await.ok()?;
        rx.await.ok().flatten()
    }

    /// Sends `message` (a facts request) to each of `nodes` in one go: for each, the generation of
    /// the facts it had (see [`Self::facts_of`]), or `None` when it was not sent (not attached).
    pub async fn ask_facts(
        &self,
        nodes: Vec<NodeName>,
        message: ToAgent,
    ) -> Option<Vec<(NodeName, Option<u64>)>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::AskFacts {
                nodes,
                message,
                reply,
            })
            .await
            .ok()?;
        rx.await.ok()
    }

    /// For each (node, generation): its facts if newer than that generation, in the same order.
    pub async fn facts_since(&self, nodes: Vec<(NodeName, u64)>) -> Option<Vec<Option<Facts>>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::FactsSince { nodes, reply })
            .await
            .ok()?;
        rx.await.ok()
    }

    /// A step verified the node at `version`: its facts say so at once (the agent's fresh facts
    /// follow the step's result, and may take a while).
    pub async fn verified(&self, node: NodeName, version: String) {
        let _ = self.tx.send(Command::Verified { node, version }).await;
    }

    /// Sends `message` on the node's live stream; false when it was not queued: the node is not
    /// attached, or its buffer is full (then the session is ended, and the agent re-attaches).
    pub async fn send(&self, node: NodeName, message: ToAgent) -> bool {
        let (reply, rx) = oneshot::channel();
        if self
            .tx
            .send(Command::Send {
                node,
                message,
                reply,
            })
            .await
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Every inventory node, in inventory order; `None` once the task has stopped.
    pub async fn list(&self) -> Option<Vec<NodeView>> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::List(tx)).await.ok()?;
        rx.await.ok()
    }

    /// The nodes attached now (their names only: cheap at any fleet size, unlike [`Self::list`]);
    /// `None` once the task has stopped.
    pub async fn attached(&self) -> Option<BTreeSet<NodeName>> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Attached(tx)).await.ok()?;
        rx.await.ok()
    }
}

struct FleetTask {
    inventory: Inventory,
    nodes: HashMap<NodeName, NodeEntry>,
    heartbeat_timeout: Duration,
    /// Counts attaches, detaches and facts received: see [`FleetHandle::changes`].
    changed: watch::Sender<u64>,
}

impl FleetTask {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        let mut tick =
            tokio::time::interval((self.heartbeat_timeout / 4).max(Duration::from_millis(50)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => self.expire_silent(),
                command = rx.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
            }
        }
        for entry in self.nodes.values_mut() {
            if let Some(session) = entry.session.take() {
                session.closed.cancel();
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Attach {
                node,
                session,
                facts,
                reply,
            } => {
                let Some(entry) = self.nodes.get_mut(&node) else {
                    let _ = reply.send(Err(AttachRefused(format!(
                        "node {node} is not in the inventory"
                    ))));
                    return;
                };
                if let Err(refusal) = refuse_second_agent(&node, entry, &session) {
                    let _ = reply.send(Err(AttachRefused(refusal)));
                    return;
                }
                if let Some(old) = entry.session.take() {
                    tracing::info!(node = %node, "agent {node} re-attached; closing its previous stream");
                    let _ = old.sender.try_send(Err(SessionEnd::Replaced));
                    old.closed.cancel();
                }
                let _ = reply.send(Ok(()));
                let version = facts
                    .as_ref()
                    .and_then(|f| f.esso_version.clone())
                    .unwrap_or_else(|| "none".into());
                let peer = session
                    .remote_addr
                    .map_or_else(|| "?".to_string(), |a| a.to_string());
                tracing::info!(
                    node = %node,
                    %peer,
                    agent_version = %session.agent_version,
                    esso_version = %version,
                    "agent {node} attached"
                );
                let now = SystemTime::now();
                entry.attached_since = Some(now);
                entry.last_seen = Some(now);
                entry.last_seen_at = Some(tokio::time::Instant::now());
                entry.agent_version = session.agent_version.clone();
                entry.remote_addr = session.remote_addr;
                if facts.is_some() {
                    entry.facts = facts;
                    entry.facts_generation += 1;
                }
                entry.session = Some(session);
                self.changed();
            }
            Command::Seen { node, session } => {
                if let Some(entry) = self.live_entry(&node, session) {
                    entry.last_seen = Some(SystemTime::now());
                    entry.last_seen_at = Some(tokio::time::Instant::now());
                }
            }
            Command::Facts {
                node,
                session,
                facts,
            } => {
                if let Some(entry) = self.live_entry(&node, session) {
                    entry.facts = Some(facts);
                    entry.facts_generation += 1;
                    entry.last_seen = Some(SystemTime::now());
                    entry.last_seen_at = Some(tokio::time::Instant::now());
                    self.changed();
                }
            }
            Command::Detach {
                node,
                session,
                reason,
            } => {
                if let Some(entry) = self.live_entry(&node, session) {
                    if let Some(old) = entry.session.take() {
                        old.closed.cancel();
                    }
                    entry.attached_since = None;
                    tracing::warn!(node = %node, "agent {node} detached: {reason}");
                    self.changed();
                }
            }
            Command::List(reply) => {
                let _ = reply.send(self.statuses());
            }
            Command::Attached(reply) => {
                let attached = self
                    .nodes
                    .iter()
                    .filter(|(_, e)| e.session.is_some())
                    .map(|(n, _)| n.clone())
                    .collect();
                let _ = reply.send(attached);
            }
            Command::Verified { node, version } => {
                if let Some(facts) = self.nodes.get_mut(&node).and_then(|e| e.facts.as_mut()) {
                    facts.esso_version = Some(version);
                }
            }
            Command::FactsOf { node, reply } => {
                let facts = self
                    .nodes
                    .get(&node)
                    .and_then(|e| e.facts.clone().map(|f| (e.facts_generation, f)));
                let _ = reply.send(facts);
            }
            Command::Send {
                node,
                message,
                reply,
            } => {
                let _ = reply.send(self.send(&node, message));
            }
            Command::AskFacts {
                nodes,
                message,
                reply,
            } => {
                let asked = nodes
                    .into_iter()
                    .map(|node| {
                        let generation = self.nodes.get(&node).map_or(0, |e| e.facts_generation);
                        let sent = self.send(&node, message.clone());
                        (node, sent.then_some(generation))
                    })
                    .collect();
                let _ = reply.send(asked);
            }
            Command::FactsSince { nodes, reply } => {
                let facts = nodes
                    .iter()
                    .map(|(node, since)| {
                        self.nodes
                            .get(node)
                            .filter(|e| e.facts_generation > *since)
                            .and_then(|e| e.facts.clone())
                    })
                    .collect();
                let _ = reply.send(facts);
            }
        }
    }

    /// Queues `message` on the node's live stream; false when it was not queued: the node is not
    /// attached, or its buffer is full (then the session is ended, and the agent re-attaches).
    fn send(&mut self, node: &NodeName, message: ToAgent) -> bool {
        let Some(entry) = self.nodes.get_mut(node) else {
            return false;
        };
        // Some(full?) when not queued.
        let refused = match entry.session.as_ref() {
            None => Some(false),
            Some(s) => match s.sender.try_send(Ok(message)) {
                Ok(()) => None,
                Err(e) => Some(matches!(e, mpsc::error::TrySendError::Full(_))),
            },
        };
        match refused {
            None => true,
            Some(true) => {
                // An agent that does not read its stream cannot be driven: end the session,
                // so that it re-attaches and is asked about what it missed.
                if let Some(old) = entry.session.take() {
                    old.closed.cancel();
                }
                entry.attached_since = None;
                tracing::warn!(node = %node, "agent {node} detached: it does not read its stream (send buffer full)");
                self.changed();
                false
            }
            Some(false) => false,
        }
    }

    /// The entry of `node` if `session` is its current session (stale sessions are ignored).
    fn live_entry(&mut self, node: &NodeName, session: u64) -> Option<&mut NodeEntry> {
        self.nodes
            .get_mut(node)
            .filter(|e| e.session.as_ref().is_some_and(|s| s.id == session))
    }

    fn expire_silent(&mut self) {
        let now = tokio::time::Instant::now();
        let mut expired = false;
        for (node, entry) in &mut self.nodes {
            let silent = entry
                .last_seen_at
                .is_some_and(|seen| now.duration_since(seen) > self.heartbeat_timeout);
            if entry.session.is_some() && silent {
                if let Some(session) = entry.session.take() {
                    let _ = session.sender.try_send(Err(SessionEnd::HeartbeatTimeout));
                    session.closed.cancel();
                }
                entry.attached_since = None;
                tracing::warn!(
                    node = %node,
                    "agent {node} detached: nothing heard for more than {}",
                    humantime::format_duration(self.heartbeat_timeout)
                );
                expired = true;
            }
        }
        if expired {
            self.changed();
        }
    }

    /// Wakes whoever waits on [`FleetHandle::changes`].
    fn changed(&self) {
        self.changed
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    fn statuses(&self) -> Vec<NodeView> {
        let target = &self.inventory.upgrade.target_version;
        self.inventory
            .nodes()
            .map(|(env, node, role)| {
                let entry = self.nodes.get(node);
                let facts = entry.and_then(|e| e.facts.clone());
                // Against the target as a number; a version that is not one is no version known.
                let standing = facts
                    .as_ref()
                    .and_then(|f| f.esso_version.as_deref())
                    .and_then(|v| v.parse::<Version>().ok())
                    .map(|found| target.compare(&found));
                NodeView {
                    name: node.clone(),
                    environment: env.name.clone(),
                    role,
                    attached: entry.is_some_and(|e| e.session.is_some()),
                    last_seen: entry.and_then(|e| e.last_seen),
                    attached_since: entry.and_then(|e| e.attached_since),
                    agent_version: entry.map(|e| e.agent_version.clone()).unwrap_or_default(),
                    remote_addr: entry.and_then(|e| e.remote_addr),
                    facts,
                    standing,
                    refused_agent: entry.and_then(|e| e.refused.as_ref()).map(|r| RefusedView {
                        instance_id: r.instance_id.clone(),
                        remote_addr: r.remote_addr,
                        last_refused: r.at,
                        times: r.times,
                        attached_instance_id: r.attached_instance_id.clone(),
                    }),
                }
            })
            .collect()
    }
}

/// Refuses `session` when another agent process (another instance id) holds the node's live session,
/// recording (and, once a minute, logging) the refusal. A session whose stream is gone (the process
/// was killed; its end not yet processed) is not live.
fn refuse_second_agent(
    node: &NodeName,
    entry: &mut NodeEntry,
    session: &Session,
) -> Result<(), String> {
    let Some(live) = entry
        .session
        .as_ref()
        .filter(|s| s.agent_instance_id != session.agent_instance_id && !s.sender.is_closed())
    else {
        return Ok(());
    };
    let addr = |a: Option<SocketAddr>| a.map_or_else(|| "?".to_string(), |a| a.to_string());
    let mut refused = match entry.refused.take() {
        Some(r) if r.instance_id == session.agent_instance_id => Refused {
            at: SystemTime::now(),
            times: r.times + 1,
            remote_addr: session.remote_addr,
            ..r
        },
        _ => Refused {
            instance_id: session.agent_instance_id.clone(),
            remote_addr: session.remote_addr,
            at: SystemTime::now(),
            times: 1,
            complaints: Complaints::default(),
            attached_instance_id: live.agent_instance_id.clone(),
        },
    };
    let reason = format!(
        "another agent process for node {node} is attached (instance {} from {}); this one (instance {} from {}) \
         is refused while it is live. Run one agent per node: stop the copy started by hand, or give a cloned \
         server its own name and certificate",
        live.agent_instance_id,
        addr(live.remote_addr),
        session.agent_instance_id,
        addr(session.remote_addr),
    );
    if refused.complaints.admit().is_some() {
        tracing::warn!(node = %node, refusals = refused.times, "refused a second agent for {node}: {reason}");
    }
    entry.refused = Some(refused);
    Err(reason)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const FLEET: &str = "[upgrade]\ntarget_version = \"3.0.7\"\ninstaller = 's'\n[[environment]]\nname = \"dev\"\nmaster = \"m\"\nmembers = [\"a\"]\nbackup_dir = 'b'\n";

    fn session(id: u64) -> Session {
        Session {
            id,
            sender: mpsc::channel(8).0,
            closed: CancellationToken::new(),
            remote_addr: None,
            agent_version: "1".into(),
            agent_instance_id: "i".into(),
        }
    }

    /// Whether `changes` changed, once every command sent before is handled (they are in order).
    async fn changed(fleet: &FleetHandle, changes: &mut watch::Receiver<u64>) -> bool {
        fleet.list().await.unwrap();
        let changed = changes.has_changed().unwrap();
        changes.mark_unchanged();
        changed
    }

    #[tokio::test]
    async fn an_attach_facts_and_a_detach_change_the_fleet_a_heartbeat_does_not() {
        let inventory = Inventory::parse(Path::new("fleet.toml"), FLEET).unwrap();
        let shutdown = CancellationToken::new();
        let fleet = FleetHandle::spawn(inventory, Duration::from_secs(60), shutdown.clone());
        let mut changes = fleet.changes();
        let a = NodeName::new("a").unwrap();
        assert!(!changed(&fleet, &mut changes).await);
        fleet.attach(a.clone(), session(1), None).await.unwrap();
        assert!(changed(&fleet, &mut changes).await, "an attach");
        fleet.seen(a.clone(), 1).await;
        assert!(!changed(&fleet, &mut changes).await, "a heartbeat");
        fleet.facts(a.clone(), 1, Facts::default()).await;
        assert!(changed(&fleet, &mut changes).await, "facts");
        fleet.facts(a.clone(), 2, Facts::default()).await;
        assert!(
            !changed(&fleet, &mut changes).await,
            "facts of a stale session"
        );
        fleet.detach(a, 1, "gone".into()).await;
        assert!(changed(&fleet, &mut changes).await, "a detach");
        shutdown.cancel();
    }
}
