//! Planning (SPEC §5): inventory + live facts → the ordered steps of a workflow, and the plan's hash.
//! Pure: the caller supplies the versions the nodes reported.
//!
//! **upgrade**, per environment, in file order: `preflight` → `backup-database` → `backup-secret` →
//! `upgrade-master` → `verify-master` → for each member `upgrade` → `verify` → `gate`.
//! A node whose facts already show the target version is planned `already-current` (invariant 6).
//! The master is verified even when already current: members never start on an unverified master.
//!
//! **migrate**, on one environment's master secret server: `backup-security-data` →
//! `export-encryption-key` → `install-sso` → `copy-migration-utility` → `run-migration` → `verify`.
//! Every step is in the chain: each starts only once the one before it succeeded.

use std::collections::HashMap;
use std::fmt;

use sha2::{Digest, Sha256};

use crate::domain::{EnvName, NodeName};
use crate::inventory::{Gate, Inventory};

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
    RunMigration,
    VerifyMigration,
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
        }
    }

    /// Steps run by an agent (the others run in the coordinator).
    pub fn on_agent(self) -> bool {
        !matches!(
            self,
            StepKind::Preflight | StepKind::BackupDatabase | StepKind::Gate
        )
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

    pub fn is_member_step(self) -> bool {
        matches!(self, StepKind::UpgradeMember | StepKind::VerifyMember)
    }
}

/// What the plan expects of a step before the run starts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Expected {
    Run,
    AlreadyCurrent,
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
    pub target_version: String,
    pub installer: String,
    pub max_parallel: u32,
    pub max_failures: u32,
    pub master_only: bool,
    pub environments: Vec<EnvPlan>,
    pub steps: Vec<PlannedStep>,
    pub warnings: Vec<String>,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("environment {0:?} is not in the inventory")]
    UnknownEnvironment(String),
    #[error("--max-parallel must be at least 1")]
    ZeroParallel,
    #[error("migrate runs on exactly one environment: --env E")]
    MigrateOneEnvironment,
}

/// The version each node reported; a node missing from the map has not reported (not attached).
pub type Versions = HashMap<NodeName, Option<String>>;

pub fn plan(
    inventory: &Inventory,
    selection: &Selection,
    versions: &Versions,
) -> Result<Plan, PlanError> {
    match selection.workflow {
        Workflow::Upgrade => upgrade_plan(inventory, selection, versions),
        Workflow::Migrate => match selection.environments.as_slice() {
            [env] => migrate_plan(inventory, env, versions),
            _ => Err(PlanError::MigrateOneEnvironment),
        },
    }
}

fn upgrade_plan(
    inventory: &Inventory,
    selection: &Selection,
    versions: &Versions,
) -> Result<Plan, PlanError> {
    for name in &selection.environments {
        if !inventory.environments.iter().any(|e| &e.name == name) {
            return Err(PlanError::UnknownEnvironment(name.to_string()));
        }
    }
    let max_parallel = selection
        .max_parallel
        .unwrap_or(inventory.policy.max_parallel);
    if max_parallel == 0 {
        return Err(PlanError::ZeroParallel);
    }
    let target = &inventory.upgrade.target_version;
    let mut warnings = Vec::new();
    let mut environments = Vec::new();
    let mut steps: Vec<PlannedStep> = Vec::new();
    let selected = inventory
        .environments
        .iter()
        .filter(|e| selection.environments.is_empty() || selection.environments.contains(&e.name));
    for env in selected {
        let env_index = environments.len();
        environments.push(EnvPlan {
            name: env.name.clone(),
            master: env.master.clone(),
            members: env.members.clone(),
            gate: env.gate.clone(),
        });
        let current = |node: &NodeName| match versions.get(node) {
            Some(Some(v)) => Some(v == target),
            Some(None) => Some(false),
            None => None,
        };
        for node in env.nodes().map(|(n, _)| n) {
            if current(node).is_none() {
                warnings.push(format!(
                    "{node} ({}) has not reported its version (not attached): planned as needing the upgrade",
                    env.name
                ));
            }
        }
        let mut push = |node: Option<&NodeName>, kind, batch, expected: Expected, note: String| {
            steps.push(PlannedStep {
                index: steps.len(),
                env: env_index,
                node: node.cloned(),
                kind,
                batch,
                expected,
                note,
            });
        };
        let members_to_upgrade: Vec<&NodeName> = if selection.master_only {
            Vec::new()
        } else {
            env.members
                .iter()
                .filter(|m| current(m) != Some(true))
                .collect()
        };
        let master_current = current(&env.master) == Some(true);
        let nothing_to_install = master_current && members_to_upgrade.is_empty();

        push(None, StepKind::Preflight, 0, Expected::Run, String::new());
        let (db, db_note) = match (&env.sso_database, nothing_to_install) {
            (_, true) => (
                Expected::Skipped("every node is already on the target version".into()),
                String::new(),
            ),
            (None, false) => (
                Expected::Skipped("no sso_database configured".into()),
                String::new(),
            ),
            (Some(db), false) => (
                Expected::Run,
                format!(
                    "{} on {}:{} to {}",
                    db.database, db.server, db.port, env.backup_dir
                ),
            ),
        };
        push(None, StepKind::BackupDatabase, 0, db, db_note);
        let secret = if nothing_to_install {
            Expected::Skipped("every node is already on the target version".into())
        } else {
            Expected::Run
        };
        push(
            Some(&env.master),
            StepKind::BackupSecret,
            0,
            secret,
            String::new(),
        );
        let upgrade = if master_current {
            Expected::AlreadyCurrent
        } else {
            Expected::Run
        };
        push(
            Some(&env.master),
            StepKind::UpgradeMaster,
            0,
            upgrade,
            String::new(),
        );
        push(
            Some(&env.master),
            StepKind::VerifyMaster,
            0,
            Expected::Run,
            format!("version {target}"),
        );
        let mut position = 0u32;
        for member in &env.members {
            let (expected, batch) = if selection.master_only {
                (Expected::Skipped("--master-only".into()), 0)
            } else if current(member) == Some(true) {
                (Expected::AlreadyCurrent, 0)
            } else {
                position += 1;
                (Expected::Run, position.div_ceil(max_parallel))
            };
            push(
                Some(member),
                StepKind::UpgradeMember,
                batch,
                expected.clone(),
                String::new(),
            );
            push(
                Some(member),
                StepKind::VerifyMember,
                batch,
                expected,
                String::new(),
            );
        }
        push(None, StepKind::Gate, 0, Expected::Run, env.gate.to_string());
    }
    let mut plan = Plan {
        workflow: Workflow::Upgrade,
        target_version: target.clone(),
        installer: inventory.upgrade.installer.clone(),
        max_parallel,
        max_failures: selection
            .max_failures
            .unwrap_or(inventory.policy.max_failures),
        master_only: selection.master_only,
        environments,
        steps,
        warnings,
        hash: String::new(),
    };
    plan.hash = plan_hash(&plan, versions);
    Ok(plan)
}

