//! Building plans: the steps of a workflow from the inventory and what the nodes reported, each
//! node's standing against the target (as numbers), and the plan's hash. The upgrade's steps are laid
//! out here, the migration's in [`super::migrate`].

use std::collections::HashMap;

use crate::version::{Standing, Version};
use sha2::{Digest, Sha256};

use super::migrate::migrate_plan;
use super::{
    EnvPlan, Expected, Plan, PlanError, PlannedStep, Reports, Selection, StepKind, Workflow,
    install, installer_for,
};
use crate::domain::{EnvName, NodeName, Role};
use crate::inventory::{Environment, Inventory};

/// Where `node` stands against `target`: no ESSO is older; `None` when unknown (not reported, or not
/// a version: then `warnings` says so, and how the node is `planned_as`).
pub(super) fn standing(
    target: &Version,
    node: &NodeName,
    env: &EnvName,
    reports: &Reports,
    warnings: &mut Vec<String>,
    planned_as: &str,
) -> Option<Standing> {
    match reports.get(node).map(|r| r.version.as_deref()) {
        None => {
            warnings.push(format!(
                "{node} ({env}) has not reported its version (not attached): {planned_as}"
            ));
            None
        }
        Some(None) => Some(Standing::Older),
        Some(Some(text)) => match text.parse::<Version>() {
            Ok(found) => Some(target.compare(&found)),
            Err(_) => {
                warnings.push(format!(
                    "{node} ({env}) reports ESSO version {text:?}, which is not a version: {planned_as}"
                ));
                None
            }
        },
    }
}

/// An install step's expectation and note for a node standing at `standing`.
pub(super) fn install_expected(
    standing: Option<Standing>,
    target: &Version,
    found: Option<&str>,
) -> (Expected, String) {
    let found = found.unwrap_or("?");
    match standing {
        Some(Standing::Current) => (
            Expected::AlreadyCurrent,
            format!("already on the target version ({found})"),
        ),
        Some(Standing::Newer) => (
            Expected::Newer,
            format!("on {found}, newer than the target {target}: never downgraded"),
        ),
        Some(Standing::Older) | None => (Expected::Run, String::new()),
    }
}

/// The plan of `selection`'s workflow over `inventory`, given what the nodes reported.
pub fn plan(
    inventory: &Inventory,
    selection: &Selection,
    reports: &Reports,
) -> Result<Plan, PlanError> {
    match selection.workflow {
        Workflow::Upgrade => upgrade_plan(inventory, selection, reports),
        Workflow::Migrate => match selection.environments.as_slice() {
            [env] => migrate_plan(inventory, env, reports),
            _ => Err(PlanError::MigrateOneEnvironment),
        },
    }
}

/// Adds the steps of one environment to a plan in the making.
pub(super) struct EnvSteps<'a> {
    pub(super) inventory: &'a Inventory,
    pub(super) env: &'a Environment,
    pub(super) env_index: usize,
    pub(super) reports: &'a Reports,
    pub(super) steps: &'a mut Vec<PlannedStep>,
}

impl EnvSteps<'_> {
    pub(super) fn push(
        &mut self,
        node: Option<&NodeName>,
        kind: StepKind,
        expected: Expected,
        note: String,
    ) {
        self.steps.push(PlannedStep {
            index: self.steps.len(),
            env: self.env_index,
            node: node.cloned(),
            kind,
            batch: 0,
            expected,
            note,
            install: None,
            accept_newer: false,
        });
    }

    /// Adds an install step on `node`; one that runs gets its install mode.
    pub(super) fn push_install(
        &mut self,
        node: &NodeName,
        kind: StepKind,
        batch: u32,
        (expected, note): (Expected, String),
    ) {
        let role = kind.role().unwrap_or(Role::Member);
        let upgrade = &self.inventory.upgrade;
        let installer = installer_for(
            role,
            &upgrade.installer,
            upgrade.master_installer.as_deref(),
        );
        let install = (expected == Expected::Run)
            .then(|| install::decide(self.env.install, self.reports.get(node), installer));
        let note = match (&upgrade.master_installer, role, &expected) {
            (Some(master), Role::Master, Expected::Run) => format!("from {master}"),
            _ => note,
        };
        self.push(Some(node), kind, expected, note);
        if let Some(last) = self.steps.last_mut() {
            last.batch = batch;
            last.install = install;
        }
    }

    pub(super) fn found(&self, node: &NodeName) -> Option<&str> {
        self.reports.get(node).and_then(|r| r.version.as_deref())
    }
}

