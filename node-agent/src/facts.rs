//! The `facts` action: what this node is (ESSO version, ENTSSO service state, products present).
//!
//! With `[actions.facts]` configured, the command's `::output::` lines are the facts. Otherwise the
//! built-in implementation runs: on Windows it reads the registry and the service controller;
//! elsewhere ESSO cannot be installed, so it reports the host with no ESSO (unless `[tools]` names
//! stand-ins for them). Preflight fitness checks come as `::output:: check.<name>=ok` or
//! `check.<name>=failed: <what to do>`; a check not reported stays absent ("not reported").

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use fleet_proto::pb;

use crate::action::{self, Request};
use crate::catalogue::ActionName;
use crate::config::AgentConfig;

/// How long the facts may take when the configuration sets no shorter timeout.
const TIMEOUT: Duration = Duration::from_secs(120);

/// Collects the facts; a failure is reported inside the facts (`error`), never hides the node.
pub async fn collect(config: &AgentConfig, params: &BTreeMap<String, String>) -> pb::Facts {
    let configured = config.actions.contains_key(&ActionName::Facts);
    let mut facts = if configured || builtin_facts_here(config) {
        let request = Request {
            action: ActionName::Facts,
            params,
            stdin_secret: None,
            timeout: TIMEOUT,
        };
        match action::run_quietly(config, request).await {
            Ok(outcome) => {
                let mut facts = from_outputs(&outcome.outputs);
                if !outcome.succeeded() {
                    let what = if configured {
                        "the facts command"
                    } else {
                        "the built-in facts"
                    };
                    facts.error = outcome.failure(what);
                } else if configured && let Err(problem) = facts_problem(&outcome.outputs) {
                    facts.error = problem;
                }
                facts
            }
            Err(e) => error_facts(e),
        }
    } else {
        // ESSO exists only on Windows, and no [tools] stand in for Windows here: no ESSO.
        pb::Facts {
            service: pb::ServiceState::NotInstalled as i32,
            ..Default::default()
        }
    };
    facts.overridden_actions = config.actions.keys().map(|a| a.to_string()).collect();
    // The installer this run would install: the agent reads it itself (invariant 8: one installer).
    if let Some(installer) = params.get("installer").filter(|i| !i.is_empty()) {
        match crate::hashing::sha256_file(std::path::Path::new(installer)).await {
            Ok((_, sha256)) => facts.installer_sha256 = Some(sha256),
            Err(e) => {
                let problem = format!("installer {installer}: {e}");
                facts.error = if facts.error.is_empty() {
                    problem
                } else {
                    format!("{}; {problem}", facts.error)
                };
            }
        }
    }
    if facts.hostname.is_empty() {
        facts.hostname = gethostname::gethostname().to_string_lossy().into_owned();
    }
    if facts.os.is_empty() {
        facts.os = std::env::consts::OS.to_string();
    }
    facts.collected_at_unix_ms = fleet_proto::unix_ms(SystemTime::now());
    facts
}

/// The facts as an operator reads them (`fleet-agent --facts`): one `key: value` line each.
pub fn describe(facts: &pb::Facts) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: &str| out.push_str(&format!("{key}: {value}\n"));
    line(
        "esso_version",
        facts.esso_version.as_deref().unwrap_or("(not installed)"),
    );
    let service = facts.service().as_str_name();
    line(
        "service",
        &service
            .trim_start_matches("SERVICE_STATE_")
            .to_ascii_lowercase()
            .replace('_', "-"),
    );
    line("products", &facts.products.join(","));
    line(
        "master_secret_server",
        &facts.master_secret_server.to_string(),
    );
    line("hostname", &facts.hostname);
    line("os", &facts.os);
    line("overridden_actions", &facts.overridden_actions.join(","));
    for check in &facts.checks {
        let verdict = if check.passed { "ok" } else { "FAILED" };
        line(
            &format!("check.{}", check.name),
            format!("{verdict} {}", check.detail).trim_end(),
        );
    }
    for (key, value) in &facts.extra {
        line(key, value);
    }
    if !facts.error.is_empty() {
        line("error", &facts.error);
    }
    out
}

fn error_facts(error: String) -> pb::Facts {
    pb::Facts {
        error,
        ..Default::default()
    }
}

