//! Preflight, the coordinator's first step in every environment.

use std::collections::BTreeSet;
use std::time::Duration;

use fleet_proto::pb;
use fleet_proto::pb::coordinator_message::Body as CoordinatorBody;
use tokio::sync::mpsc;

use super::Request;
use crate::domain::NodeName;
use crate::engine::Run;
use crate::fleet::FleetHandle;
use crate::inventory::SsoDatabase;
use crate::plan::{Expected, StepKind};
use crate::sql;

/// How long preflight waits for the environment's nodes to attach.
const ATTACH_WAIT: Duration = Duration::from_secs(60);

/// Where an SSO database is configured: it must record the inventory's master as the master secret server.
pub(super) struct SsoCheck {
    pub db: SsoDatabase,
    pub master: NodeName,
    pub env: String,
}

/// What a preflight checks: the nodes of one environment that have steps to run, and which of them
/// install; and the SSO database's master secret server, where one is configured.
pub(super) struct PreflightJob {
    run_id: String,
    step: usize,
    attempt: u32,
    installer: String,
    epoch: u64,
    nodes: BTreeSet<NodeName>,
    installing: BTreeSet<NodeName>,
    sso: Option<SsoCheck>,
}

impl PreflightJob {
    pub(super) fn new(
        run_id: &str,
        run: &Run,
        step: usize,
        attempt: u32,
        installer: &str,
        epoch: u64,
        sso: Option<SsoCheck>,
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
            sso,
        }
    }
}

/// Preflight, off the manager's task: every node with a step to run is attached and its facts have no
/// error; every installing node reads the installer, and all of them read the same SHA-256.
pub(super) async fn preflight(
    job: PreflightJob,
    fleet: FleetHandle,
    requests: mpsc::Sender<Request>,
) {
    const WAIT: Duration = Duration::from_secs(120);
    let nodes = async {
        // Nodes that are away (a restarted coordinator, an agent re-attaching) get a while to attach.
        let attach_deadline = tokio::time::Instant::now() + ATTACH_WAIT;
        let detached = loop {
            let attached: BTreeSet<NodeName> = fleet.attached().await.unwrap_or_default();
            let detached: Vec<String> = job
                .nodes
                .iter()
                .filter(|n| !attached.contains(*n))
                .map(|n| format!("{n} is not attached"))
                .collect();
            if detached.is_empty() || tokio::time::Instant::now() > attach_deadline {
                break detached;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if !detached.is_empty() {
            return Err(format!(
                "{} (waited {} s)",
                detached.join("; "),
                ATTACH_WAIT.as_secs()
            ));
        }
        // Ask each installing node for fresh facts, the installer's SHA-256 among them: all in one
        // request to the fleet, then all their answers looked at together.
        let message = pb::CoordinatorMessage {
            body: Some(CoordinatorBody::RefreshFacts(pb::RefreshFacts {
                installer: job.installer.clone(),
                epoch: job.epoch,
            })),
        };
        let asked = fleet
            .ask_facts(job.installing.iter().cloned().collect(), message)
            .await
            .unwrap_or_default();
        let mut waiting = Vec::new();
        for (node, before) in asked {
            match before {
                Some(before) => waiting.push((node, before)),
                None => return Err(format!("{node} is not attached")),
            }
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut hashes: Vec<(NodeName, String)> = Vec::new();
        let mut problems = Vec::new();
        let mut answered: Vec<(NodeName, pb::Facts)> = Vec::new();
        while !waiting.is_empty() {
            let facts = fleet.facts_since(waiting.clone()).await.unwrap_or_default();
            let mut still = Vec::new();
            for ((node, before), facts) in waiting.into_iter().zip(facts) {
                match facts {
                    Some(f) => answered.push((node, f)),
                    None => still.push((node, before)),
                }
            }
            waiting = still;
            if waiting.is_empty() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                problems.extend(waiting.iter().map(|(node, _)| {
                    format!(
                        "{node} did not report its facts within {} s",
                        WAIT.as_secs()
                    )
                }));
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // In the order asked (the inventory's), so that the first hash is the same at every run.
        answered.sort_by(|a, b| a.0.cmp(&b.0));
        for (node, f) in answered {
            if !f.error.is_empty() {
                problems.push(format!("{node}: {}", f.error));
                continue;
            }
            match f.installer_sha256 {
                Some(hash) => hashes.push((node, hash)),
                None => problems.push(format!("{node} did not report the installer's SHA-256")),
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
    };
    let (database, nodes) = tokio::join!(check_master_secret_server(job.sso.as_ref()), nodes);
    let result = match (database, nodes) {
        (Ok(()), nodes) => nodes,
        (Err(db), Ok(_)) => Err(db),
        (Err(db), Err(nodes)) => Err(format!("{db}; {nodes}")),
    };
    let _ = requests
        .send(Request::PreflightDone {
            run_id: job.run_id,
            step: job.step,
            attempt: job.attempt,
            result,
        })
        .await;
}

/// The master secret server recorded in the SSO database must be the inventory's master (SPEC §5):
/// upgrading another server first would upgrade the wrong one first.
async fn check_master_secret_server(check: Option<&SsoCheck>) -> Result<(), String> {
    let Some(check) = check else {
        return Ok(());
    };
    let db = &check.db;
    let recorded = sql::secret_server(db)
        .await
        .map_err(|e| format!("SSO database: {e}"))?;
    if sql::same_server(&recorded, check.master.as_str()) {
        tracing::info!(env = %check.env, database = %db.database, server = %db.server, "the SSO database records {recorded} as the master secret server, as the inventory says");
        Ok(())
    } else {
        Err(format!(
            "the SSO database {} on {}:{} records {recorded} as the master secret server, but the inventory's master of {} is {}: correct the inventory, or move the master secret server first (ssomanage -updatedb, ESSO.md); nothing was changed",
            db.database, db.server, db.port, check.env, check.master
        ))
    }
}