fn upgrade_plan(
    inventory: &Inventory,
    selection: &Selection,
    reports: &Reports,
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
        let standings: HashMap<&NodeName, Option<Standing>> = env
            .nodes()
            .map(|(node, _)| {
                let s = standing(
                    target,
                    node,
                    &env.name,
                    reports,
                    &mut warnings,
                    "planned as needing the upgrade",
                );
                (node, s)
            })
            .collect();
        let up_to_date = |node: &NodeName| {
            matches!(
                standings.get(node),
                Some(Some(Standing::Current | Standing::Newer))
            )
        };
        let members_to_upgrade = !selection.master_only && !env.members.iter().all(up_to_date);
        let nothing_to_install = up_to_date(&env.master) && !members_to_upgrade;
        let master_standing = standings.get(&env.master).copied().flatten();

        let mut out = EnvSteps {
            inventory,
            env,
            env_index,
            reports,
            steps: &mut steps,
        };
        out.push(None, StepKind::Preflight, Expected::Run, String::new());
        let up_to_date_skip =
            || Expected::Skipped("every node is on the target version or newer".into());
        let (db, db_note) = match (&env.sso_database, nothing_to_install) {
            (_, true) => (up_to_date_skip(), String::new()),
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
        out.push(None, StepKind::BackupDatabase, db, db_note);
        let secret = if nothing_to_install {
            up_to_date_skip()
        } else {
            Expected::Run
        };
        out.push(
            Some(&env.master),
            StepKind::BackupSecret,
            secret,
            String::new(),
        );
        let upgrade = install_expected(master_standing, target, out.found(&env.master));
        out.push_install(&env.master, StepKind::UpgradeMaster, 0, upgrade);
        let master_newer = master_standing == Some(Standing::Newer);
        let verify_note = if master_newer {
            format!(
                "version {target} or newer (the master is on {})",
                out.found(&env.master).unwrap_or("?")
            )
        } else {
            format!("version {target}")
        };
        out.push(
            Some(&env.master),
            StepKind::VerifyMaster,
            Expected::Run,
            verify_note,
        );
        if let Some(verify) = out.steps.last_mut() {
            verify.accept_newer = master_newer;
        }
        let mut position = 0u32;
        for member in &env.members {
            let member_standing = standings.get(member).copied().flatten();
            let (expected, note) = if selection.master_only {
                (Expected::Skipped("--master-only".into()), String::new())
            } else {
                install_expected(member_standing, target, out.found(member))
            };
            let batch = if expected == Expected::Run {
                position += 1;
                position.div_ceil(max_parallel)
            } else {
                0
            };
            out.push_install(
                member,
                StepKind::UpgradeMember,
                batch,
                (expected.clone(), note.clone()),
            );
            out.push(Some(member), StepKind::VerifyMember, expected, note);
            if let Some(verify) = out.steps.last_mut() {
                verify.batch = batch;
            }
        }
        out.push(None, StepKind::Gate, Expected::Run, env.gate.to_string());
    }
    let mut plan = Plan {
        workflow: Workflow::Upgrade,
        target_version: target.clone(),
        installer: inventory.upgrade.installer.clone(),
        master_installer: inventory.upgrade.master_installer.clone(),
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
    plan.hash = plan_hash(&plan, reports);
    Ok(plan)
}

/// SHA-256 over a canonical text of the plan: steps, nodes, their versions and standing, install
/// modes, both installers, policy (and a migration's notes). Shown as 16 hex digits, enough to tell any drift from the plan an
/// operator reviewed.
pub(super) fn plan_hash(plan: &Plan, reports: &Reports) -> String {
    let mut canonical = match plan.workflow {
        Workflow::Upgrade => String::new(),
        Workflow::Migrate => "workflow=migrate\n".to_string(),
    };
    canonical += &format!(
        "ssofleet-plan-v2\ntarget={}\ninstaller={}\nmaster_installer={}\nmax_parallel={}\nmax_failures={}\n",
        plan.target_version,
        plan.installer,
        plan.master_installer.as_deref().unwrap_or("-"),
        plan.max_parallel,
        plan.max_failures
    );
    for env in &plan.environments {
        canonical.push_str(&format!("env={} gate={}\n", env.name, env.gate));
    }
    for step in &plan.steps {
        let node = step.node.as_ref().map_or("-", NodeName::as_str);
        let (version, standing) = match step.node.as_ref().map(|n| reports.get(n)) {
            None => ("-", "-"),
            Some(None) => ("unknown", "unknown"),
            Some(Some(r)) => match r.version.as_deref() {
                None => ("none", "older"),
                Some(v) => (
                    v,
                    v.parse::<Version>().map_or("unknown", |found| {
                        match plan.target_version.compare(&found) {
                            Standing::Older => "older",
                            Standing::Current => "current",
                            Standing::Newer => "newer",
                        }
                    }),
                ),
            },
        };
        let install = step.install.as_ref().map_or("-", |i| i.mode.as_str());
        canonical.push_str(&format!(
            "{} {} {} {} {} {} {} {} {}\n",
            plan.environments[step.env].name,
            node,
            step.kind.name(),
            step.batch,
            step.expected,
            version,
            standing,
            install,
            step.accept_newer
        ));
        // A migration's notes say where its data comes from and goes (the host security server, the
        // backup directory): a change there is a different plan.
        if plan.workflow == Workflow::Migrate {
            canonical.push_str(&format!("  note={}\n", step.note));
        }
    }
    let digest = Sha256::digest(canonical.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}
