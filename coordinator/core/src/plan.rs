//! Planning (SPEC §5): inventory + live facts → the ordered steps of a workflow, and the plan's hash.
//! Pure: the caller supplies what the nodes reported (versions, install overrides).
//!
//! **upgrade**, per environment, in file order: `preflight` → `backup-database` → `backup-secret` →
//! `upgrade-master` → `verify-master` → for each member `upgrade` → `verify` → `gate`.
//! Versions compare as numbers (invariant 6): a node on the target is planned `already-current`, a
//! node on a newer version `newer` (never installed on, never downgraded). The master is verified even
//! then (a newer master is accepted as such): members never start on an unverified master.
//! Each install step's mode (attended or unattended) is decided here, once ([`install`]).
//!
//! **migrate**, on one environment's master secret server ([`migrate`]): `backup-security-data` →
//! `export-encryption-key` → `install-sso` → `copy-migration-utility` → (`stop-host-account-cache`)
//! → `export-host-security` → `review-export` → `import-host-security` → `verify`. Every step is in
//! the chain: each starts only once the one before it succeeded; the operator's waits pass only by
//! `fleetctl approve`.

use std::collections::HashMap;
use std::fmt;

use crate::version::Version;

use crate::domain::{EnvName, NodeName, Role};
use crate::inventory::Gate;

mod build;
pub mod install;
mod migrate;

pub use build::plan;
pub use install::StepInstall;
pub use migrate::migrate_plan;

/// Which environments a run covers, and its policy overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub workflow: Workflow,
    /// Empty: every environment.
    pub environments: Vec<EnvName>,
    pub master_only: bool,
    pub max_parallel: Option<u32>,
    pub max_failures: Option<u32>,
}

/// The workflows of SPEC §5.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum Workflow {
    #[default]
    Upgrade,
    Migrate,
}

impl Workflow {
    pub fn as_str(self) -> &'static str {
        match self {
            Workflow::Upgrade => "upgrade",
            Workflow::Migrate => "migrate",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum StepKind {
    Preflight,
    BackupDatabase,
    BackupSecret,
    UpgradeMaster,
    VerifyMaster,
    UpgradeMember,
    VerifyMember,
    Gate,
    // The migrate workflow.
    BackupSecurityData,
    ExportEncryptionKey,
    InstallSso,
    CopyMigrationUtility,
    /// Export and import in one step: plans stored before the review between them.
    RunMigration,
    VerifyMigration,
    /// The operator stops the Host Account Cache service on a host security server the run does not
    /// manage (a wait, like a manual gate).
    StopHostAccountCache,
    /// `hissomig -export` on the master (`run_migration`, phase `export`).
    ExportHostSecurity,
    /// The operator reviews the export and resolves conflicts before the import (a wait).
    ReviewExport,
    /// `hissomig -import` on the master (`run_migration`, phase `import`).
    ImportHostSecurity,
}

impl StepKind {
    /// The step's name, as shown to operators and stored.
    pub fn name(self) -> &'static str {
        match self {
            StepKind::Preflight => "preflight",
            StepKind::BackupDatabase => "backup-database",
            StepKind::BackupSecret => "backup-secret",
            StepKind::UpgradeMaster => "upgrade-master",
            StepKind::VerifyMaster => "verify-master",
            StepKind::UpgradeMember => "upgrade",
            StepKind::VerifyMember => "verify",
            StepKind::Gate => "gate",
            StepKind::BackupSecurityData => "backup-security-data",
            StepKind::ExportEncryptionKey => "export-encryption-key",
            StepKind::InstallSso => "install-sso",
            StepKind::CopyMigrationUtility => "copy-migration-utility",
            StepKind::RunMigration => "run-migration",
            StepKind::VerifyMigration => "verify",
            StepKind::StopHostAccountCache => "stop-host-account-cache",
            StepKind::ExportHostSecurity => "export-host-security",
            StepKind::ReviewExport => "review-export",
            StepKind::ImportHostSecurity => "import-host-security",
        }
    }

    /// Steps run by an agent (the others run in the coordinator).
    pub fn on_agent(self) -> bool {
        !matches!(
            self,
            StepKind::Preflight | StepKind::BackupDatabase | StepKind::Gate
        ) && !self.awaits_operator()
    }

    /// Coordinator steps that wait for the operator, in the master chain: the run stops there with
    /// what to do, and only `fleetctl approve` passes them.
    pub fn awaits_operator(self) -> bool {
        matches!(
            self,
            StepKind::StopHostAccountCache | StepKind::ReviewExport
        )
    }

    /// The migration's own steps, on the old host security data: they work with
    /// `[environment.migration]` (its backup directory, not the environment's).
    pub fn on_host_security(self) -> bool {
        matches!(
            self,
            StepKind::BackupSecurityData
                | StepKind::ExportEncryptionKey
                | StepKind::CopyMigrationUtility
                | StepKind::RunMigration
                | StepKind::ExportHostSecurity
                | StepKind::ImportHostSecurity
        )
    }

    /// The part of the host security migration a `run_migration` step runs (`None`: both at once).
    pub fn migration_phase(self) -> Option<&'static str> {
        match self {
            StepKind::ExportHostSecurity => Some("export"),
            StepKind::ImportHostSecurity => Some("import"),
            _ => None,
        }
    }

