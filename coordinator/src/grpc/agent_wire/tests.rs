//! The assignments agents get, on the wire: the run manager's builder (`runs::assignment`) and its
//! conversion together.

use std::collections::BTreeSet;
use std::path::Path;

use fleet_proto::pb;
use fleet_proto::pb::coordinator_message::Body as CoordinatorBody;

use super::to_agent;
use crate::domain::NodeName;
use crate::engine::{Event, Outcome, Run, StepState};
use crate::grpc::dev_selection;
use crate::inventory::Inventory;
use crate::plan::{Reported, Reports, StepKind, Workflow, plan};
use crate::protocol::ToAgent;

/// The assignment as its agent gets it.
fn assignment(
    inventory: &Inventory,
    plan: &crate::plan::Plan,
    run_id: &str,
    epoch: u64,
    run: &Run,
    step: usize,
    attempt_id: &str,
) -> pb::StepAssignment {
    let a = crate::runs::assignment(inventory, plan, run_id, epoch, run, step, attempt_id);
    match to_agent(Ok(ToAgent::Assign(a))) {
        Ok(pb::CoordinatorMessage {
            body: Some(CoordinatorBody::Assign(a)),
        }) => a,
        other => panic!("{other:?}"),
    }
}

const FLEET: &str = "[upgrade]\ntarget_version = \"3.0.7\"\ninstaller = 'D:\\media\\Setup.exe'\nmaster_installer = 'D:\\media\\Platform\\SSO\\Setup.exe'\n[[environment]]\nname = \"dev\"\ninstall = \"unattended\"\nmaster = \"m\"\nmembers = [\"a\", \"b\"]\nbackup_dir = 'B'\n[environment.migration]\nsource = \"his2000\"\nhost_security_server = \"PDC1\"\nbackup_dir = 'HB'\nlog_dir = 'C:\\hostsec\\log'\n";

/// Each step of the plan (as `node step`) with its assignment.
fn assignments(workflow: Workflow, reports: &Reports) -> Vec<(String, pb::StepAssignment)> {
    let inv = Inventory::parse(Path::new("fleet.toml"), FLEET).unwrap();
    let p = plan(&inv, &dev_selection(workflow), reports).unwrap();
    let run = Run::new(&p, 60_000, BTreeSet::new());
    (0..run.steps().len())
        .filter(|&i| run.steps()[i].plan().kind.on_agent())
        .map(|i| {
            let s = run.steps()[i].plan();
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
    let p = plan(&inv, &dev_selection(Workflow::Upgrade), &reports).unwrap();
    let nodes = ["m", "a", "b"].map(|n| NodeName::new(n).unwrap());
    let mut run = Run::new(&p, 60_000, nodes.into_iter().collect());
    let index = |node: &str, kind: StepKind| {
        run.steps()
            .iter()
            .position(|x| {
                x.plan().kind == kind && x.plan().node.as_ref().map(NodeName::as_str) == Some(node)
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
    // The run goes on, every step succeeding, until the master's install has (dispatched then).
    let at = 1_700_000_000_000;
    run.apply(Event::Start, at).unwrap();
    while run.steps()[install].state() != StepState::Succeeded {
        let step = run
            .steps()
            .iter()
            .position(|s| s.state() == StepState::Running)
            .unwrap();
        let attempt = run.steps()[step].attempt();
        let outcome = Outcome::Succeeded;
        run.apply(
            Event::StepFinished {
                step,
                attempt,
                outcome,
            },
            at,
        )
        .unwrap();
    }
    assert_eq!(
        params(&run, verify)["installed_at_unix_ms"],
        "1700000000000"
    );
    assert!(!params(&run, other).contains_key("installed_at_unix_ms"));
    assert!(!params(&run, install).contains_key("installed_at_unix_ms"));
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
    let p = plan(&sna, &dev_selection(Workflow::Migrate), &reports).unwrap();
    let run = Run::new(&p, 60_000, BTreeSet::new());
    let export = (0..run.steps().len())
        .find(|&i| run.steps()[i].plan().kind == StepKind::ExportHostSecurity)
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
    let mut p = plan(&inv, &dev_selection(Workflow::Migrate), &reports).unwrap();
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

/// An agent's facts go into the fleet and come back out in `ListNodes` as the agent sent them.
#[test]
fn facts_come_back_in_list_nodes_as_the_agent_sent_them() {
    let sent = pb::Facts {
        esso_version: Some("3.0.6".into()),
        install_path: r"C:\Program Files\Common Files\Enterprise Single Sign-On".into(),
        service: pb::ServiceState::Pending as i32,
        products: vec!["biztalk".into()],
        master_secret_server: true,
        reboot_pending: true,
        hostname: "m".into(),
        os: "Windows Server 2019".into(),
        installer_sha256: Some("aa".into()),
        extra: [("k".to_string(), "v".to_string())].into(),
        error: "partial".into(),
        collected_at_unix_ms: 1_700_000_000_000,
        overridden_actions: vec!["install_sso".into()],
        checks: vec![pb::FitnessCheck {
            name: "msdtc".into(),
            passed: false,
            detail: "start MSDTC".into(),
        }],
    };
    let view = crate::fleet::NodeView {
        name: NodeName::new("m").unwrap(),
        environment: crate::domain::EnvName::new("dev").unwrap(),
        role: crate::domain::Role::Master,
        attached: true,
        last_seen: None,
        attached_since: None,
        agent_version: "1.0".into(),
        remote_addr: None,
        facts: Some(super::facts(sent.clone())),
        standing: None,
        refused_agent: None,
    };
    let shown = super::node_status(view);
    assert_eq!(shown.facts, Some(sent));
    assert_eq!(shown.version.as_deref(), Some("3.0.6"));
    assert_eq!(shown.role(), pb::Role::Master);
}

/// The coordinator ends a stream with the status the agent tells apart: replaced, or timed out.
#[test]
fn a_session_end_is_told_with_its_status() {
    use crate::fleet::SessionEnd;
    let code = |end| to_agent(Err(end)).unwrap_err().code();
    assert_eq!(code(SessionEnd::Replaced), tonic::Code::Aborted);
    assert_eq!(code(SessionEnd::HeartbeatTimeout), tonic::Code::Unavailable);
}
