use std::path::Path;

use super::*;
use crate::domain::Role;
use crate::inventory::{InstallMode, Inventory};

const FLEET: &str = r#"
[upgrade]
target_version = "3.0.7"
installer = '/media/setup.exe'
[policy]
max_parallel = 2
[[environment]]
name = "dev"
master = "d1"
members = ["d2", "d3", "d4"]
backup_dir = '/b/dev'
[environment.sso_database]
server = "sql"
user = "u"
password_file = "p"
[[environment]]
name = "prod"
gate = "manual"
master = "p1"
members = ["p2"]
backup_dir = '/b/prod'
"#;

fn inventory(text: &str) -> Inventory {
    Inventory::parse(Path::new("fleet.toml"), text).unwrap()
}

fn all() -> Selection {
    Selection {
        workflow: Workflow::Upgrade,
        environments: Vec::new(),
        master_only: false,
        max_parallel: None,
        max_failures: None,
    }
}

fn versions(pairs: &[(&str, &str)]) -> Reports {
    pairs
        .iter()
        .map(|(n, v)| (NodeName::new(n).unwrap(), Reported::version(v)))
        .collect()
}

fn shape(plan: &Plan) -> Vec<String> {
    plan.steps
        .iter()
        .map(|s| {
            let node = s.node.as_ref().map_or("-", NodeName::as_str);
            format!(
                "{} {} {} {} {}",
                plan.environments[s.env].name,
                node,
                s.kind.name(),
                s.batch,
                s.expected
            )
        })
        .collect()
}

#[test]
fn orders_steps_master_first_environment_after_environment() {
    let inv = inventory(FLEET);
    let v = versions(&[
        ("d1", "3.0.6"),
        ("d2", "3.0.6"),
        ("d3", "3.0.7"),
        ("d4", "3.0.6"),
        ("p1", "3.0.6"),
        ("p2", "3.0.6"),
    ]);
    let plan = plan(&inv, &all(), &v).unwrap();
    assert_eq!(
        shape(&plan),
        [
            "dev - preflight 0 run",
            "dev - backup-database 0 run",
            "dev d1 backup-secret 0 run",
            "dev d1 upgrade-master 0 run",
            "dev d1 verify-master 0 run",
            "dev d2 upgrade 1 run",
            "dev d2 verify 1 run",
            "dev d3 upgrade 0 already-current",
            "dev d3 verify 0 already-current",
            "dev d4 upgrade 1 run",
            "dev d4 verify 1 run",
            "dev - gate 0 run",
            "prod - preflight 0 run",
            "prod - backup-database 0 skipped (no sso_database configured)",
            "prod p1 backup-secret 0 run",
            "prod p1 upgrade-master 0 run",
            "prod p1 verify-master 0 run",
            "prod p2 upgrade 1 run",
            "prod p2 verify 1 run",
            "prod - gate 0 run",
        ]
    );
    assert!(plan.warnings.is_empty());
    assert_eq!(plan.hash.len(), 16);
}

#[test]
fn master_only_and_all_current() {
    let inv = inventory(FLEET);
    let v = versions(&[
        ("d1", "3.0.7"),
        ("d2", "3.0.7"),
        ("d3", "3.0.7"),
        ("d4", "3.0.7"),
    ]);
    let sel = Selection {
        workflow: Workflow::Upgrade,
        environments: vec![EnvName::new("dev").unwrap()],
        ..all()
    };
    let p = plan(&inv, &sel, &v).unwrap();
    let s = shape(&p);
    assert_eq!(
        s[1],
        "dev - backup-database 0 skipped (every node is on the target version or newer)"
    );
    assert_eq!(s[3], "dev d1 upgrade-master 0 already-current");
    assert_eq!(
        s[4], "dev d1 verify-master 0 run",
        "the master is always verified"
    );

    let sel = Selection {
        workflow: Workflow::Upgrade,
        master_only: true,
        ..sel
    };
    let p = plan(&inv, &sel, &versions(&[("d1", "3.0.6")])).unwrap();
    assert!(shape(&p)[5].ends_with("upgrade 0 skipped (--master-only)"));
    assert_eq!(
        p.warnings.len(),
        3,
        "d2..d4 have not reported: {:?}",
        p.warnings
    );
}

