//! The migrate workflow's plan (SPEC §5, ESSO.md "Migration from Host Integration Server 2000 / SNA
//! Server 4.0 host security"): every step on the environment's master secret server, in one chain.
//!
//! `backup-security-data` → `export-encryption-key` (HIS 2000 only: SNA Server 4.0 has no key) →
//! `install-sso` → `copy-migration-utility` → `stop-host-account-cache` (only where the host security
//! server is not the master: the operator stops the service there) → `export-host-security` →
//! `review-export` (the operator reviews the export and resolves conflicting mappings or names, as the
//! HIS docs describe, before anything is imported) → `import-host-security` → `verify`.

use crate::names::same_server;
use crate::version::Standing;

use super::build::{EnvSteps, install_expected, plan_hash, standing};
use super::{EnvPlan, Expected, Plan, PlanError, Reports, StepKind, Workflow};
use crate::domain::EnvName;
use crate::inventory::{Gate, HostSecurity, Inventory, Migration};

/// The migrate workflow on environment `env`, which must have `[environment.migration]`. ESSO is
/// installed on the master (`install-sso`) unless its facts already show the target version or a newer
/// one; the migration's own steps always run (the migration is why the run exists). The install's
/// mode is decided as for an upgrade.
pub fn migrate_plan(
    inventory: &Inventory,
    env: &EnvName,
    reports: &Reports,
) -> Result<Plan, PlanError> {
    let Some(e) = inventory.environments.iter().find(|e| &e.name == env) else {
        return Err(PlanError::UnknownEnvironment(env.to_string()));
    };
    let Some(migration) = &e.migration else {
        return Err(PlanError::NoMigration(env.to_string()));
    };
    let target = &inventory.upgrade.target_version;
    let mut warnings = Vec::new();
    let master_standing = standing(
        target,
        &e.master,
        &e.name,
        reports,
        &mut warnings,
        "planned as needing ESSO installed",
    );
    let mut steps = Vec::new();
    let mut out = EnvSteps {
        inventory,
        env: e,
        env_index: 0,
        reports,
        steps: &mut steps,
    };
    let master = &e.master;
    let notes = Notes::new(migration, master.as_str());
    out.push(
        Some(master),
        StepKind::BackupSecurityData,
        Expected::Run,
        notes.backup(),
    );
    let (key, key_note) = if migration.has_key() {
        (
            Expected::Run,
            format!("udbkey /showkey into {}", migration.backup_dir),
        )
    } else {
        (
            Expected::Skipped("SNA Server 4.0 has no encryption key".into()),
            String::new(),
        )
    };
    out.push(Some(master), StepKind::ExportEncryptionKey, key, key_note);
    let install = install_expected(master_standing, target, out.found(master));
    out.push_install(master, StepKind::InstallSso, 0, install);
    out.push(
        Some(master),
        StepKind::CopyMigrationUtility,
        Expected::Run,
        "hissomig to the master secret server".into(),
    );
    if let Some(server) = notes.operator_stops {
        out.push(
            None,
            StepKind::StopHostAccountCache,
            Expected::Run,
            format!("stop the Host Account Cache service on {server} for the export, then approve"),
        );
    }
    out.push(
        Some(master),
        StepKind::ExportHostSecurity,
        Expected::Run,
        notes.export(),
    );
    out.push(None, StepKind::ReviewExport, Expected::Run, notes.review());
    out.push(
        Some(master),
        StepKind::ImportHostSecurity,
        Expected::Run,
        notes.import(),
    );
    let master_newer = master_standing == Some(Standing::Newer);
    out.push(
        Some(master),
        StepKind::VerifyMigration,
        Expected::Run,
        if master_newer {
            format!("version {target} or newer")
        } else {
            format!("version {target}")
        },
    );
    if let Some(verify) = out.steps.last_mut() {
        verify.accept_newer = master_newer;
    }
    let mut plan = Plan {
        workflow: Workflow::Migrate,
        target_version: target.clone(),
        installer: inventory.upgrade.installer.clone(),
        master_installer: inventory.upgrade.master_installer.clone(),
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
    plan.hash = plan_hash(&plan, reports);
    Ok(plan)
}

/// What the plan says of each migration step (shown by `fleetctl plan` and, for the operator's waits,
/// as what the run waits for).
struct Notes<'a> {
    migration: &'a Migration,
    master: &'a str,
    /// The server where the operator stops the Host Account Cache service: one the export step cannot
    /// reach (the agent stops it only on its own server, the master).
    operator_stops: Option<&'a str>,
}

impl<'a> Notes<'a> {
    fn new(migration: &'a Migration, master: &'a str) -> Self {
        let operator_stops = migration
            .host_account_cache_server()
            .filter(|server| !same_server(server, master));
        Self {
            migration,
            master,
            operator_stops,
        }
    }

    fn backup(&self) -> String {
        let what = match &self.migration.source {
            HostSecurity::His2000 { .. } => "the HIS 2000 host security data (SNAUDB)".to_string(),
            HostSecurity::Sna4 { dbfile } => {
                format!("the SNA Server 4.0 host security file {dbfile}")
            }
        };
        format!("{what} to {}", self.migration.backup_dir)
    }

    fn export(&self) -> String {
        let from = match &self.migration.source {
            HostSecurity::His2000 { server } => format!("-servername {server}"),
            HostSecurity::Sna4 { dbfile } => format!("-dbfile {dbfile}"),
        };
        let cache = match self.operator_stops {
            Some(server) => {
                format!("the Host Account Cache service on {server} stopped by the operator")
            }
            None => format!(
                "the agent stops the Host Account Cache service on {} for it and restarts it after",
                self.master
            ),
        };
        format!("hissomig -export {from}; {cache}")
    }

    fn review(&self) -> String {
        let restart = self
            .operator_stops
            .map(|server| {
                format!(
                    "; restart the Host Account Cache service on {server} (stopped for the export)"
                )
            })
            .unwrap_or_default();
        format!(
            "review the exported host security data and resolve conflicting mappings or names{restart}, then approve: the import starts only then"
        )
    }

    fn import(&self) -> String {
        let key = if self.migration.has_key() {
            format!("-key (the key file in {})", self.migration.backup_dir)
        } else {
            "without a key (SNA Server 4.0)".to_string()
        };
        format!("hissomig -import {key}; the exported XML is deleted after")
    }
}

#[cfg(test)]
mod tests;
