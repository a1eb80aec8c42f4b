//! The `facts` action: what this node is (ESSO version, ENTSSO service state, products present).
//!
//! With `[actions.facts]` configured, the command's `::output::` lines are the facts. Otherwise the
//! built-in implementation runs: on Windows it drives the real tools (service query, registry);
//! elsewhere ESSO cannot be installed, so it reports the host with no ESSO (unless `[tools]` names
//! stand-ins for the Windows tools).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use fleet_proto::pb;
use tokio::sync::mpsc;

use crate::catalogue::{ActionName, expand};
use crate::config::AgentConfig;
use crate::runner::{self, CommandSpec};

/// How long the facts command may take when its configuration sets no timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Collects the facts; a failure is reported inside the facts (`error`), never hides the node.
pub async fn collect(config: &AgentConfig, params: &BTreeMap<String, String>) -> pb::Facts {
    let mut facts = match config.actions.get(&ActionName::Facts) {
        Some(action) => {
            let args: Result<Vec<String>, _> =
                action.args.iter().map(|a| expand(a, params)).collect();
            match args {
                Ok(args) => {
                    let spec = CommandSpec {
                        program: action.program.clone(),
                        args,
                        env: action.env.clone(),
                        timeout: action.timeout.unwrap_or(DEFAULT_TIMEOUT),
                        stdin_secret: None,
                    };
                    from_command(&spec).await
                }
                Err(e) => error_facts(format!("facts: {e}")),
            }
        }
        None => built_in(config).await,
    };
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

fn error_facts(error: String) -> pb::Facts {
    pb::Facts {
        error,
        ..Default::default()
    }
}

async fn from_command(spec: &CommandSpec) -> pb::Facts {
    // Facts are read once per attach; their progress and log lines are only worth a debug line.
    let (tx, mut rx) = mpsc::channel(64);
    let drain = tokio::spawn(async move {
        while let Some(report) = rx.recv().await {
            tracing::debug!(?report, "facts command output");
        }
    });
    let result = runner::run(spec, tx).await;
    let _ = drain.await;
    match result {
        Ok(outcome) if outcome.succeeded() => {
            let mut facts = from_outputs(&outcome.outputs);
            if let Err(problem) = &facts_problem(&outcome.outputs) {
                facts.error = problem.clone();
            }
            facts
        }
        Ok(outcome) => error_facts(outcome.failure("the facts command")),
        Err(e) => error_facts(e.to_string()),
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
            _ => {
                facts.extra.insert(key.clone(), value.to_string());
            }
        }
    }
    facts
}

fn is_true(value: &str) -> bool {
    matches!(value.to_ascii_lowercase().as_str(), "true" | "yes" | "1")
}

/// The built-in facts: the Windows tools (service and registry queries). Where none is there (ESSO
/// exists only on Windows, and no `[tools]` stand in for them), the host has no ESSO.
async fn built_in(config: &AgentConfig) -> pb::Facts {
    if cfg!(windows) || config.tools.sc.is_some() || config.tools.reg.is_some() {
        crate::builtin::facts(&config.tools, &config.state_dir).await
    } else {
        pb::Facts {
            esso_version: None,
            service: pb::ServiceState::NotInstalled as i32,
            ..Default::default()
        }
    }
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
        assert!(facts_problem(&outputs).is_ok());

        let absent = from_outputs(&[("version".to_string(), String::new())].into());
        assert_eq!(absent.esso_version, None);
        assert!(facts_problem(&BTreeMap::new()).is_err());
    }
}