#[test]
fn the_hash_is_stable_and_changes_with_drift() {
    let inv = inventory(FLEET);
    let v = versions(&[("d1", "3.0.6"), ("d2", "3.0.6")]);
    let h = plan(&inv, &all(), &v).unwrap().hash;
    assert_eq!(plan(&inv, &all(), &v).unwrap().hash, h);
    // A node's version changed.
    assert_ne!(
        plan(&inv, &all(), &versions(&[("d1", "3.0.7"), ("d2", "3.0.6")]))
            .unwrap()
            .hash,
        h
    );
    // The inventory changed.
    let other = inventory(&FLEET.replace(r#"members = ["p2"]"#, r#"members = ["p2", "p3"]"#));
    assert_ne!(plan(&other, &all(), &v).unwrap().hash, h);
    let other = inventory(&FLEET.replace("/media/setup.exe", "/media/setup2.exe"));
    assert_ne!(plan(&other, &all(), &v).unwrap().hash, h);
    // A policy override.
    assert_ne!(
        plan(
            &inv,
            &Selection {
                workflow: Workflow::Upgrade,
                max_parallel: Some(1),
                ..all()
            },
            &v
        )
        .unwrap()
        .hash,
        h
    );
}

#[test]
fn unknown_environment_is_an_error() {
    let inv = inventory(FLEET);
    let sel = Selection {
        workflow: Workflow::Upgrade,
        environments: vec![EnvName::new("staging").unwrap()],
        ..all()
    };
    assert_eq!(
        plan(&inv, &sel, &Reports::new()),
        Err(PlanError::UnknownEnvironment("staging".into()))
    );
}

fn step<'a>(plan: &'a Plan, node: &str, kind: StepKind) -> &'a PlannedStep {
    plan.steps
        .iter()
        .find(|s| s.kind == kind && s.node.as_ref().is_some_and(|n| n.as_str() == node))
        .unwrap_or_else(|| panic!("no {} on {node}", kind.name()))
}

#[test]
fn versions_stand_against_the_target_as_numbers() {
    let inv = inventory(FLEET);
    let v = versions(&[
        ("d1", "3.0.6"),
        ("d2", "3.0.7.0"),
        ("d3", "3.0.8"),
        ("d4", "3.0.10"),
        ("p1", "3.0.7"),
        ("p2", "2.9.99"),
    ]);
    let p = plan(&inv, &all(), &v).unwrap();
    assert_eq!(
        shape(&p),
        [
            "dev - preflight 0 run",
            "dev - backup-database 0 run",
            "dev d1 backup-secret 0 run",
            "dev d1 upgrade-master 0 run",
            "dev d1 verify-master 0 run",
            "dev d2 upgrade 0 already-current",
            "dev d2 verify 0 already-current",
            "dev d3 upgrade 0 newer",
            "dev d3 verify 0 newer",
            "dev d4 upgrade 0 newer",
            "dev d4 verify 0 newer",
            "dev - gate 0 run",
            "prod - preflight 0 run",
            "prod - backup-database 0 skipped (no sso_database configured)",
            "prod p1 backup-secret 0 run",
            "prod p1 upgrade-master 0 already-current",
            "prod p1 verify-master 0 run",
            "prod p2 upgrade 1 run",
            "prod p2 verify 1 run",
            "prod - gate 0 run",
        ]
    );
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    assert_eq!(
        step(&p, "d3", StepKind::UpgradeMember).note,
        "on 3.0.8, newer than the target 3.0.7: never downgraded"
    );
    assert_eq!(
        step(&p, "d2", StepKind::UpgradeMember).note,
        "already on the target version (3.0.7.0)"
    );
    // Nothing installs on a node that is current or newer: no install mode for those steps.
    assert!(step(&p, "d3", StepKind::UpgradeMember).install.is_none());
    assert!(step(&p, "p1", StepKind::UpgradeMaster).install.is_none());
    assert!(step(&p, "d1", StepKind::UpgradeMaster).install.is_some());
    assert!(!step(&p, "d1", StepKind::VerifyMaster).accept_newer);
}

