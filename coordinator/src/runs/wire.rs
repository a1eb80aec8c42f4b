//! Conversions between the run manager's state and the wire: assignments, run events, states.

use fleet_proto::pb;

use crate::domain::Role;
use crate::engine::{EnvStatus, Millis, Run, StepState};
use crate::inventory::{Gate, Inventory};
use crate::plan::{Plan, Selection, StepKind};
use crate::store::StoredEvent;

/// The assignment for an agent step: the action and placeholder values, never a command line.
///
/// Parameters beside the placeholders (the agent's contract): `installer` is the installer of the
/// node's role (`master_installer` on the master where set); every install step says how ESSO joins
/// the SSO system when it is configured (`sso_configure`: `create` for the migrate workflow's
/// `install-sso`, the first master of a new SSO system; `join` for every other install); a
/// verification of a master already newer than the target accepts it (`newer_ok = true`); a
/// verification after an install reads ESSO's events since it started (`installed_at_unix_ms`); a
/// migrate run's steps carry the migration's ([`migration_params`]).
pub(super) fn assignment(
    inventory: &Inventory,
    plan: &Plan,
    run_id: &str,
    epoch: u64,
    run: &Run,
    step: usize,
    attempt_id: &str,
) -> pb::StepAssignment {
    let s = &run.steps[step].plan;
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
    let install_mode = if s.kind.installs() {
        // Decided in the plan; a plan stored before install modes were planned keeps the
        // environment's setting.
        let mode = s
            .install
            .as_ref()
            .map(|i| i.mode)
            .or(env.map(|e| e.install));
        mode.map_or(pb::InstallMode::Attended, crate::convert::install_mode)
    } else {
        pb::InstallMode::Unspecified
    };
    let action = crate::convert::action(s.kind);
    pb::StepAssignment {
        epoch,
        attempt_id: attempt_id.to_string(),
        run_id: run_id.to_string(),
        environment: env_name.to_string(),
        step: s.kind.name().to_string(),
        action: action as i32,
        params,
        timeout_ms: u64::try_from(run.step_timeout_ms).unwrap_or(u64::MAX),
        install_mode: install_mode as i32,
        expected_installer_sha256: String::new(),
    }
}

/// When the install that a verify step verifies was dispatched: the same node's latest succeeded
/// install step in the same environment. `None` for other steps and where nothing was installed.
fn installed_at(run: &Run, step: usize) -> Option<crate::engine::Millis> {
    let s = &run.steps[step].plan;
    if !matches!(
        s.kind,
        StepKind::VerifyMaster | StepKind::VerifyMember | StepKind::VerifyMigration
    ) {
        return None;
    }
    run.steps
        .iter()
        .filter(|x| x.plan.env == s.env && x.plan.node == s.node && x.plan.kind.installs())
        .filter(|x| x.state == crate::engine::StepState::Succeeded)
        .filter_map(|x| x.dispatched_at)
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

pub(super) fn workflow(stored: &str) -> pb::Workflow {
    match stored {
        "migrate" => pb::Workflow::Migrate,
        _ => pb::Workflow::Upgrade,
    }
}

pub(super) fn run_state(state: &str) -> pb::RunState {
    match state {
        "running" => pb::RunState::Running,
        "paused" => pb::RunState::Paused,
        "waiting-approval" => pb::RunState::WaitingApproval,
        "halted" => pb::RunState::Halted,
        "succeeded" => pb::RunState::Succeeded,
        "failed" => pb::RunState::Failed,
        "aborted" => pb::RunState::Aborted,
        _ => pb::RunState::Unspecified,
    }
}

pub(super) fn step_state(state: &str) -> pb::StepState {
    match state {
        "pending" => pb::StepState::Pending,
        "running" => pb::StepState::Running,
        "waiting" => pb::StepState::Waiting,
        "succeeded" => pb::StepState::Succeeded,
        "failed" => pb::StepState::Failed,
        "skipped" => pb::StepState::Skipped,
        "already-current" => pb::StepState::AlreadyCurrent,
        "newer" => pb::StepState::Newer,
        _ => pb::StepState::Unspecified,
    }
}

/// How a run's selection is stored at its start: the environments named (none: all), and the limits
/// the run applies (the selection's, else the inventory's policy, as planned).
pub(super) fn selection_json(selection: &Selection, plan: &Plan) -> String {
    serde_json::json!({
        "workflow": plan.workflow.as_str(),
        "environments": selection.environments.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
        "master_only": selection.master_only,
        "max_parallel": plan.max_parallel,
        "max_failures": plan.max_failures,
    })
    .to_string()
}

/// A stored selection ([`selection_json`]) on the wire; `workflow` is the run's stored workflow.
pub(super) fn selection(stored: &str, workflow_name: &str) -> pb::RunSelection {
    let value: serde_json::Value = serde_json::from_str(stored).unwrap_or_default();
    let environments: Vec<String> = value
        .get("environments")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str().map(str::to_string))
        .collect();
    let limit = |key: &str| {
        value
            .get(key)
            .and_then(serde_json::Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
    };
    pb::RunSelection {
        workflow: workflow(workflow_name) as i32,
        all: environments.is_empty(),
        environments,
        master_only: value
            .get("master_only")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false),
        max_parallel: limit("max_parallel"),
        max_failures: limit("max_failures"),
    }
}

