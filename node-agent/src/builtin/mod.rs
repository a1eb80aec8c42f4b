//! The built-in Windows implementations of the catalogue's actions (SPEC §6): they drive `sc.exe`,
//! `reg.exe`, `ssoconfig.exe`, `ssomanage.exe`, the product's installer, `udbkey.exe` and
//! `hissomig.exe` with their documented command lines, and return one [`runner::Outcome`] that the
//! executor judges exactly like a configured command's (`outputs` such as `version=`, `service=`,
//! `products=`; exit code 0 on success, the installer's own code for `install_sso`).
//!
//! # Layout
//! - [`tools`]: where the tools are (Windows defaults, `[tools]` in `agent.toml`).
//! - [`commands`]: the command lines and standard input texts, pure.
//! - [`parse`]: reading the tools' output, pure, tested against `samples/`.
//! - `session`: running the tools of one action within the step's deadline.
//! - `esso`: `facts`, `verify_sso`, `backup_secret`, `install_sso`.
//! - `migration`: `export_encryption_key`, `copy_migration_utility`, `run_migration`.

pub mod commands;
mod esso;
mod migration;
pub mod parse;
mod session;
pub mod tools;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fleet_proto::pb;
use tokio::sync::mpsc;

pub use tools::{Tool, ToolOverrides, Tools};

use crate::catalogue::ActionName;
use crate::runner::{Outcome, Report};
use session::Session;

/// What a built-in action needs to know about its step.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The step's placeholder values: `node`, `run_id`, `environment`, `target_version`, `installer`,
    /// `backup_file`, `backup_dir`, and `master` (the inventory's master secret server). Optional
    /// extras read by some actions: `install_features` (install_sso), `media_root`
    /// (copy_migration_utility), `host_security_server` or `host_security_dbfile`, `key_file`,
    /// `migration_log_dir` (export_encryption_key, run_migration).
    pub params: BTreeMap<String, String>,
    /// The master secret backup password (backup_secret); only ever written to standard input.
    pub stdin_secret: Option<String>,
    /// The whole action's time limit (every tool it runs shares it).
    pub timeout: Duration,
    /// The agent's state directory (installer logs).
    pub state_dir: PathBuf,
}

/// Runs the built-in `action`. Progress and the tools' output go to `reports` as they happen.
/// `Err` is a reason the action could not start at all (a tool this platform lacks, a missing
/// parameter, an action with no built-in): the step fails with it. Otherwise the outcome says
/// how it went, with a failure's reason as the last line of its standard error tail.
pub async fn run(
    action: ActionName,
    tools: &Tools,
    ctx: &Context,
    reports: mpsc::Sender<Report>,
) -> Result<Outcome, String> {
    if action == ActionName::BackupSecurityData {
        return Err(format!(
            "backup_security_data has no built-in implementation: the docs defer to the old product \
             (the SNAUDB database on Host Integration Server 2000, the host security .dbs file on SNA \
             Server 4.0); configure [actions.{action}] in agent.toml"
        ));
    }
    let mut s = Session::new(action, tools, ctx, reports);
    // Tools and parameters first: what cannot start is an `Err`, not a half-run.
    if let Err(fail) = preflight(&s) {
        return Err(fail.message);
    }
    let result = match action {
        ActionName::Facts => esso::facts(&mut s).await.map(|()| 0),
        ActionName::VerifySso => esso::verify(&mut s).await.map(|()| 0),
        ActionName::BackupSecret => esso::backup_secret(&mut s).await.map(|()| 0),
        ActionName::InstallSso => esso::install(&mut s).await,
        ActionName::ExportEncryptionKey => migration::export_key(&mut s).await.map(|()| 0),
        ActionName::CopyMigrationUtility => migration::copy_utility(&mut s).await.map(|()| 0),
        ActionName::RunMigration => migration::run(&mut s).await.map(|()| 0),
        ActionName::BackupSecurityData => unreachable_action(action),
    };
    Ok(s.finish(result).await)
}

fn unreachable_action(action: ActionName) -> Result<i32, session::Fail> {
    Err(session::Fail::new(format!(
        "{action}: no built-in implementation"
    )))
}

/// The tools and parameters each action cannot start without.
fn preflight(s: &Session<'_>) -> Result<(), session::Fail> {
    let tools: &[Tool] = match s.action {
        ActionName::Facts | ActionName::InstallSso => &[Tool::Sc, Tool::Reg],
        ActionName::VerifySso => &[Tool::Sc, Tool::Reg, Tool::Ssomanage],
        ActionName::BackupSecret => &[Tool::Ssoconfig],
        ActionName::ExportEncryptionKey => &[Tool::Udbkey],
        ActionName::CopyMigrationUtility | ActionName::BackupSecurityData => &[],
        ActionName::RunMigration => &[Tool::Sc, Tool::Hissomig],
    };
    for tool in tools {
        s.tool(*tool)?;
    }
    let params: &[&str] = match s.action {
        ActionName::InstallSso => &["installer", "node", "run_id"],
        ActionName::VerifySso => &["master"],
        _ => &[],
    };
    for param in params {
        s.require_param(param)?;
    }
    Ok(())
}

/// The facts the `facts` action reads, for `facts.rs` (the same outputs mapped by
/// `facts::from_outputs`); a failure is reported in the facts' `error`, never hides the node.
pub async fn facts(tools: &Tools, state_dir: &Path) -> pb::Facts {
    let ctx = Context {
        timeout: Duration::from_secs(120),
        state_dir: state_dir.to_path_buf(),
        ..Default::default()
    };
    let (tx, mut rx) = mpsc::channel(64);
    let drain = tokio::spawn(async move {
        while let Some(report) = rx.recv().await {
            tracing::debug!(?report, "built-in facts");
        }
    });
    let result = run(ActionName::Facts, tools, &ctx, tx).await;
    let _ = drain.await;
    match result {
        Ok(outcome) if outcome.succeeded() => crate::facts::from_outputs(&outcome.outputs),
        Ok(outcome) => {
            let mut facts = crate::facts::from_outputs(&outcome.outputs);
            facts.error = outcome.failure("the built-in facts");
            facts
        }
        Err(error) => pb::Facts {
            error,
            ..Default::default()
        },
    }
}

/// `YYYY-MM-DD` of `at` (UTC), for the backup's password reminder.
fn date_of(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .chars()
        .take(10)
        .collect()
}
