//! Versions compare as numbers end to end (SPEC §5 invariant 6): with target 3.0.7, a node on 3.0.6
//! is upgraded, one on 3.0.7.0 is `already-current`, one on 3.0.8 is `newer` and nothing runs there;
//! a master already newer is verified as it is, never downgraded.

use std::collections::BTreeMap;

use fleet_tests::{
    Agent, AgentSpec, Coordinator, CoordinatorOptions, Fleet, path_str, tool_log, upgrade_actions,
};

use crate::upgrade::{Setup, setups};

const FLEET: &str = r#"
[upgrade]
target_version = "3.0.7"
installer = 'INSTALLER'
[[environment]]
name = "dev"
install = "unattended"
master = "m1"
members = ["a1", "a2"]
backup_dir = 'BACKUPS'
"#;

/// One environment, m1 master, a1 and a2 members, at the given versions; every agent installs with its
/// own command (the fixture), so the environment installs unattended.
fn fleet_on(versions: [(&str, &str); 3]) -> Setup {
    let fleet = Fleet::new().unwrap();
    let backups = fleet.path("backups");
    std::fs::create_dir_all(&backups).unwrap();
    let installer = fleet
        .write("media/Setup.exe", "simulated ESSO installer 3.0.7\n")
        .unwrap();
    let inventory = FLEET
        .replace("BACKUPS", path_str(&backups).unwrap())
        .replace("INSTALLER", path_str(&installer).unwrap());
    fleet.write("fleet.toml", &inventory).unwrap();
    let coordinator =
        Coordinator::start(&fleet, "127.0.0.1:0", &CoordinatorOptions::default()).unwrap();
    let agents = versions
        .iter()
        .map(|(node, version)| {
            let tls = format!("agents/{node}/tls");
            fleet.issue_agent("tls", node, &tls).unwrap();
            let actions = upgrade_actions(&fleet, node, "").unwrap();
            let spec = AgentSpec {
                node,
                tls_rel: &tls,
                coordinator: &coordinator.url(),
                version,
            };
            Agent::start_with(&fleet, &spec, &actions).unwrap()
        })
        .collect();
    for (node, _) in versions {
        coordinator.wait_attached(&fleet, node, true);
    }
    Setup {
        fleet,
        coordinator,
        agents,
        proxies: BTreeMap::new(),
    }
}

/// `node`'s entry of `fleetctl nodes --output json`.
fn node(s: &Setup, name: &str) -> serde_json::Value {
    s.coordinator.node(&s.fleet, name).unwrap()
}

#[test]
fn one_install_one_already_current_one_newer_and_nothing_downgraded() {
    let s = fleet_on([("m1", "3.0.6"), ("a1", "3.0.7.0"), ("a2", "3.0.8")]);
    // `nodes` says where each stands against the target, as numbers.
    for (name, version, standing) in [
        ("m1", "3.0.6", "older"),
        ("a1", "3.0.7.0", "current"),
        ("a2", "3.0.8", "newer"),
    ] {
        let n = node(&s, name);
        assert_eq!(
            (n["version"].as_str(), n["standing"].as_str()),
            (Some(version), Some(standing)),
            "{n}"
        );
    }
    // The plan says so before anything runs.
    let (code, plan) = s.json(&["plan", "--all"]);
    assert_eq!(code, Some(0), "{plan}");
    let expected = Setup::by_step(&plan, "expected");
    assert_eq!(expected["m1 upgrade-master"], "run");
    assert_eq!(expected["a1 upgrade"], "already-current");
    assert_eq!(expected["a2 upgrade"], "newer");
    assert_eq!(expected["a2 verify"], "newer");
    let install = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["step"] == "upgrade-master")
        .unwrap();
    assert_eq!(install["install"], "unattended", "{install}");
    assert!(
        install["install_reason"]
            .as_str()
            .unwrap()
            .contains("[actions.install_sso]"),
        "{install}"
    );

    let (code, run) = s.json(&["upgrade", "--all"]);
    assert_eq!(code, Some(0), "{run}");
    assert_eq!(run["state"], "succeeded", "{run}");
    let steps = Setup::steps(&run);
    assert_eq!(steps["m1 upgrade-master"], "succeeded");
    assert_eq!(steps["m1 verify-master"], "succeeded");
    assert_eq!(steps["a1 upgrade"], "already-current");
    assert_eq!(steps["a1 verify"], "already-current");
    assert_eq!(steps["a2 upgrade"], "newer");
    assert_eq!(steps["a2 verify"], "newer");
    let newer_step = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["node"] == "a2" && st["step"] == "upgrade")
        .unwrap();
    assert!(
        newer_step["message"]
            .as_str()
            .unwrap()
            .contains("never downgraded"),
        "{newer_step}"
    );
    // Exactly one install ran, m1's; no tool at all ran on a1 or a2 (the newer node's installer was
    // never started).
    let log = tool_log(&s.fleet);
    assert_eq!(setups(&log), ["m1"], "{log:?}");
    assert!(
        log.iter().all(|e| e.node == "m1"),
        "nothing ran on a1 or a2: {log:?}"
    );
    let on_a2 = std::fs::read_to_string(s.fleet.path("agents/a2/esso/version")).unwrap();
    assert_eq!(on_a2.trim(), "3.0.8", "a2 was not downgraded");
    // `run show` in text says the same.
    let shown = s.ctl(&["run", "show", run["id"].as_str().unwrap()]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains("a2") && l.contains("upgrade") && l.contains("newer")),
        "{text}"
    );
}

#[test]
fn a_master_newer_than_the_target_is_verified_as_it_is_and_members_still_upgrade() {
    let s = fleet_on([("m1", "3.0.8"), ("a1", "3.0.6"), ("a2", "3.0.7")]);
    let (code, run) = s.json(&["upgrade", "--all"]);
    assert_eq!(code, Some(0), "{run}");
    let steps = Setup::steps(&run);
    assert_eq!(steps["m1 upgrade-master"], "newer");
    assert_eq!(
        steps["m1 verify-master"], "succeeded",
        "the agent accepted the newer version (newer_ok)"
    );
    assert_eq!(steps["a1 upgrade"], "succeeded");
    assert_eq!(steps["a2 upgrade"], "already-current");
    let log = tool_log(&s.fleet);
    assert_eq!(setups(&log), ["a1"], "{log:?}");
    assert!(
        log.iter()
            .any(|e| e.node == "m1" && e.tool == "verify" && e.start),
        "the master was verified: {log:?}"
    );
    assert_eq!(node(&s, "m1")["standing"], "newer");
}