/// An environment's state on the wire. The engine has no failed, skipped or window-waiting
/// environment: a closed window, or a failure, shows in the run's state and reason.
pub(super) fn environment_state(status: EnvStatus) -> pb::EnvironmentState {
    match status {
        EnvStatus::Pending => pb::EnvironmentState::Pending,
        EnvStatus::Running => pb::EnvironmentState::Running,
        EnvStatus::WaitingGate => pb::EnvironmentState::WaitingGate,
        EnvStatus::Halted => pb::EnvironmentState::Halted,
        EnvStatus::Succeeded => pb::EnvironmentState::Succeeded,
    }
}

/// Every environment of a run, in plan order.
pub(super) fn environments(run: &Run) -> Vec<pb::RunEnvironment> {
    run.envs
        .iter()
        .enumerate()
        .map(|(env, e)| pb::RunEnvironment {
            name: run.env_names[env].clone(),
            state: environment_state(e.status) as i32,
            // The migrate workflow has none.
            gate: run
                .gate_step(env)
                .map(|_| e.gate.to_string())
                .unwrap_or_default(),
            waiting_for: waiting_for(run, env),
            member_failures: e.member_failures,
        })
        .collect()
}

/// What an environment waits for (`RunEnvironment.waiting_for`): at its gate, what the gate waits
/// for ([`gate_wait`]); in progress, the operator's approval of a step that waits for it (an
/// attended install, a migration's review); otherwise nothing.
fn waiting_for(run: &Run, env: usize) -> String {
    match run.envs[env].status {
        EnvStatus::WaitingGate => gate_wait(run, env),
        EnvStatus::Running => run.steps[run.envs[env].steps.clone()]
            .iter()
            .find(|s| s.state == StepState::Waiting && s.plan.kind != StepKind::Gate)
            .map(|s| match &s.plan.node {
                Some(node) => format!("approval of {node} {}", s.plan.kind.name()),
                None => format!("approval of {}", s.plan.kind.name()),
            })
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// What an environment's gate waits for: `approval` (a manual gate), or `soak until <time>` (the
/// soak's end, RFC 3339; `soak <duration>` before it began).
fn gate_wait(run: &Run, env: usize) -> String {
    match &run.envs[env].gate {
        Gate::Auto => String::new(),
        Gate::Manual => "approval".into(),
        Gate::Soak(duration) => match run.gate_step(env).and_then(|g| run.steps[g].wait_until) {
            Some(until) => format!("soak until {}", rfc3339(until)),
            None => format!("soak {}", humantime::format_duration(*duration)),
        },
    }
}

fn rfc3339(at: Millis) -> String {
    let at =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(at).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// A stored run event, with the step's environment, node and name from the run, and what an
/// environment's gate waits for.
pub(super) fn run_event(run_id: &str, run: &Run, e: &StoredEvent) -> pb::RunEvent {
    let mut event = plain_event(run_id, e);
    if let Some(step) = e.step.and_then(|i| run.steps.get(i)) {
        event.environment = run.env_names[step.plan.env].clone();
        event.node = step.plan.node.as_ref().map(ToString::to_string);
        event.step = step.plan.kind.name().to_string();
    }
    if let Some(pb::run_event::Kind::EnvironmentState(changed)) = &mut event.kind
        && changed.state() == pb::EnvironmentState::WaitingGate
        && let Some(env) = run.env_names.iter().position(|n| *n == event.environment)
    {
        changed.waiting_for = gate_wait(run, env);
    }
    event
}

pub(super) fn plain_event(run_id: &str, e: &StoredEvent) -> pb::RunEvent {
    let text = |k: &str| {
        e.payload
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let kind = match e.kind.as_str() {
        "step" => Some(pb::run_event::Kind::StepState(pb::StepStateChanged {
            state: step_state(&text("state")) as i32,
            message: text("message"),
            ..Default::default()
        })),
        "dispatched" => Some(pb::run_event::Kind::StepState(pb::StepStateChanged {
            state: pb::StepState::Running as i32,
            attempt_id: text("attempt_id"),
            attempt: u32::try_from(
                e.payload
                    .get("attempt")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0),
            )
            .unwrap_or(0),
            message: String::new(),
        })),
        "run" => Some(pb::run_event::Kind::RunState(pb::RunStateChanged {
            state: run_state(&text("state")) as i32,
            reason: text("reason"),
        })),
        // The status as stored: the engine's name of it.
        "environment" => Some(pb::run_event::Kind::EnvironmentState(
            pb::EnvironmentStateChanged {
                state: e
                    .payload
                    .get("status")
                    .and_then(serde_json::Value::as_str)
                    .and_then(EnvStatus::parse)
                    .map_or(pb::EnvironmentState::Unspecified, environment_state)
                    as i32,
                waiting_for: String::new(),
            },
        )),
        _ => None,
    };
    pb::RunEvent {
        seq: e.seq,
        at_unix_ms: e.at,
        run_id: run_id.to_string(),
        environment: text("environment"),
        kind,
        ..Default::default()
    }
}

/// How a wait's reason is stored with its event (and shown in `--output json`), and back.
pub(super) fn wait_reason_name(reason: pb::WaitReason) -> &'static str {
    match reason {
        pb::WaitReason::Reboot => "reboot",
        pb::WaitReason::RestartByHand => "restart-by-hand",
        pb::WaitReason::AttendedInstall | pb::WaitReason::Unspecified => "attended",
    }
}

pub(super) fn wait_reason(name: &str) -> pb::WaitReason {
    match name {
        "reboot" => pb::WaitReason::Reboot,
        "restart-by-hand" => pb::WaitReason::RestartByHand,
        _ => pb::WaitReason::AttendedInstall,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;
    use crate::domain::NodeName;
    use crate::plan::{Reported, Reports, Selection, Workflow, plan};

    const FLEET: &str = "[upgrade]\ntarget_version = \"3.0.7\"\ninstaller = 'D:\\media\\Setup.exe'\nmaster_installer = 'D:\\media\\Platform\\SSO\\Setup.exe'\n[[environment]]\nname = \"dev\"\ninstall = \"unattended\"\nmaster = \"m\"\nmembers = [\"a\", \"b\"]\nbackup_dir = 'B'\n[environment.migration]\nsource = \"his2000\"\nhost_security_server = \"PDC1\"\nbackup_dir = 'HB'\nlog_dir = 'C:\\hostsec\\log'\n";

    fn selection(workflow: Workflow) -> Selection {
        Selection {
            workflow,
            environments: vec![crate::domain::EnvName::new("dev").unwrap()],
            master_only: false,
            max_parallel: None,
            max_failures: None,
        }
    }

    /// Each step of the plan (as `node step`) with its assignment.
    fn assignments(workflow: Workflow, reports: &Reports) -> Vec<(String, pb::StepAssignment)> {
        let inv = Inventory::parse(Path::new("fleet.toml"), FLEET).unwrap();
        let p = plan(&inv, &selection(workflow), reports).unwrap();
        let run = Run::new(&p, 60_000, BTreeSet::new());
        (0..run.steps.len())
            .filter(|&i| run.steps[i].plan.kind.on_agent())
            .map(|i| {
                let s = &run.steps[i].plan;
                let name = format!(
                    "{} {}",
                    s.node.as_ref().map_or("-", NodeName::as_str),
                    s.kind.name()
                );
                (name, assignment(&inv, &p, "run", 7, &run, i, "attempt"))
            })
            .collect()
    }

    #[test]
    fn a_verification_after_an_install_reads_the_events_since_it() {
        let inv = Inventory::parse(Path::new("fleet.toml"), FLEET).unwrap();
        let reports: Reports = [("m", "3.0.6"), ("a", "3.0.6"), ("b", "3.0.6")]
            .into_iter()
            .map(|(n, v)| (NodeName::new(n).unwrap(), Reported::version(v)))
            .collect();
        let p = plan(&inv, &selection(Workflow::Upgrade), &reports).unwrap();
        let mut run = Run::new(&p, 60_000, BTreeSet::new());
        let index = |node: &str, kind: StepKind| {
            run.steps
                .iter()
                .position(|x| {
                    x.plan.kind == kind && x.plan.node.as_ref().map(NodeName::as_str) == Some(node)
                })
                .unwrap()
        };
        let (install, verify) = (
            index("m", StepKind::UpgradeMaster),
            index("m", StepKind::VerifyMaster),
        );
        let other = index("a", StepKind::VerifyMember);
        let params = |run: &Run, i: usize| assignment(&inv, &p, "run", 7, run, i, "attempt").params;
        assert!(!params(&run, verify).contains_key("installed_at_unix_ms"));
        run.steps[install].dispatched_at = Some(1_700_000_000_000);
        run.steps[install].state = crate::engine::StepState::Succeeded;
        assert_eq!(
            params(&run, verify)["installed_at_unix_ms"],
            "1700000000000"
        );
        assert!(!params(&run, other).contains_key("installed_at_unix_ms"));
        assert!(!params(&run, install).contains_key("installed_at_unix_ms"));
    }

    /// Environment events are stored with the engine's name of the status (`Store::commit`): each
    /// comes back as its state, never unspecified.
    #[test]
    fn a_stored_environment_status_comes_back_as_its_state() {
        for (status, state) in [
            (EnvStatus::Pending, pb::EnvironmentState::Pending),
            (EnvStatus::Running, pb::EnvironmentState::Running),
            (EnvStatus::WaitingGate, pb::EnvironmentState::WaitingGate),
            (EnvStatus::Halted, pb::EnvironmentState::Halted),
            (EnvStatus::Succeeded, pb::EnvironmentState::Succeeded),
        ] {
            let stored = StoredEvent {
                seq: 3,
                at: 0,
                step: None,
                kind: "environment".into(),
                payload: serde_json::json!({ "environment": "dev", "status": format!("{status:?}") }),
            };
            let event = plain_event("run", &stored);
            let Some(pb::run_event::Kind::EnvironmentState(changed)) = event.kind else {
                panic!("{status:?}: {event:?}");
            };
            assert_eq!(changed.state(), state, "{status:?}");
            assert_eq!(event.environment, "dev");
        }
    }

    #[test]
    fn a_selection_reads_back_with_the_limits_the_run_applies() {
        let inv = Inventory::parse(Path::new("fleet.toml"), FLEET).unwrap();
        let mut chosen = selection(Workflow::Upgrade);
        chosen.max_failures = Some(4);
        let p = plan(&inv, &chosen, &Reports::new()).unwrap();
        let shown = super::selection(&selection_json(&chosen, &p), "upgrade");
        assert_eq!(shown.workflow(), pb::Workflow::Upgrade);
        assert!(!shown.all);
        assert_eq!(shown.environments, ["dev"]);
        assert_eq!(shown.max_failures, Some(4));
        assert_eq!(shown.max_parallel, Some(p.max_parallel));
        chosen.environments.clear();
        let all = super::selection(&selection_json(&chosen, &p), "upgrade");
        assert!(all.all && all.environments.is_empty());
    }

    fn find<'a>(all: &'a [(String, pb::StepAssignment)], name: &str) -> &'a pb::StepAssignment {
        &all.iter().find(|(n, _)| n == name).unwrap().1
    }

    #[test]
    fn install_steps_carry_their_planned_mode_role_installer_and_sso_configure() {
        let mut reports: Reports = [("m", "3.0.6"), ("a", "3.0.6"), ("b", "")]
            .into_iter()
            .map(|(n, v)| (NodeName::new(n).unwrap(), Reported::version(v)))
            .collect();
        reports.insert(
            NodeName::new("a").unwrap(),
            Reported {
                version: Some("3.0.6".into()),
                install_override: true,
                ..Reported::default()
            },
        );
        let all = assignments(Workflow::Upgrade, &reports);
        let master = find(&all, "m upgrade-master");
        assert_eq!(master.install_mode(), pb::InstallMode::Attended);
        assert_eq!(
            master.params["installer"],
            r"D:\media\Platform\SSO\Setup.exe"
        );
        assert_eq!(master.params["sso_configure"], "join");
        assert_eq!(master.params["target_version"], "3.0.7");
        // The agent's own command, and a fresh install: unattended, from the members' installer.
        let a = find(&all, "a upgrade");
        assert_eq!(a.install_mode(), pb::InstallMode::Unattended);
        assert_eq!(a.params["installer"], r"D:\media\Setup.exe");
        assert_eq!(a.params["sso_configure"], "join");
        assert_eq!(
            find(&all, "b upgrade").install_mode(),
            pb::InstallMode::Unattended
        );
        // Steps that do not install have no mode and no sso_configure.
        let backup = find(&all, "m backup-secret");
        assert_eq!(backup.install_mode(), pb::InstallMode::Unspecified);
        assert!(!backup.params.contains_key("sso_configure"));
        assert_eq!(
            backup.params["installer"],
            r"D:\media\Platform\SSO\Setup.exe"
        );
        assert!(
            !find(&all, "m verify-master")
                .params
                .contains_key("newer_ok")
        );
    }

    #[test]
    fn a_newer_master_is_verified_with_newer_ok() {
        let reports: Reports = [("m", "3.0.8"), ("a", "3.0.6"), ("b", "3.0.7.0")]
            .into_iter()
            .map(|(n, v)| (NodeName::new(n).unwrap(), Reported::version(v)))
            .collect();
        let all = assignments(Workflow::Upgrade, &reports);
        assert_eq!(find(&all, "m verify-master").params["newer_ok"], "true");
        assert!(!find(&all, "a verify").params.contains_key("newer_ok"));
    }

    #[test]
    fn the_migrate_workflow_creates_the_sso_system() {
        let reports: Reports = [(NodeName::new("m").unwrap(), Reported::version(""))].into();
        let all = assignments(Workflow::Migrate, &reports);
        let install = find(&all, "m install-sso");
        assert_eq!(install.params["sso_configure"], "create");
        // From ESSO's own setup (the master's installer here), which has no silent switches.
        assert_eq!(install.install_mode(), pb::InstallMode::Attended);
        assert_eq!(
            install.params["installer"],
            r"D:\media\Platform\SSO\Setup.exe"
        );
        assert!(!find(&all, "m verify").params.contains_key("newer_ok"));
    }

    #[test]
    fn migrate_steps_carry_the_migration_and_their_phase() {
        let reports: Reports = [(NodeName::new("m").unwrap(), Reported::version(""))].into();
        let all = assignments(Workflow::Migrate, &reports);
        let migration_steps = [
            "m backup-security-data",
            "m export-encryption-key",
            "m copy-migration-utility",
            "m export-host-security",
            "m import-host-security",
        ];
        for name in migration_steps {
            let params = &find(&all, name).params;
            assert_eq!(params["migration_source"], "his2000", "{name}");
            assert_eq!(params["host_security_server"], "PDC1", "{name}");
            assert!(!params.contains_key("host_security_dbfile"), "{name}");
            assert_eq!(params["backup_dir"], "HB", "the migration's, on {name}");
            assert_eq!(params["migration_log_dir"], r"C:\hostsec\log", "{name}");
        }
        // ESSO's own steps keep the environment's: the new master secret is backed up there.
        for name in ["m install-sso", "m verify"] {
            let params = &find(&all, name).params;
            assert_eq!(params["backup_dir"], "B", "{name}");
            assert!(!params.contains_key("migration_source"), "{name}");
        }
        let phase = |name: &str| find(&all, name).params.get("migration_phase").cloned();
        assert_eq!(phase("m export-host-security").as_deref(), Some("export"));
        assert_eq!(phase("m import-host-security").as_deref(), Some("import"));
        assert_eq!(phase("m export-encryption-key"), None);
        for step in ["m export-host-security", "m import-host-security"] {
            assert_eq!(find(&all, step).action(), pb::Action::RunMigration);
        }
        // The operator's waits are the coordinator's: no assignment.
        assert!(!all.iter().any(|(n, _)| n.contains("review-export")));

        // An upgrade's steps carry none of it; SNA Server 4.0 sends its database file.
        let upgrade = assignments(Workflow::Upgrade, &reports);
        let backup = find(&upgrade, "m backup-secret");
        assert_eq!(backup.params["backup_dir"], "B");
        assert!(!backup.params.contains_key("migration_source"));
        let sna = Inventory::parse(
            Path::new("fleet.toml"),
            &FLEET.replace(
                "source = \"his2000\"\nhost_security_server = \"PDC1\"",
                "source = \"sna4\"\nhost_security_dbfile = 'D:\\hostsec\\dbfile.dbs'",
            ),
        )
        .unwrap();
        let p = plan(&sna, &selection(Workflow::Migrate), &reports).unwrap();
        let run = Run::new(&p, 60_000, BTreeSet::new());
        let export = (0..run.steps.len())
            .find(|&i| run.steps[i].plan.kind == StepKind::ExportHostSecurity)
            .unwrap();
        let params = assignment(&sna, &p, "run", 7, &run, export, "attempt").params;
        assert_eq!(params["migration_source"], "sna4");
        assert_eq!(params["host_security_dbfile"], r"D:\hostsec\dbfile.dbs");
        assert!(!params.contains_key("host_security_server"));
    }

    /// A run stored before the review: its `run-migration` runs export and import in one step.
    #[test]
    fn a_stored_run_migration_step_has_no_phase() {
        let inv = Inventory::parse(Path::new("fleet.toml"), FLEET).unwrap();
        let reports: Reports = [(NodeName::new("m").unwrap(), Reported::version(""))].into();
        let mut p = plan(&inv, &selection(Workflow::Migrate), &reports).unwrap();
        let export = p
            .steps
            .iter()
            .position(|s| s.kind == StepKind::ExportHostSecurity)
            .unwrap();
        p.steps[export].kind = StepKind::RunMigration;
        let run = Run::new(&p, 60_000, BTreeSet::new());
        let a = assignment(&inv, &p, "run", 7, &run, export, "attempt");
        assert_eq!(a.step, "run-migration");
        assert_eq!(a.action(), pb::Action::RunMigration);
        assert!(!a.params.contains_key("migration_phase"));
        assert_eq!(a.params["migration_source"], "his2000");
    }
}
