//! The fleet as the operator's `nodes` and the planner see it: one view per inventory node, what the
//! attached ones reported, and what their fitness checks warn about a plan.

use std::net::SocketAddr;
use std::time::SystemTime;

use fleet_proto::version::Standing;

use crate::domain::{EnvName, NodeName, Role};
use crate::plan::{Expected, Plan, Reported, Reports};
use crate::protocol::Facts;

/// One inventory node as the fleet sees it now.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub name: NodeName,
    pub environment: EnvName,
    pub role: Role,
    pub attached: bool,
    pub last_seen: Option<SystemTime>,
    pub attached_since: Option<SystemTime>,
    pub agent_version: String,
    pub remote_addr: Option<SocketAddr>,
    pub facts: Option<Facts>,
    /// Against the target version; `None`: no version known.
    pub standing: Option<Standing>,
    pub refused_agent: Option<RefusedView>,
}

impl NodeView {
    /// The ESSO version the node reports.
    pub fn version(&self) -> Option<&str> {
        self.facts.as_ref().and_then(|f| f.esso_version.as_deref())
    }
}

/// The latest second agent process refused for a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedView {
    pub instance_id: String,
    pub remote_addr: Option<SocketAddr>,
    pub last_refused: SystemTime,
    pub times: u64,
    pub attached_instance_id: String,
}

/// What the attached nodes reported: their ESSO version and whether their agent installs with its
/// own command. Detached nodes are unknown: their last facts may be stale, and the run's preflight
/// reads them afresh anyway.
pub fn reports(nodes: &[NodeView]) -> Reports {
    nodes
        .iter()
        .filter(|n| n.attached)
        .map(|n| {
            let overrides = |action: &str| {
                n.facts
                    .as_ref()
                    .is_some_and(|f| f.overridden_actions.iter().any(|a| a == action))
            };
            let reported = Reported {
                version: n
                    .version()
                    .filter(|v| !v.trim().is_empty())
                    .map(str::to_string),
                install_override: overrides(crate::plan::install::INSTALL_OVERRIDE),
                configure_override: overrides(crate::plan::install::CONFIGURE_OVERRIDE),
            };
            (n.name.clone(), reported)
        })
        .collect()
}

/// What `plan` warns about the fitness of the nodes with steps to run (attached ones: the others are
/// already warned about).
pub fn fitness_warnings(plan: &Plan, nodes: &[NodeView]) -> Vec<String> {
    let running: std::collections::BTreeSet<&NodeName> = plan
        .steps
        .iter()
        .filter(|s| matches!(s.expected, Expected::Run))
        .filter_map(|s| s.node.as_ref())
        .collect();
    crate::fitness::plan_warnings(
        nodes
            .iter()
            .filter(|n| n.attached && running.contains(&n.name))
            .filter_map(|n| {
                n.facts
                    .as_ref()
                    .map(|f| (n.name.as_str(), f.checks.clone()))
            }),
    )
}