/// A facts command must at least say whether ESSO is there (`version=`, empty when absent).
fn facts_problem(outputs: &BTreeMap<String, String>) -> Result<(), String> {
    if outputs.contains_key("version") {
        Ok(())
    } else {
        Err("the facts command reported no `::output:: version=` line".into())
    }
}

/// Maps the `::output::` results of a facts command (SPEC §6) to facts.
pub fn from_outputs(outputs: &BTreeMap<String, String>) -> pb::Facts {
    let mut facts = pb::Facts::default();
    for (key, value) in outputs {
        let value = value.trim();
        match key.as_str() {
            "version" => facts.esso_version = (!value.is_empty()).then(|| value.to_string()),
            "service" => {
                facts.service = match value.to_ascii_lowercase().as_str() {
                    "running" => pb::ServiceState::Running,
                    "stopped" => pb::ServiceState::Stopped,
                    "not-installed" | "missing" => pb::ServiceState::NotInstalled,
                    "pending" | "start-pending" | "stop-pending" => pb::ServiceState::Pending,
                    _ => pb::ServiceState::Unspecified,
                } as i32;
            }
            "products" => {
                facts.products = value
                    .split(',')
                    .map(|p| p.trim().to_ascii_lowercase())
                    .filter(|p| !p.is_empty())
                    .collect();
            }
            "install_path" => facts.install_path = value.to_string(),
            "master_secret_server" => facts.master_secret_server = is_true(value),
            "reboot_pending" => facts.reboot_pending = is_true(value),
            "installer_sha256" => facts.installer_sha256 = Some(value.to_ascii_lowercase()),
            "hostname" => facts.hostname = value.to_string(),
            "os" => facts.os = value.to_string(),
            _ => match key.strip_prefix("check.") {
                Some(name) if !name.is_empty() => facts.checks.push(check(name, value)),
                _ => {
                    facts.extra.insert(key.clone(), value.to_string());
                }
            },
        }
    }
    facts
}

/// `ok [detail]`, or `failed: <what to do>` (anything not `ok` fails).
fn check(name: &str, value: &str) -> pb::FitnessCheck {
    let (word, detail) = match value.split_once([':', ' ']) {
        Some((word, detail)) => (word, detail.trim()),
        None => (value, ""),
    };
    pb::FitnessCheck {
        name: name.to_string(),
        passed: word.eq_ignore_ascii_case("ok"),
        detail: if word.eq_ignore_ascii_case("ok") || word.eq_ignore_ascii_case("failed") {
            detail.to_string()
        } else {
            value.to_string()
        },
    }
}

fn is_true(value: &str) -> bool {
    matches!(value.to_ascii_lowercase().as_str(), "true" | "yes" | "1")
}

/// Whether the built-in facts can run: on Windows, or where `[tools]` name stand-ins for the
/// registry and the service controller.
fn builtin_facts_here(config: &AgentConfig) -> bool {
    cfg!(windows) || config.tools.sc.is_some() || config.tools.reg.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_outputs_to_facts() {
        let outputs: BTreeMap<String, String> = [
            ("version", "3.0.7"),
            ("service", "running"),
            ("products", "BizTalk, his"),
            ("master_secret_server", "true"),
            ("site", "berlin"),
            ("check.msdtc", "ok running"),
            (
                "check.reboot_pending",
                "failed: Windows Update: RebootRequired; restart the server",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let facts = from_outputs(&outputs);
        assert_eq!(facts.esso_version.as_deref(), Some("3.0.7"));
        assert_eq!(facts.service, pb::ServiceState::Running as i32);
        assert_eq!(facts.products, ["biztalk", "his"]);
        assert!(facts.master_secret_server);
        assert_eq!(facts.extra.get("site").map(String::as_str), Some("berlin"));
        assert_eq!(facts.extra.len(), 1);
        let checks: Vec<(&str, bool, &str)> = facts
            .checks
            .iter()
            .map(|c| (c.name.as_str(), c.passed, c.detail.as_str()))
            .collect();
        assert_eq!(
            checks,
            [
                ("msdtc", true, "running"),
                (
                    "reboot_pending",
                    false,
                    "Windows Update: RebootRequired; restart the server"
                )
            ]
        );
        assert!(facts_problem(&outputs).is_ok());

        let absent = from_outputs(&[("version".to_string(), String::new())].into());
        assert_eq!(absent.esso_version, None);
        assert!(facts_problem(&BTreeMap::new()).is_err());
    }
}