/// The migrate workflow on environment `env`: every step on its master secret server, in order.
/// ESSO is installed there (`install-sso`) unless its facts already show the target version; the
/// other steps always run (the migration is why the run exists). The environment's install mode
/// applies to `install-sso` as to an upgrade.
pub fn migrate_plan(
    inventory: &Inventory,
    env: &EnvName,
    versions: &Versions,
) -> Result<Plan, PlanError> {
    let Some(e) = inventory.environments.iter().find(|e| &e.name == env) else {
        return Err(PlanError::UnknownEnvironment(env.to_string()));
    };
    let target = &inventory.upgrade.target_version;
    let mut warnings = Vec::new();
    let master_version = versions.get(&e.master);
    if master_version.is_none() {
        warnings.push(format!(
            "{} ({}) has not reported its version (not attached): planned as needing ESSO installed",
            e.master, e.name
        ));
    }
    let install = if master_version == Some(&Some(target.clone())) {
        Expected::AlreadyCurrent
    } else {
        Expected::Run
    };
    let steps = [
        (
            StepKind::BackupSecurityData,
            Expected::Run,
            "the existing host security data",
        ),
        (
            StepKind::ExportEncryptionKey,
            Expected::Run,
            "udbkey /showkey",
        ),
        (StepKind::InstallSso, install, ""),
        (
            StepKind::CopyMigrationUtility,
            Expected::Run,
            "hissomig to the master secret server",
        ),
        (
            StepKind::RunMigration,
            Expected::Run,
            "hissomig -export, then -import",
        ),
        (StepKind::VerifyMigration, Expected::Run, ""),
    ]
    .into_iter()
    .enumerate()
    .map(|(index, (kind, expected, note))| PlannedStep {
        index,
        env: 0,
        node: Some(e.master.clone()),
        kind,
        batch: 0,
        expected,
        note: if kind == StepKind::VerifyMigration {
            format!("version {target}")
        } else {
            note.to_string()
        },
    })
    .collect();
    let mut plan = Plan {
        workflow: Workflow::Migrate,
        target_version: target.clone(),
        installer: inventory.upgrade.installer.clone(),
        max_parallel: 1,
        max_failures: 0,
        master_only: true,
        environments: vec![EnvPlan {
            name: e.name.clone(),
            master: e.master.clone(),
            members: Vec::new(),
            gate: Gate::Auto,
        }],
        steps,
        warnings,
        hash: String::new(),
    };
    plan.hash = plan_hash(&plan, versions);
    Ok(plan)
}

/// SHA-256 over a canonical text of the plan: steps, nodes, versions, installer, policy. Shown as 16
/// hex digits, enough to tell any drift from the plan an operator reviewed.
fn plan_hash(plan: &Plan, versions: &Versions) -> String {
    let mut canonical = match plan.workflow {
        Workflow::Upgrade => String::new(),
        Workflow::Migrate => "workflow=migrate\n".to_string(),
    };
    canonical += &format!(
        "ssofleet-plan-v1\ntarget={}\ninstaller={}\nmax_parallel={}\nmax_failures={}\n",
        plan.target_version, plan.installer, plan.max_parallel, plan.max_failures
    );
    for env in &plan.environments {
        canonical.push_str(&format!("env={} gate={}\n", env.name, env.gate));
    }
    for step in &plan.steps {
        let node = step.node.as_ref().map_or("-", NodeName::as_str);
        let version = step
            .node
            .as_ref()
            .map(|n| match versions.get(n) {
                Some(Some(v)) => v.as_str(),
                Some(None) => "none",
                None => "unknown",
            })
            .unwrap_or("-");
        canonical.push_str(&format!(
            "{} {} {} {} {} {}\n",
            plan.environments[step.env].name,
            node,
            step.kind.name(),
            step.batch,
            step.expected,
            version
        ));
    }
    let digest = Sha256::digest(canonical.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::Run => f.write_str("run"),
            Expected::AlreadyCurrent => f.write_str("already-current"),
            Expected::Skipped(why) => write!(f, "skipped ({why})"),
        }
    }
}

#[cfg(test)]
mod tests;
