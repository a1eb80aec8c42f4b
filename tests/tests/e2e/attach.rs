//! Agents attach with their facts, show detached when killed or silent, and re-attach by themselves.

use fleet_tests::{Agent, Coordinator, CoordinatorOptions, Fleet, fleetctl, path_str};

use crate::FLEET;

#[test]
fn agents_attach_with_facts_detach_when_killed_or_silent_and_reattach() {
    let fleet = Fleet::new().unwrap();
    fleet.write("fleet.toml", FLEET).unwrap();
    let coordinator =
        Coordinator::start(&fleet, "127.0.0.1:0", &CoordinatorOptions::default()).unwrap();
    let mut a1 = Agent::start_issued(&fleet, &coordinator.url(), "a1", "3.0.6").unwrap();
    let _a2 = Agent::start_issued(&fleet, &coordinator.url(), "a2", "3.0.7").unwrap();

    // Attached, with the facts the (simulated) facts tool reported.
    let n1 = coordinator.wait_attached(&fleet, "a1", true);
    assert_eq!(n1["environment"], "dev");
    assert_eq!(n1["role"], "master");
    assert_eq!(n1["version"], "3.0.6");
    assert_eq!(n1["facts"]["service"], "running");
    assert_eq!(n1["facts"]["products"], serde_json::json!(["biztalk"]));
    let n2 = coordinator.wait_attached(&fleet, "a2", true);
    assert_eq!(
        (n2["role"].as_str(), n2["version"].as_str()),
        (Some("member"), Some("3.0.7"))
    );
    let p1 = coordinator.node(&fleet, "p1").unwrap();
    assert_eq!(p1["attached"], false);
    assert_eq!(p1["version"], serde_json::Value::Null);

    // The table for people.
    let o = fleetctl(&[
        "--coordinator",
        &coordinator.url(),
        "--tls-dir",
        path_str(&fleet.path("tls")).unwrap(),
        "nodes",
    ]);
    assert!(o.status.success());
    let table = String::from_utf8(o.stdout).unwrap();
    assert!(table.starts_with("NODE"), "{table}");
    assert!(
        table.lines().any(|l| l.starts_with("a1")
            && l.contains("master")
            && l.contains("yes")
            && l.contains("3.0.6")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("p1") && l.contains(" no ")),
        "{table}"
    );

    // Killed: the stream ends and the node shows detached.
    a1.process.kill();
    coordinator.wait_attached(&fleet, "a1", false);
    coordinator.process.wait_for_log("agent a1 detached");

    // Restarted: it re-attaches by itself.
    let _a1 = Agent::start_issued(&fleet, &coordinator.url(), "a1", "3.0.6").unwrap();
    coordinator.wait_attached(&fleet, "a1", true);
}

#[test]
fn a_silent_agent_is_detached_after_the_heartbeat_timeout_and_comes_back() {
    let fleet = Fleet::new().unwrap();
    fleet.write("fleet.toml", FLEET).unwrap();
    let coordinator =
        Coordinator::start(&fleet, "127.0.0.1:0", &CoordinatorOptions::default()).unwrap();
    let a2 = Agent::start_issued(&fleet, &coordinator.url(), "a2", "3.0.7").unwrap();
    coordinator.wait_attached(&fleet, "a2", true);

    // Frozen, its TCP connection stays open but nothing is heard: only the heartbeat timeout can tell.
    a2.process.signal("STOP").unwrap();
    coordinator.wait_attached(&fleet, "a2", false);
    let line = coordinator.process.wait_for_log("agent a2 detached");
    assert!(line.contains("nothing heard for more than 2s"), "{line}");

    // Thawed, it finds its stream closed and re-attaches by itself.
    a2.process.signal("CONT").unwrap();
    coordinator.wait_attached(&fleet, "a2", true);
}

