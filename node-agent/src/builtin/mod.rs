//! The built-in Windows implementations of the catalogue's actions (SPEC §6), driving the interfaces
//! Microsoft documents (`../shared/ESSO.md`): the registry and the service controller through their
//! APIs, `ISSOConfigSS` through a PowerShell script shipped inside the agent, `ssomanage.exe`,
//! the product's setup or `msiexec`, `Configuration.exe` / `ConfigurationWizard.exe`, `wevtutil`,
//! `udbkey.exe` and `hissomig.exe`. Each returns one [`runner::Outcome`] that the executor judges
//! exactly like a configured command's; what is right or wrong is decided in `crate::esso`.
//!
//! # Layout
//! - [`tools`]: where the tools are (Windows defaults, `[tools]` in `agent.toml`).
//! - [`commands`]: the command lines, pure.
//! - [`parse`]: reading what ESSO's tools print, pure, tested against `samples/`.
//! - [`system`]: the registry and services (Windows APIs; stand-ins elsewhere).
//! - `scripts`: the PowerShell scripts the agent ships.
//! - `session`: running the tools of one action within the step's deadline.
//! - `inspect`: `facts` and `verify_sso`.
//! - `backup`: `backup_secret`.
//! - `install`: `install_sso` and `configure_sso`.
//! - `migration`: `export_encryption_key`, `copy_migration_utility`, `run_migration`.

mod backup;
pub mod commands;
mod inspect;
mod install;
mod migration;
pub mod parse;
mod scripts;
mod session;
pub mod system;
pub mod tools;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;

pub use install::remove_leftover_secret_files;
pub use tools::{Tool, ToolOverrides, Tools};

use crate::catalogue::ActionName;
use crate::runner::{Outcome, Report};
use session::Session;

/// What a built-in action needs to know about its step.
#[derive(Debug, Clone)]
pub struct Context {
    /// The step's values: the placeholders (`node`, `run_id`, `environment`, `target_version`,
    /// `installer`, `backup_file`, `backup_dir`, `master`) and the built-in parameters the
    /// coordinator or the executor adds (`backup_reminder`, `sso_configure`, `newer_ok`,
    /// `installed_at_unix_ms`, the migration's).
    pub params: BTreeMap<String, String>,
    /// The master secret backup password (backup_secret); only ever written to standard input.
    pub stdin_secret: Option<String>,
    /// The whole action's time limit (every tool it runs shares it).
    pub timeout: Duration,
    /// The agent's state directory (installer logs, the scripts it ships, the local secret backup).
    pub state_dir: PathBuf,
    /// How long verification waits for a STOPPED or START_PENDING ENTSSO to run.
    pub entsso_start_budget: Duration,
    /// What `configure_sso` writes into ESSO's configuration (`[sso]` in agent.toml).
    pub sso: crate::config::SsoSettings,
    /// The agent configures ESSO with its own `[actions.configure_sso]` command (Host Integration
    /// Server's configuration has no built-in).
    pub configure_overridden: bool,
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
        ActionName::Facts => inspect::facts(&mut s).await.map(|()| 0),
        ActionName::VerifySso => inspect::verify(&mut s).await.map(|()| 0),
        ActionName::BackupSecret => backup::backup_secret(&mut s).await.map(|()| 0),
        ActionName::InstallSso => install::install(&mut s).await,
        ActionName::ConfigureSso => install::configure(&mut s).await.map(|()| 0),
        ActionName::ExportEncryptionKey => migration::export_key(&mut s).await.map(|()| 0),
        ActionName::CopyMigrationUtility => migration::copy_utility(&mut s).await.map(|()| 0),
        ActionName::RunMigration => migration::run(&mut s).await.map(|()| 0),
        ActionName::BackupSecurityData => Err(session::Fail::new(format!(
            "{action}: no built-in implementation"
        ))),
    };
    Ok(s.finish(result).await)
}

/// The tools and parameters each action cannot start without.
fn preflight(s: &Session<'_>) -> Result<(), session::Fail> {
    let tools: &[Tool] = match s.action {
        ActionName::Facts | ActionName::InstallSso | ActionName::ConfigureSso => &[],
        ActionName::VerifySso => &[Tool::Ssomanage, Tool::Wevtutil],
        ActionName::BackupSecret => &[Tool::Powershell],
        ActionName::ExportEncryptionKey => &[Tool::Udbkey],
        ActionName::CopyMigrationUtility | ActionName::BackupSecurityData => &[],
        ActionName::RunMigration => &[Tool::Hissomig],
    };
    let reads_the_system = !matches!(
        s.action,
        ActionName::BackupSecret
            | ActionName::ExportEncryptionKey
            | ActionName::CopyMigrationUtility
            | ActionName::BackupSecurityData
    );
    let system_tools = if reads_the_system { system::TOOLS } else { &[] };
    for tool in tools.iter().chain(system_tools) {
        s.tool(*tool)?;
    }
    let params: &[&str] = match s.action {
        ActionName::InstallSso => &["installer", "node", "run_id"],
        ActionName::ConfigureSso => &["installer", "node", "run_id"],
        ActionName::VerifySso => &["master"],
        ActionName::BackupSecret => &["backup_file"],
        _ => &[],
    };
    for param in params {
        s.require_param(param)?;
    }
    Ok(())
}
