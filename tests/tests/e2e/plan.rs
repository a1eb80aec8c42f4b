//! `fleetctl plan`: the ordered steps from the inventory and the agents' live facts, and a hash that
//! changes when the fleet drifts.

use fleet_tests::{Agent, Coordinator, CoordinatorOptions, Fleet, fleetctl, path_str};

use crate::FLEET;

fn plan(fleet: &Fleet, coordinator: &Coordinator, args: &[&str]) -> std::process::Output {
    let (url, tls) = (coordinator.url(), fleet.path("tls"));
    let mut all = vec![
        "--coordinator",
        url.as_str(),
        "--tls-dir",
        path_str(&tls).unwrap(),
        "plan",
    ];
    all.extend_from_slice(args);
    fleetctl(&all)
}

#[test]
fn plan_orders_steps_from_live_facts_and_its_hash_tracks_drift() {
    let fleet = Fleet::new().unwrap();
    fleet.write("fleet.toml", FLEET).unwrap();
    let coordinator =
        Coordinator::start(&fleet, "127.0.0.1:0", &CoordinatorOptions::default()).unwrap();
    let _a1 = Agent::start_issued(&fleet, &coordinator.url(), "a1", "3.0.6").unwrap();
    let _a2 = Agent::start_issued(&fleet, &coordinator.url(), "a2", "3.0.7").unwrap();
    coordinator.wait_attached(&fleet, "a1", true);
    coordinator.wait_attached(&fleet, "a2", true);

    let o = plan(&fleet, &coordinator, &["--all", "--output", "json"]);
    assert!(o.status.success(), "{o:?}");
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let steps: Vec<String> = json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{} {} {} {}",
                s["environment"].as_str().unwrap(),
                s["node"].as_str().unwrap_or("-"),
                s["step"].as_str().unwrap(),
                s["expected"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            "dev - preflight run",
            "dev - backup-database skipped",
            "dev a1 backup-secret run",
            "dev a1 upgrade-master run",
            "dev a1 verify-master run",
            "dev a2 upgrade already-current",
            "dev a2 verify already-current",
            "dev - gate run",
            "prod - preflight run",
            "prod - backup-database skipped",
            "prod p1 backup-secret run",
            "prod p1 upgrade-master run",
            "prod p1 verify-master run",
            "prod - gate run",
        ]
    );
    let warnings = json["warnings"].as_array().unwrap();
    assert!(
        warnings.len() == 2
            && warnings[0]
                .as_str()
                .unwrap()
                .starts_with("p1 (prod) has not reported its version")
            // The fixture's facts report no fitness check: said once for the nodes with steps.
            && warnings[1]
                .as_str()
                .unwrap()
                .starts_with("checks not reported by a1: local_admin, sso_admin"),
        "{warnings:?}"
    );
    let hash = json["plan_hash"].as_str().unwrap().to_string();
    assert_eq!(hash.len(), 16);

    // The same fleet, the same plan.
    let again: serde_json::Value =
        serde_json::from_slice(&plan(&fleet, &coordinator, &["--all", "--output", "json"]).stdout)
            .unwrap();
    assert_eq!(again["plan_hash"], hash.as_str());

    // Text for people, ending with the command that runs exactly this plan.
    let o = plan(&fleet, &coordinator, &["--env", "dev"]);
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("upgrade-master  a1"), "{text}");
    assert!(
        text.contains("already-current: already on the target version"),
        "{text}"
    );
    assert!(
        text.contains("to run exactly this plan: fleetctl upgrade --env dev --plan-hash "),
        "{text}"
    );

    // An unknown environment is bad usage.
    let o = plan(&fleet, &coordinator, &["--env", "staging"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("environment \"staging\" is not in the inventory"),
        "{o:?}"
    );

    // The inventory changes (a new member): the coordinator restarted on it plans differently.
    let addr = coordinator.addr.to_string();
    let mut coordinator = coordinator;
    coordinator.process.kill();
    fleet
        .write(
            "fleet.toml",
            &FLEET.replace("master = \"p1\"", "master = \"p1\"\nmembers = [\"p2\"]"),
        )
        .unwrap();
    let restarted = fleet_tests::eventually(
        fleet_tests::PATIENCE,
        "the coordinator back on its port",
        || Coordinator::start(&fleet, &addr, &CoordinatorOptions::default()).ok(),
    );
    restarted.wait_attached(&fleet, "a1", true);
    restarted.wait_attached(&fleet, "a2", true);
    let changed: serde_json::Value =
        serde_json::from_slice(&plan(&fleet, &restarted, &["--all", "--output", "json"]).stdout)
            .unwrap();
    assert_ne!(changed["plan_hash"], hash.as_str());
}
