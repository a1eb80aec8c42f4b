//! The preflight fitness checks (SPEC §5, issue 19): what the agents found on each server before
//! anything changes, which checks every server is expected to report, and what a failed one means.
//! The agents run the checks and report them in their facts (`check.<name>`); the coordinator decides
//! here: `plan` warns, preflight halts the environment.

/// One check as an agent reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    /// What was found; for a failed check, what to do.
    pub detail: String,
}

/// The checks the built-in agent reports for every server: the agent's account is a local
/// administrator and an SSO administrator; no restart is pending; there is room where the secret
/// backup is written; MSDTC runs; ENTSSO is healthy. A customer's own facts command may report fewer:
/// the others are "not reported" (a warning).
pub const EXPECTED: [&str; 6] = [
    "local_admin",
    "sso_admin",
    "reboot_pending",
    "backup_space",
    "msdtc",
    "entsso",
];

/// The failed checks of `node`, each with its name and what to do: what halts preflight.
pub fn failures(node: &str, checks: &[Check]) -> Vec<String> {
    checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{node}: check {} failed: {}", c.name, c.detail))
        .collect()
}

/// What `plan` says about the fitness of `nodes` (name and checks): each failed check (preflight will
/// halt on it), then, per set of expected checks some nodes did not report, one line naming them.
pub fn plan_warnings<'a>(nodes: impl IntoIterator<Item = (&'a str, Vec<Check>)>) -> Vec<String> {
    let mut warnings = Vec::new();
    let mut missing: Vec<(Vec<&str>, Vec<&str>)> = Vec::new();
    for (node, checks) in nodes {
        warnings.extend(
            failures(node, &checks)
                .into_iter()
                .map(|f| format!("{f} (preflight will halt its environment)")),
        );
        let absent: Vec<&str> = EXPECTED
            .into_iter()
            .filter(|name| !checks.iter().any(|c| c.name == *name))
            .collect();
        if absent.is_empty() {
            continue;
        }
        match missing.iter_mut().find(|(set, _)| *set == absent) {
            Some((_, nodes)) => nodes.push(node),
            None => missing.push((absent, vec![node])),
        }
    }
    for (absent, nodes) in missing {
        warnings.push(format!(
            "checks not reported by {}: {} (not in their facts)",
            nodes.join(", "),
            absent.join(", ")
        ));
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, passed: bool, detail: &str) -> Check {
        Check {
            name: name.into(),
            passed,
            detail: detail.into(),
        }
    }

    #[test]
    fn failed_checks_halt_and_missing_ones_are_warned_about() {
        let all_ok: Vec<Check> = EXPECTED.iter().map(|n| check(n, true, "")).collect();
        assert!(failures("n1", &all_ok).is_empty());
        assert!(plan_warnings([("n1", all_ok.clone())]).is_empty());

        let mut some = vec![check(
            "reboot_pending",
            false,
            "a restart is pending; restart the server before the upgrade",
        )];
        some.push(check("msdtc", true, "running"));
        assert_eq!(
            failures("n1", &some),
            [
                "n1: check reboot_pending failed: a restart is pending; restart the server before the upgrade"
            ]
        );
        assert_eq!(
            plan_warnings([
                ("n1", some),
                ("n2", Vec::new()),
                ("n3", all_ok),
                ("n4", Vec::new())
            ]),
            [
                "n1: check reboot_pending failed: a restart is pending; restart the server before the upgrade (preflight will halt its environment)",
                "checks not reported by n1: local_admin, sso_admin, backup_space, entsso (not in their facts)",
                "checks not reported by n2, n4: local_admin, sso_admin, reboot_pending, backup_space, msdtc, entsso (not in their facts)",
            ]
        );
    }
}