#[test]
fn a_newer_master_is_not_installed_on_but_verified_accepting_its_version() {
    let inv = inventory(FLEET);
    let v = versions(&[
        ("d1", "3.0.8"),
        ("d2", "3.0.6"),
        ("d3", "3.0.7"),
        ("d4", "9.0.1865.0"),
    ]);
    let sel = Selection {
        environments: vec![EnvName::new("dev").unwrap()],
        ..all()
    };
    let p = plan(&inv, &sel, &v).unwrap();
    let s = shape(&p);
    assert_eq!(s[3], "dev d1 upgrade-master 0 newer");
    assert_eq!(s[4], "dev d1 verify-master 0 run");
    let verify = step(&p, "d1", StepKind::VerifyMaster);
    assert!(verify.accept_newer);
    assert_eq!(
        verify.note,
        "version 3.0.7 or newer (the master is on 3.0.8)"
    );
    assert_eq!(s[5], "dev d2 upgrade 1 run", "d2 still installs");
    // Every node current or newer: nothing installs, the backups are skipped.
    let v = versions(&[
        ("d1", "3.0.8"),
        ("d2", "3.0.7.0"),
        ("d3", "3.0.7"),
        ("d4", "3.1"),
    ]);
    let p = plan(&inv, &sel, &v).unwrap();
    assert_eq!(
        shape(&p)[1],
        "dev - backup-database 0 skipped (every node is on the target version or newer)"
    );
    assert_eq!(
        shape(&p)[2],
        "dev d1 backup-secret 0 skipped (every node is on the target version or newer)"
    );
}

#[test]
fn a_version_that_is_not_one_is_unknown_with_a_warning() {
    let inv = inventory(FLEET);
    let sel = Selection {
        environments: vec![EnvName::new("dev").unwrap()],
        ..all()
    };
    let v = versions(&[
        ("d1", "3.0.7"),
        ("d2", "3.0.7-beta"),
        ("d3", "3.0.7"),
        ("d4", "3.0.7"),
    ]);
    let p = plan(&inv, &sel, &v).unwrap();
    assert_eq!(
        p.warnings,
        [
            "d2 (dev) reports ESSO version \"3.0.7-beta\", which is not a version: planned as needing the upgrade"
        ]
    );
    assert_eq!(
        step(&p, "d2", StepKind::UpgradeMember).expected,
        Expected::Run
    );
    // No ESSO at all is older, not unknown: no warning, an install.
    let v = versions(&[
        ("d1", "3.0.7"),
        ("d2", ""),
        ("d3", "3.0.7"),
        ("d4", "3.0.7"),
    ]);
    let p = plan(&inv, &sel, &v).unwrap();
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    assert_eq!(
        step(&p, "d2", StepKind::UpgradeMember).expected,
        Expected::Run
    );
}