#[test]
fn agents_reattach_to_a_restarted_coordinator_which_takes_a_new_epoch() {
    let fleet = Fleet::new().unwrap();
    fleet.write("fleet.toml", FLEET).unwrap();
    let mut coordinator =
        Coordinator::start(&fleet, "127.0.0.1:0", &CoordinatorOptions::default()).unwrap();
    assert!(coordinator.process.log_text().contains("epoch=1"));
    let a1 = Agent::start_issued(&fleet, &coordinator.url(), "a1", "3.0.6").unwrap();
    coordinator.wait_attached(&fleet, "a1", true);
    a1.process.wait_for_log("coordinator epoch 1");

    // SIGKILL, then a new coordinator on the same address and state directory.
    let addr = coordinator.addr.to_string();
    coordinator.process.kill();
    let restarted = fleet_tests::eventually(
        fleet_tests::PATIENCE,
        "the coordinator to bind its old port again",
        || Coordinator::start(&fleet, &addr, &CoordinatorOptions::default()).ok(),
    );
    assert!(
        restarted.process.log_text().contains("epoch=2"),
        "{}",
        restarted.process.log_text()
    );
    restarted.wait_attached(&fleet, "a1", true);
    a1.process.wait_for_log("coordinator epoch 2");
}

#[test]
fn an_agent_notices_a_silent_coordinator_and_comes_back() {
    let fleet = Fleet::new().unwrap();
    fleet.write("fleet.toml", FLEET).unwrap();
    let coordinator =
        Coordinator::start(&fleet, "127.0.0.1:0", &CoordinatorOptions::default()).unwrap();
    let a1 = Agent::start_issued(&fleet, &coordinator.url(), "a1", "3.0.6").unwrap();
    coordinator.wait_attached(&fleet, "a1", true);

    // Frozen: the TCP connection stays open, nothing arrives. Only the agent's own deadline can tell.
    coordinator.process.signal("STOP").unwrap();
    let line = a1
        .process
        .wait_for_log("nothing heard from the coordinator");
    assert!(line.contains("re-attaching in"), "{line}");
    coordinator.process.signal("CONT").unwrap();
    coordinator.wait_attached(&fleet, "a1", true);
}

#[test]
fn agents_and_coordinators_refuse_each_other_across_a_stale_epoch() {
    let fleet = Fleet::new().unwrap();
    fleet.write("fleet.toml", FLEET).unwrap();
    // Epoch 2 on the real state directory; the agent sees it.
    let mut first =
        Coordinator::start(&fleet, "127.0.0.1:0", &CoordinatorOptions::default()).unwrap();
    first.process.kill();
    let addr = first.addr.to_string();
    let current = fleet_tests::eventually(
        fleet_tests::PATIENCE,
        "a coordinator on the same port",
        || Coordinator::start(&fleet, &addr, &CoordinatorOptions::default()).ok(),
    );
    assert!(current.process.log_text().contains("epoch=2"));
    let a1 = Agent::start_issued(&fleet, &current.url(), "a1", "3.0.6").unwrap();
    a1.process.wait_for_log("coordinator epoch 2");

    // A coordinator started from another (older) state directory: epoch 1.
    let mut current = current;
    current.process.kill();
    let stale_options = CoordinatorOptions {
        state: "old-state",
        ..CoordinatorOptions::default()
    };
    let stale = fleet_tests::eventually(
        fleet_tests::PATIENCE,
        "a stale coordinator on the same port",
        || Coordinator::start(&fleet, &addr, &stale_options).ok(),
    );
    assert!(stale.process.log_text().contains("epoch=1"));
    let line = stale.process.wait_for_log("refused agent a1");
    assert!(
        line.contains("it has seen coordinator epoch 2, newer than this coordinator's epoch 1"),
        "{line}"
    );
    let line = a1.process.wait_for_log("refusing a stale coordinator");
    assert!(line.contains("older than epoch 2"), "{line}");
    assert_eq!(stale.node(&fleet, "a1").unwrap()["attached"], false);

    // Restarted, the agent still knows epoch 2 (its journal): the stale coordinator stays refused.
    let mut a1 = a1;
    a1.process.kill();
    let a1 = Agent::start_issued(&fleet, &stale.url(), "a1", "3.0.6").unwrap();
    let line = a1.process.wait_for_log("refusing a stale coordinator");
    assert!(line.contains("older than epoch 2"), "{line}");
    assert_eq!(stale.node(&fleet, "a1").unwrap()["attached"], false);
}
