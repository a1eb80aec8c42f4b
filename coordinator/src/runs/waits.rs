//! What the coordinator's own waits for the operator say (a migration's `stop-host-account-cache` and
//! `review-export`): the plan's instruction, the `fleetctl approve` that passes it, and for the review
//! what the export reported (the file, its size and lines, the Host Account Cache service's state), so
//! the operator knows what to look at before anything is imported.

use std::collections::BTreeMap;

use crate::plan::StepKind;
use crate::store::LogRow;

/// The step whose outputs the review shows.
pub(super) const EXPORT_STEP: StepKind = StepKind::ExportHostSecurity;

/// The instruction of the wait `kind` planned with `note`, in run `run_id`; `export_log` is the export
/// step's stored log (read for the review only).
pub(super) fn instruction(
    kind: StepKind,
    note: &str,
    run_id: &str,
    export_log: &[LogRow],
) -> String {
    let approve = format!("`fleetctl approve {run_id}`");
    if kind != StepKind::ReviewExport {
        return format!("{note} ({approve})");
    }
    let exported = exported(export_log).unwrap_or_else(|| {
        format!(
            "the export's outputs are not stored yet: see `fleetctl logs {run_id} --step {}`",
            EXPORT_STEP.name()
        )
    });
    format!("{exported}; {note} ({approve})")
}

/// What the last attempt of the export reported: `exported C:\hostsec\….xml (812 bytes, 14 lines;
/// Host Account Cache service on m1: running)`.
fn exported(log: &[LogRow]) -> Option<String> {
    let last = log.iter().map(|r| r.attempt).max()?;
    let outputs: BTreeMap<&str, &str> = log
        .iter()
        .filter(|r| r.attempt == last && r.kind == "output")
        .filter_map(|r| {
            Some((
                r.payload.get("key")?.as_str()?,
                r.payload.get("value")?.as_str()?,
            ))
        })
        .collect();
    let file = outputs.get("exported_file")?;
    let node = log
        .iter()
        .find(|r| r.attempt == last)
        .map(|r| r.node.as_str());
    let mut details = Vec::new();
    if let Some(size) = outputs.get("exported_size") {
        details.push(format!("{size} bytes"));
    }
    if let Some(lines) = outputs.get("exported_lines") {
        let unit = if *lines == "1" { "line" } else { "lines" };
        details.push(format!("{lines} {unit}"));
    }
    let mut text = format!("exported {file}");
    if !details.is_empty() {
        text += &format!(" ({})", details.join(", "));
    }
    if let (Some(state), Some(node)) = (outputs.get("host_account_cache"), node) {
        text += &format!("; the Host Account Cache service on {node} is {state}");
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(attempt: u32, key: &str, value: &str) -> LogRow {
        LogRow {
            node: "m1".into(),
            step: EXPORT_STEP.name().into(),
            attempt,
            kind: "output".into(),
            payload: serde_json::json!({ "key": key, "value": value }),
            position: Default::default(),
        }
    }

    #[test]
    fn the_review_shows_what_the_last_export_reported() {
        let log = [
            output(1, "exported_file", r"C:\hostsec\old.xml"),
            output(
                2,
                "exported_file",
                r"C:\hostsec\ssofleet-hostsecdb-dev-r1.xml",
            ),
            output(2, "exported", "true"),
            output(2, "exported_size", "812"),
            output(2, "exported_lines", "14"),
            output(2, "host_account_cache", "running"),
        ];
        assert_eq!(
            instruction(
                StepKind::ReviewExport,
                "review it, then approve",
                "r1",
                &log
            ),
            r"exported C:\hostsec\ssofleet-hostsecdb-dev-r1.xml (812 bytes, 14 lines); the Host Account Cache service on m1 is running; review it, then approve (`fleetctl approve r1`)"
        );
        assert_eq!(
            instruction(StepKind::ReviewExport, "review it", "r1", &log[..1]),
            r"exported C:\hostsec\old.xml; review it (`fleetctl approve r1`)"
        );
        assert_eq!(
            instruction(StepKind::ReviewExport, "review it", "r1", &[]),
            "the export's outputs are not stored yet: see `fleetctl logs r1 --step export-host-security`; review it (`fleetctl approve r1`)"
        );
        assert_eq!(
            instruction(
                StepKind::StopHostAccountCache,
                "stop it, then approve",
                "r1",
                &[]
            ),
            "stop it, then approve (`fleetctl approve r1`)"
        );
    }
}
