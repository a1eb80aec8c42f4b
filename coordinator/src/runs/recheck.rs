//! Before an upgrade is sent again (the operator's retry, or a re-send of an attempt that never
//! arrived), the node is asked what it has: an earlier attempt that was interrupted (its agent killed,
//! the server restarted) may have installed the target all the same. When the node reports the target
//! (or newer) *and* ENTSSO running, the step succeeds without installing again, and its verify checks
//! the node as always (issue 18, item 8). The version alone is not enough: an install whose ESSO
//! configuration was cut off leaves the new version with the service not running, and must run again.
//! A node that does not answer in time gets the assignment, as it would have without this look.

use std::time::Duration;

use fleet_proto::version::{Standing, Version};
use tokio::sync::mpsc;

use super::{Active, Request};
use crate::domain::NodeName;
use crate::fleet::FleetHandle;
use crate::plan::StepKind;
use crate::protocol::{Facts, ServiceState, ToAgent};

/// How long the node has to answer with fresh facts.
const WAIT: Duration = Duration::from_secs(20);
/// How often its answer is looked for.
const POLL: Duration = Duration::from_millis(100);

/// One look at a node before its upgrade is sent again.
pub(super) struct Recheck {
    pub run_id: String,
    pub step: usize,
    pub attempt: u32,
    pub attempt_id: String,
    pub node: NodeName,
    pub target: Version,
    pub epoch: u64,
}

/// What the look found: the version the node reports when it is the target or newer, with ENTSSO
/// running.
pub(super) struct Rechecked {
    pub run_id: String,
    pub step: usize,
    pub attempt: u32,
    pub attempt_id: String,
    pub found: Option<String>,
}

impl Recheck {
    /// The look for attempt `attempt` of `step`, if it is an upgrade.
    pub(super) fn of(
        active: &Active,
        step: usize,
        attempt: u32,
        attempt_id: &str,
        epoch: u64,
    ) -> Option<Self> {
        let planned = active.run.steps().get(step)?.plan();
        if !matches!(
            planned.kind,
            StepKind::UpgradeMaster | StepKind::UpgradeMember
        ) {
            return None;
        }
        Some(Self {
            run_id: active.id.clone(),
            step,
            attempt,
            attempt_id: attempt_id.to_string(),
            node: planned.node.clone()?,
            target: active.inventory.upgrade.target_version.clone(),
            epoch,
        })
    }
}

/// Asks the node for fresh facts and reports what it found to the run manager.
pub(super) async fn run(job: Recheck, fleet: FleetHandle, requests: mpsc::Sender<Request>) {
    let found = fresh_facts(&job, &fleet)
        .await
        .filter(|f| f.service == ServiceState::Running)
        .and_then(|f| f.esso_version)
        .filter(|v| {
            v.parse::<Version>()
                .is_ok_and(|found| job.target.compare(&found) != Standing::Older)
        });
    match &found {
        Some(version) => tracing::info!(
            node = %job.node,
            "{} reports ESSO {version}, running: the upgrade is not sent again", job.node
        ),
        None => {
            tracing::debug!(node = %job.node, "{} is not on the target with ENTSSO running: the upgrade is sent", job.node)
        }
    }
    let _ = requests
        .send(Request::Rechecked(Rechecked {
            run_id: job.run_id,
            step: job.step,
            attempt: job.attempt,
            attempt_id: job.attempt_id,
            found,
        }))
        .await;
}

/// The facts the node sends after being asked; `None` when it is not attached or does not answer
/// within [`WAIT`].
async fn fresh_facts(job: &Recheck, fleet: &FleetHandle) -> Option<Facts> {
    let message = ToAgent::RefreshFacts {
        installer: String::new(),
        epoch: job.epoch,
    };
    let asked = fleet.ask_facts(vec![job.node.clone()], message).await?;
    let before = asked.first().and_then(|(_, generation)| *generation)?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        let facts = fleet
            .facts_since(vec![(job.node.clone(), before)])
            .await?
            .pop()
            .flatten();
        if facts.is_some() {
            return facts;
        }
        tokio::time::sleep(POLL).await;
    }
    tracing::warn!(node = %job.node, "{} did not answer for its facts within {WAIT:?}; the upgrade is sent", job.node);
    None
}
