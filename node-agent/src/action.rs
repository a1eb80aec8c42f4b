//! Running one action of the catalogue, in one place for the executor (steps) and the facts: the
//! agent's own configured command for it (`[actions.<name>]`, its argument templates expanded with
//! the step's values), or else the built-in implementation (`builtin`). Either way the result is one
//! [`Outcome`], judged by the same rules (`esso`).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::builtin;
use crate::catalogue::{ActionName, expand};
use crate::config::AgentConfig;
use crate::runner::{self, CommandSpec, Outcome, Report};

/// One action to run.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub action: ActionName,
    pub params: &'a BTreeMap<String, String>,
    /// A secret for the program's standard input (the backup password); never an argument.
    pub stdin_secret: Option<String>,
    /// The most the action may take (a configured `timeout` may only shorten it).
    pub timeout: Duration,
}

/// Runs the request. Progress and output go to `reports` as they happen. `Err` is a reason the action
/// could not start at all (a placeholder without a value, a tool this platform lacks).
pub async fn run(
    config: &AgentConfig,
    request: Request<'_>,
    reports: mpsc::Sender<Report>,
) -> Result<Outcome, String> {
    let action = request.action;
    match config.actions.get(&action) {
        Some(configured) => {
            let args: Result<Vec<String>, _> = configured
                .args
                .iter()
                .map(|t| expand(t, request.params))
                .collect();
            let spec = CommandSpec {
                program: configured.program.clone(),
                args: args.map_err(|e| format!("{action}: {e}"))?,
                env: env_of(request.params, &configured.env),
                timeout: configured
                    .timeout
                    .map_or(request.timeout, |t| t.min(request.timeout)),
                stdin_secret: request.stdin_secret,
                outlives_agent: crate::cancel::never_stopped(action),
                output_secret: false,
            };
            runner::run(&spec, reports).await.map_err(|e| e.to_string())
        }
        None => {
            let ctx = builtin::Context {
                params: request.params.clone(),
                stdin_secret: request.stdin_secret,
                timeout: request.timeout,
                state_dir: config.state_dir.clone(),
                entsso_start_budget: config.entsso_start_budget,
                sso: config.sso.clone(),
                configure_overridden: config.actions.contains_key(&ActionName::ConfigureSso),
            };
            builtin::run(action, &config.tools, &ctx, reports).await
        }
    }
}

/// A configured command's environment: every value of the step as `SSOFLEET_<NAME>` (the placeholders
/// and the built-in parameters, e.g. `SSOFLEET_MIGRATION_PHASE`, `SSOFLEET_SSO_CONFIGURE`: what a
/// customer's command needs to do what the built-in would), then the action's own `env`, which wins.
/// Values only, never a secret: the password reaches a program on its standard input alone.
fn env_of(
    params: &BTreeMap<String, String>,
    configured: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    params
        .iter()
        .map(|(k, v)| (format!("SSOFLEET_{}", k.to_ascii_uppercase()), v.clone()))
        .chain(configured.iter().map(|(k, v)| (k.clone(), v.clone())))
        .collect()
}

/// Runs the request with its reports only logged at debug level (the facts, read at every attach).
pub async fn run_quietly(config: &AgentConfig, request: Request<'_>) -> Result<Outcome, String> {
    let (tx, mut rx) = mpsc::channel(64);
    let drain = tokio::spawn(async move {
        while let Some(report) = rx.recv().await {
            tracing::debug!(?report, "action output");
        }
    });
    let result = run(config, request, tx).await;
    let _ = drain.await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_command_sees_the_steps_values_and_its_own_env_wins() {
        let params: BTreeMap<String, String> = [("migration_phase", "export"), ("node", "m1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let configured: BTreeMap<String, String> = [("SSOFLEET_NODE", "mine"), ("X", "1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = env_of(&params, &configured);
        assert_eq!(env["SSOFLEET_MIGRATION_PHASE"], "export");
        assert_eq!(env["SSOFLEET_NODE"], "mine");
        assert_eq!(env["X"], "1");
        assert_eq!(env.len(), 3);
    }
}
