use std::path::Path;

use super::*;

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

fn versions(pairs: &[(&str, &str)]) -> Versions {
    pairs
        .iter()
        .map(|(n, v)| {
            (
                NodeName::new(n).unwrap(),
                (!v.is_empty()).then(|| v.to_string()),
            )
        })
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
        "dev - backup-database 0 skipped (every node is already on the target version)"
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
        plan(&inv, &sel, &Versions::new()),
        Err(PlanError::UnknownEnvironment("staging".into()))
    );
}

#[test]
fn migrate_plans_six_steps_on_one_environments_master() {
    let inv = inventory(FLEET);
    let sel = Selection {
        workflow: Workflow::Migrate,
        environments: vec![EnvName::new("prod").unwrap()],
        master_only: false,
        max_parallel: None,
        max_failures: None,
    };
    let p = plan(&inv, &sel, &versions(&[("p1", "")])).unwrap();
    assert_eq!(p.workflow, Workflow::Migrate);
    assert_eq!(
        shape(&p),
        [
            "prod p1 backup-security-data 0 run",
            "prod p1 export-encryption-key 0 run",
            "prod p1 install-sso 0 run",
            "prod p1 copy-migration-utility 0 run",
            "prod p1 run-migration 0 run",
            "prod p1 verify 0 run",
        ]
    );
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    // Not the hash of anything else, and it moves with the master's version.
    let current = plan(&inv, &sel, &versions(&[("p1", "3.0.7")])).unwrap();
    assert_ne!(current.hash, p.hash);
    assert_eq!(current.steps[2].expected, Expected::AlreadyCurrent);
    let unknown = plan(&inv, &sel, &versions(&[])).unwrap();
    assert!(
        unknown.warnings[0].contains("p1 (prod) has not reported"),
        "{:?}",
        unknown.warnings
    );

    let two = Selection {
        environments: vec![EnvName::new("prod").unwrap(), EnvName::new("dev").unwrap()],
        ..sel.clone()
    };
    assert_eq!(
        plan(&inv, &two, &versions(&[])),
        Err(PlanError::MigrateOneEnvironment)
    );
    let none = Selection {
        environments: Vec::new(),
        ..sel
    };
    assert_eq!(
        plan(&inv, &none, &versions(&[])),
        Err(PlanError::MigrateOneEnvironment)
    );
}