    /// The master chain: run in order, each only once the one before it succeeded; a failure here
    /// halts the environment, and no member starts. Every step of the migrate workflow is in it.
    pub fn in_master_chain(self) -> bool {
        !matches!(
            self,
            StepKind::UpgradeMember | StepKind::VerifyMember | StepKind::Gate
        )
    }

    /// Steps that run the installer (attended installs wait for the operator here).
    pub fn installs(self) -> bool {
        matches!(
            self,
            StepKind::UpgradeMaster | StepKind::UpgradeMember | StepKind::InstallSso
        )
    }

    /// Agent steps that an abort may end while they run (the agent ends their processes). Never
    /// an install, nor the migration utility (its export or import): a program stopped halfway
    /// there leaves the server, or the SSO database, in an unknown state; the run waits for them
    /// instead. The agent keeps the same rule for its actions (`install_sso`, `run_migration`).
    pub fn cancellable(self) -> bool {
        self.on_agent()
            && !self.installs()
            && self != StepKind::RunMigration
            && self.migration_phase().is_none()
    }

    pub fn is_member_step(self) -> bool {
        matches!(self, StepKind::UpgradeMember | StepKind::VerifyMember)
    }

    /// The role of the node an agent step runs on (`None` for the coordinator's own steps): every
    /// agent step but a member's runs on the master secret server.
    pub fn role(self) -> Option<Role> {
        match self {
            _ if !self.on_agent() => None,
            StepKind::UpgradeMember | StepKind::VerifyMember => Some(Role::Member),
            _ => Some(Role::Master),
        }
    }
}

/// What the plan expects of a step before the run starts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Expected {
    Run,
    AlreadyCurrent,
    /// The node is on a newer version than the target: never installed on, never downgraded.
    Newer,
    Skipped(String),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlannedStep {
    pub index: usize,
    /// Position of the environment in the plan.
    pub env: usize,
    pub node: Option<NodeName>,
    pub kind: StepKind,
    /// Nominal member batch (1-based), 0 outside the members phase.
    pub batch: u32,
    pub expected: Expected,
    pub note: String,
    /// Install steps that run: how they install, and why (plans stored before had none).
    #[serde(default)]
    pub install: Option<StepInstall>,
    /// A verification that accepts a version above the target: the master is already newer.
    #[serde(default)]
    pub accept_newer: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EnvPlan {
    pub name: EnvName,
    pub master: NodeName,
    pub members: Vec<NodeName>,
    pub gate: Gate,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    /// Plans stored before the migrate workflow existed are upgrades.
    #[serde(default)]
    pub workflow: Workflow,
    pub target_version: Version,
    /// The members' installer, and the master's unless `master_installer` is set.
    pub installer: String,
    /// A standalone master secret server's own installer (plans stored before had none).
    #[serde(default)]
    pub master_installer: Option<String>,
    pub max_parallel: u32,
    pub max_failures: u32,
    pub master_only: bool,
    pub environments: Vec<EnvPlan>,
    pub steps: Vec<PlannedStep>,
    pub warnings: Vec<String>,
    pub hash: String,
}

impl Plan {
    /// The installer a node of `role` installs from.
    pub fn installer_for(&self, role: Role) -> &str {
        installer_for(role, &self.installer, self.master_installer.as_deref())
    }
}

/// The installer of a node of `role` (SPEC §4): the master's own `master_installer` where one is set
/// (a standalone master secret server upgrades from `\Platform\SSO\Setup.exe`), else `installer`.
pub fn installer_for<'a>(
    role: Role,
    installer: &'a str,
    master_installer: Option<&'a str>,
) -> &'a str {
    match (role, master_installer) {
        (Role::Master, Some(master)) => master,
        _ => installer,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("environment {0:?} is not in the inventory")]
    UnknownEnvironment(String),
    #[error("--max-parallel must be at least 1")]
    ZeroParallel,
    #[error("migrate runs on exactly one environment: --env E")]
    MigrateOneEnvironment,
    #[error(
        "environment {0:?} has no [environment.migration] in the inventory: add it with source (\"his2000\" or \"sna4\"), host_security_server or host_security_dbfile, and backup_dir before migrating"
    )]
    NoMigration(String),
}

/// What an attached node's facts say, as far as planning needs them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reported {
    /// ESSO's version as the node reported it (`None`: no ESSO there); parsed here, never compared as text.
    pub version: Option<String>,
    /// The node's agent installs with its own `[actions.install_sso]` command.
    pub install_override: bool,
    /// The node's agent configures ESSO with its own `[actions.configure_sso]` command.
    pub configure_override: bool,
}

impl Reported {
    /// A node on `version` ("" for none), without an install override.
    pub fn version(version: &str) -> Self {
        Self {
            version: (!version.is_empty()).then(|| version.to_string()),
            ..Self::default()
        }
    }
}

/// What each node reported; a node missing from the map has not reported (not attached).
pub type Reports = HashMap<NodeName, Reported>;

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::Run => f.write_str("run"),
            Expected::AlreadyCurrent => f.write_str("already-current"),
            Expected::Newer => f.write_str("newer"),
            Expected::Skipped(why) => write!(f, "skipped ({why})"),
        }
    }
}

#[cfg(test)]
mod tests;