#[test]
fn each_install_step_gets_its_mode_and_reason() {
    let text = FLEET
        .replace(
            "name = \"dev\"\n",
            "name = \"dev\"\ninstall = \"unattended\"\n",
        )
        .replace(
            "installer = '/media/setup.exe'",
            "installer = '/media/setup.exe'\nmaster_installer = '/media/Platform/SSO/Setup.exe'",
        );
    let inv = inventory(&text);
    let mut v = versions(&[("d1", "3.0.6"), ("d2", "3.0.6"), ("d3", "")]);
    v.insert(
        NodeName::new("d4").unwrap(),
        Reported {
            version: Some("3.0.6".into()),
            install_override: true,
            ..Reported::default()
        },
    );
    v.insert(NodeName::new("p1").unwrap(), Reported::version("3.0.6"));
    let p = plan(&inv, &all(), &v).unwrap();
    let mode = |node: &str, kind| {
        let i = step(&p, node, kind).install.clone().unwrap();
        (i.mode, i.reason)
    };
    // The master upgrades from ESSO's own setup, which has no silent switches; a BizTalk setup upgrade
    // of an existing ESSO is attended too, quoting Microsoft.
    let (m, why) = mode("d1", StepKind::UpgradeMaster);
    assert_eq!(
        (m, why.as_str()),
        (InstallMode::Attended, crate::install::NO_SILENT_ESSO_SETUP)
    );
    assert_eq!(
        mode("d2", StepKind::UpgradeMember),
        (
            InstallMode::Attended,
            install::NO_SILENT_UPGRADE.to_string()
        )
    );
    // A fresh install, the agent's own command: unattended.
    assert_eq!(
        mode("d3", StepKind::UpgradeMember).0,
        InstallMode::Unattended
    );
    assert_eq!(
        mode("d4", StepKind::UpgradeMember).0,
        InstallMode::Unattended
    );
    // prod says nothing: attended, the default.
    assert_eq!(mode("p1", StepKind::UpgradeMaster).0, InstallMode::Attended);
    // p2 has not reported: its facts are unknown (and prod is attended anyway).
    assert!(
        mode("p2", StepKind::UpgradeMember)
            .1
            .contains("install = \"attended\"")
    );
    // Only install steps have a mode.
    assert!(step(&p, "d1", StepKind::BackupSecret).install.is_none());
    assert!(step(&p, "d1", StepKind::VerifyMaster).install.is_none());
    // The master installs from its own installer, and the plan says so.
    assert_eq!(
        step(&p, "d1", StepKind::UpgradeMaster).note,
        "from /media/Platform/SSO/Setup.exe"
    );
    assert_eq!(
        p.installer_for(Role::Master),
        "/media/Platform/SSO/Setup.exe"
    );
    assert_eq!(p.installer_for(Role::Member), "/media/setup.exe");

    // An MSI (Host Integration Server 2020) upgrades unattended where the agent applies the HIS
    // configuration with its own command, attended where it cannot; facts unknown are attended.
    let msi = inventory(
        &FLEET
            .replace(
                "name = \"dev\"\n",
                "name = \"dev\"\ninstall = \"unattended\"\n",
            )
            .replace("/media/setup.exe", "/media/HIS2020_Server_EN.msi"),
    );
    let mut v = versions(&[("d1", "3.0.6"), ("d3", "3.0.6")]);
    v.insert(
        NodeName::new("d1").unwrap(),
        Reported {
            version: Some("3.0.6".into()),
            configure_override: true,
            ..Reported::default()
        },
    );
    let p = plan(&msi, &all(), &v).unwrap();
    let i = step(&p, "d1", StepKind::UpgradeMaster)
        .install
        .clone()
        .unwrap();
    assert_eq!(i.mode, InstallMode::Unattended);
    let i = step(&p, "d3", StepKind::UpgradeMember)
        .install
        .clone()
        .unwrap();
    assert_eq!(
        (i.mode, i.reason.as_str()),
        (InstallMode::Attended, crate::install::NO_HIS_CONFIGURATION)
    );
    let i = step(&p, "d2", StepKind::UpgradeMember)
        .install
        .clone()
        .unwrap();
    assert_eq!(i.mode, InstallMode::Attended);
    assert!(i.reason.starts_with("facts unknown"), "{}", i.reason);
}

#[test]
fn the_hash_covers_install_modes_standing_and_both_installers() {
    let unattended = FLEET.replace(
        "name = \"dev\"\n",
        "name = \"dev\"\ninstall = \"unattended\"\n",
    );
    let inv = inventory(&unattended);
    let v = versions(&[("d1", "3.0.6"), ("d2", "3.0.6")]);
    let h = plan(&inv, &all(), &v).unwrap().hash;
    // d1's agent now installs with its own command: d1's install becomes unattended.
    let mut overridden = v.clone();
    overridden.insert(
        NodeName::new("d1").unwrap(),
        Reported {
            version: Some("3.0.6".into()),
            install_override: true,
            ..Reported::default()
        },
    );
    assert_ne!(plan(&inv, &all(), &overridden).unwrap().hash, h);
    // A master installer of its own.
    let other = inventory(&unattended.replace(
        "installer = '/media/setup.exe'",
        "installer = '/media/setup.exe'\nmaster_installer = '/media/sso.exe'",
    ));
    assert_ne!(plan(&other, &all(), &v).unwrap().hash, h);
    // A node now newer than the target.
    let newer = plan(&inv, &all(), &versions(&[("d1", "3.0.8"), ("d2", "3.0.6")])).unwrap();
    assert_ne!(newer.hash, h);
}
