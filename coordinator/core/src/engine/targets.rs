//! Which step an operator's control means when it names a node (and perhaps a step) rather than a
//! step: a retry or skip means the node's failed step, else its first pending one, and without a
//! node the coordinator's own failed step; an approval naming a node means the attended install
//! waiting there. Pure queries: the control itself then goes through [`Run::apply`].

use super::{Run, StepState};
use crate::domain::NodeName;

/// Why no step answers to what the operator named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// No node named, and no step of the coordinator's own has failed.
    NodeNeeded,
    /// The node has no failed or pending step (of the name given).
    NothingOn(NodeName),
    /// No attended install on the node waits for approval.
    NoInstallWaits(NodeName),
}

impl Run {
    /// The step a retry or skip naming `node` (and `step`, a step's name) means: the node's failed
    /// step, else its first still pending; without a node, the failed step of the coordinator's
    /// own (preflight, backup-database, a migration's review).
    pub fn target(&self, node: Option<&NodeName>, step: Option<&str>) -> Result<usize, Unresolved> {
        let Some(node) = node else {
            return self
                .steps
                .iter()
                .position(|s| s.plan.node.is_none() && s.record.state == StepState::Failed)
                .ok_or(Unresolved::NodeNeeded);
        };
        let candidates = || {
            self.steps
                .iter()
                .enumerate()
                .filter(|(_, s)| s.plan.node.as_ref() == Some(node))
                .filter(|(_, s)| step.is_none_or(|name| s.plan.kind.name() == name))
        };
        let with = |state: StepState| {
            candidates()
                .find(|(_, s)| s.record.state == state)
                .map(|(i, _)| i)
        };
        with(StepState::Failed)
            .or_else(|| with(StepState::Pending))
            .ok_or_else(|| Unresolved::NothingOn(node.clone()))
    }

    /// The attended install on `node` that waits for the operator's approval.
    pub fn waiting_install(&self, node: &NodeName) -> Result<usize, Unresolved> {
        self.steps
            .iter()
            .position(|s| {
                s.plan.node.as_ref() == Some(node)
                    && s.plan.kind.installs()
                    && s.record.state == StepState::Waiting
            })
            .ok_or_else(|| Unresolved::NoInstallWaits(node.clone()))
    }
}
