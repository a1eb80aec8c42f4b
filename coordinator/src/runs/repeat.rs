//! Whether a control that carries a request id the run has applied already is that same control
//! repeated (a retry after a lost answer: nothing changes, the answer is the run now), or another
//! control under a used key (the caller's mistake: refused).

use super::{ControlRequest, RunError};
use crate::domain::NodeName;
use crate::input::quote;
use crate::store::AuditEntry;

/// `Ok` when `request` (whose action reads `action`, from `operator`) is the control `applied` was
/// stored for: the same operator, action and node, and the same step where both name one.
pub(super) fn same_control(
    applied: &AuditEntry,
    action: &str,
    request: &ControlRequest,
    operator: &str,
) -> Result<(), RunError> {
    let same_step = match (&applied.step, &request.step) {
        (Some(applied), Some(requested)) => applied == requested,
        _ => true,
    };
    let same = applied.action == action
        && applied.operator == operator
        && applied.node.as_deref() == request.node.as_ref().map(NodeName::as_str)
        && same_step;
    if same {
        return Ok(());
    }
    let target = applied
        .node
        .as_deref()
        .map(|n| format!(" of {n}"))
        .unwrap_or_default();
    Err(RunError::Invalid(format!(
        "request id {} was used in run {} for another control ({}{target}); send a new request id for a new control",
        quote(applied.request_id.as_deref().unwrap_or_default()),
        applied.run_id,
        applied.action,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::ControlAction;

    fn applied(action: &str, node: Option<&str>, step: Option<&str>) -> AuditEntry {
        AuditEntry {
            at: 1,
            operator: "alice".into(),
            action: action.into(),
            run_id: "r1".into(),
            node: node.map(str::to_string),
            step: step.map(str::to_string),
            detail: String::new(),
            request_id: Some("k1".into()),
        }
    }

    fn request(action: ControlAction, node: Option<&str>, step: Option<&str>) -> ControlRequest {
        ControlRequest {
            action,
            node: node.map(|n| NodeName::new(n).unwrap()),
            step: step.map(str::to_string),
            comment: String::new(),
            request_id: Some("k1".into()),
        }
    }

    #[test]
    fn a_repeat_is_the_same_control_and_anything_else_is_refused() {
        let pause = applied("pause", None, None);
        let again = request(ControlAction::Pause, None, None);
        assert!(same_control(&pause, "pause", &again, "alice").is_ok());
        let resume = request(ControlAction::Resume, None, None);
        let refused = same_control(&pause, "resume", &resume, "alice").unwrap_err();
        assert_eq!(
            refused.to_string(),
            "request id \"k1\" was used in run r1 for another control (pause); send a new request id for a new control"
        );
        assert!(
            same_control(&pause, "pause", &again, "bob").is_err(),
            "another operator's key"
        );

        // A retry resolved to a node's step: the same node (any case), with or without the step.
        let retry = applied("retry", Some("a1"), Some("upgrade"));
        for step in [None, Some("upgrade")] {
            let again = request(ControlAction::Retry, Some("A1"), step);
            assert!(same_control(&retry, "retry", &again, "alice").is_ok());
        }
        let other_node = request(ControlAction::Retry, Some("a2"), None);
        assert!(same_control(&retry, "retry", &other_node, "alice").is_err());
        let other_step = request(ControlAction::Retry, Some("a1"), Some("verify"));
        assert!(same_control(&retry, "retry", &other_step, "alice").is_err());
    }
}
