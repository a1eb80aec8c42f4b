//! What an agent step's assignment carries: the action (from the step's kind) and the placeholder
//! values its agent substitutes, never a command line.

use crate::domain::Role;
use crate::engine::Run;
use crate::inventory::{InstallMode, Inventory};
use crate::plan::{Plan, StepKind};
use crate::protocol::Assignment;

/// The assignment for an agent step: the action and placeholder values, never a command line.
///
/// Parameters beside the placeholders (the agent's contract): `installer` is the installer of the
/// node's role (`master_installer` on the master where set); every install step says how ESSO joins
/// the SSO system when it is configured (`sso_configure`: `create` for the migrate workflow's
/// `install-sso`, the first master of a new SSO system; `join` for every other install); a
/// verification of a master already newer than the target accepts it (`newer_ok = true`); a
/// verification after an install reads ESSO's events since it started (`installed_at_unix_ms`); a
/// migrate run's steps carry the migration's ([`migration_params`]).
pub fn assignment(
    inventory: &Inventory,
    plan: &Plan,
    run_id: &str,
    epoch: u64,
    run: &Run,
    step: usize,
    attempt_id: &str,
) -> Assignment {
    let s = run.steps()[step].plan();
    let env_name = &plan.environments[s.env].name;
    let env = inventory.environments.iter().find(|e| &e.name == env_name);
    let role = s.kind.role().unwrap_or(Role::Member);
    let mut params = std::collections::HashMap::from([
        (
            "target_version".to_string(),
            plan.target_version.to_string(),
        ),
        (
            "installer".to_string(),
            plan.installer_for(role).to_string(),
        ),
    ]);
    if let Some(env) = env {
        params.insert("backup_dir".into(), env.backup_dir.clone());
        params.insert("master".into(), env.master.to_string());
        if s.kind.on_host_security()
            && let Some(migration) = &env.migration
        {
            migration_params(&mut params, migration, s.kind);
        }
    }
    if s.kind.installs() {
        let configure = if s.kind == StepKind::InstallSso {
            "create"
        } else {
            "join"
        };
        params.insert("sso_configure".into(), configure.into());
    }
    if s.accept_newer {
        params.insert("newer_ok".into(), "true".into());
    }
    if let Some(at) = installed_at(run, step) {
        params.insert("installed_at_unix_ms".into(), at.to_string());
    }
    let install_mode = s.kind.installs().then(|| {
        // Decided in the plan; a plan stored before install modes were planned keeps the
        // environment's setting.
        s.install
            .as_ref()
            .map(|i| i.mode)
            .or(env.map(|e| e.install))
            .unwrap_or(InstallMode::Attended)
    });
    Assignment {
        epoch,
        attempt_id: attempt_id.into(),
        run_id: run_id.to_string(),
        environment: env_name.to_string(),
        kind: s.kind,
        params,
        timeout_ms: u64::try_from(run.step_timeout_ms()).unwrap_or(u64::MAX),
        install_mode,
        expected_installer_sha256: String::new(),
    }
}

/// When the install that a verify step verifies was dispatched: the same node's latest succeeded
/// install step in the same environment. `None` for other steps and where nothing was installed.
fn installed_at(run: &Run, step: usize) -> Option<crate::engine::Millis> {
    let s = run.steps()[step].plan();
    if !matches!(
        s.kind,
        StepKind::VerifyMaster | StepKind::VerifyMember | StepKind::VerifyMigration
    ) {
        return None;
    }
    run.steps()
        .iter()
        .filter(|x| x.plan().env == s.env && x.plan().node == s.node && x.plan().kind.installs())
        .filter(|x| x.state() == crate::engine::StepState::Succeeded)
        .filter_map(|x| x.record().dispatched_at)
        .max()
}

/// The host security migration's parameters (the agent's contract, `builtin/migration.rs`):
/// `migration_source` (`his2000` | `sna4`), `host_security_server` or `host_security_dbfile`,
/// `migration_log_dir` where set, and `migration_phase` (`export` | `import`) on the steps that run one
/// part of `run_migration` (a stored `run-migration` step runs both and has none). `backup_dir` is the
/// migration's on these steps: the old security data and the encryption key go there, and the import
/// reads the key from there (the new master's secret, backed up by `install-sso`, goes to the
/// environment's).
fn migration_params(
    params: &mut std::collections::HashMap<String, String>,
    migration: &crate::inventory::Migration,
    kind: StepKind,
) {
    use crate::inventory::HostSecurity;
    params.insert("migration_source".into(), migration.source_name().into());
    let (key, value) = match &migration.source {
        HostSecurity::His2000 { server } => ("host_security_server", server),
        HostSecurity::Sna4 { dbfile } => ("host_security_dbfile", dbfile),
    };
    params.insert(key.into(), value.clone());
    params.insert("backup_dir".into(), migration.backup_dir.clone());
    if let Some(dir) = &migration.log_dir {
        params.insert("migration_log_dir".into(), dir.clone());
    }
    if let Some(phase) = kind.migration_phase() {
        params.insert("migration_phase".into(), phase.into());
    }
}
