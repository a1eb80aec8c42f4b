//! Two agent processes for one node (the same certificate, two state directories: a copy started by
//! hand beside the service, a cloned server). The coordinator keeps one live session per node: the
//! second process is refused while the first is live, and shown in `nodes`; an attempt is sent again
//! only on the word of the process that accepted it (issue 18, item 2).

use std::time::Duration;

use fleet_proto::pb;
use fleet_proto::pb::agent_message::Body as A;
use fleet_proto::pb::coordinator_message::Body as C;
use fleet_tests::{PATIENCE, Process, bin, eventually, fleetctl, path_str};

use crate::deliveries::{assignment, attach_stand_in, msg, next, one_node_fleet};
use crate::durability::{start_detached, step_of, wait_final, wait_tool};
use crate::upgrade::{setup, setups_of};

/// A copy of a1's agent started by hand while a1's install runs: refused (its log, the coordinator's
/// log, `nodes` say so), and the install runs once; the run succeeds.
#[test]
fn a_second_agent_for_a_node_is_refused_and_the_install_runs_once() {
    let env = [("a1", ", FAKE_SETUP_SECONDS = \"3\"")];
    let s = setup(crate::upgrade::FLEET, &[], &env);
    let run_id = start_detached(&s);
    wait_tool(&s.fleet, "a1", "setup", true);

    // The same agent.toml (certificate, actions, simulated server) with its own state directory.
    let config = std::fs::read_to_string(s.fleet.path("agents/a1/agent.toml")).unwrap();
    let copy = s.fleet.write("agents/a1-copy/agent.toml", &config).unwrap();
    let mut second = Process::spawn(
        "fleet-agent a1 (copy)",
        std::process::Command::new(bin("fleet-agent")).args(["--config", path_str(&copy).unwrap()]),
        s.fleet.path("agents/a1-copy/agent.log"),
    )
    .unwrap();
    let refused = second
        .wait_for_log_while_running("another agent process for node a1 is attached")
        .unwrap();
    assert!(refused.contains("refused"), "{refused}");
    let line = s
        .coordinator
        .process
        .wait_for_log("refused a second agent for a1");
    assert!(line.contains("Run one agent per node"), "{line}");
    let a1 = s.coordinator.node(&s.fleet, "a1").unwrap();
    assert_eq!(a1["attached"], true, "{a1}");
    assert!(a1["refused_agent"]["times"].as_u64() >= Some(1), "{a1}");
    assert!(
        a1["refused_agent"]["instance_id"] != a1["refused_agent"]["attached_instance_id"],
        "{a1}"
    );

    let run = wait_final(&s, &run_id, Duration::from_secs(90));
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(setups_of(&s.fleet, "a1"), 1, "the install ran once");
    assert_eq!(step_of(&run, "a1", "upgrade")["attempts"], 1, "{run}");
    // Refused all along: its log has no welcome.
    assert!(
        !second.log_text().contains("attached to"),
        "{}",
        second.log_text()
    );
    second.kill();
    drop(s.agents);
}

/// The agent process that accepted the master's backup is gone; another process (another state
/// directory) attaches and does not know the attempt. It is not sent again: the step fails saying
/// that its outcome is unknown, and the run halts for the operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_received_counts_only_from_the_process_that_accepted() {
    let (fleet, coordinator, sha) = one_node_fleet();
    let (tx, mut inbound) = attach_stand_in(&fleet, &coordinator, "process-x")
        .await
        .unwrap();

    // While x is live, y is refused.
    let refused = attach_stand_in(&fleet, &coordinator, "process-y")
        .await
        .expect_err("a second process is refused");
    assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused:?}");
    assert!(
        refused.message().contains("process-x") && refused.message().contains("process-y"),
        "{refused:?}"
    );

    let ctl = |args: &[&str]| {
        let (url, tls) = (coordinator.url(), fleet.path("tls"));
        let mut all = vec!["--coordinator", &url, "--tls-dir", path_str(&tls).unwrap()];
        all.extend_from_slice(&["--output", "json"]);
        all.extend_from_slice(args);
        let o = fleetctl(&all);
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap_or_default()
    };
    let run_id = tokio::task::block_in_place(|| ctl(&["upgrade", "--all", "--detach"]))["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let backup = assignment(&mut inbound, &tx, &sha).await;
    assert_eq!(backup.step, "backup-secret");
    let accepted = pb::AssignmentAck {
        attempt_id: backup.attempt_id.clone(),
        decision: pb::AssignmentDecision::Accepted as i32,
        ..Default::default()
    };
    tx.send(msg(A::AssignmentAck(accepted))).await.unwrap();
    let started = A::Event(pb::StepEvent {
        attempt_id: backup.attempt_id.clone(),
        seq: 1,
        at_unix_ms: 1,
        kind: Some(pb::step_event::Kind::Started(pb::StepStarted {
            pid: 7,
            command: "ssoconfig -backupSecret".into(),
            ..Default::default()
        })),
    });
    tx.send(msg(started)).await.unwrap();
    // Its event acknowledged: the acceptance before it is recorded too.
    loop {
        if let C::EventAck(ack) = next(&mut inbound).await
            && ack.attempt_id == backup.attempt_id
        {
            break;
        }
    }
    // Process x goes away with the attempt.
    drop(tx);
    drop(inbound);

    let (y_tx, mut y_inbound) = {
        let mut tries = 0;
        loop {
            match attach_stand_in(&fleet, &coordinator, "process-y").await {
                Ok(attached) => break attached,
                Err(status) if tries < 50 => {
                    assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(status) => panic!("process y never attached: {status:?}"),
            }
        }
    };
    let query = loop {
        match next(&mut y_inbound).await {
            C::AttemptQuery(q) => break q,
            C::RefreshFacts(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(query.attempt_ids, std::slice::from_ref(&backup.attempt_id));
    y_tx.send(msg(A::AttemptReport(pb::AttemptReport {
        attempt_id: backup.attempt_id.clone(),
        state: pb::AttemptState::Unknown as i32,
        ..Default::default()
    })))
    .await
    .unwrap();

    let run = tokio::task::block_in_place(|| {
        eventually(PATIENCE, "the run halted", || {
            let run = ctl(&["run", "show", &run_id]);
            (run["state"] == "halted").then_some(run)
        })
    });
    let step = step_of(&run, "m1", "backup-secret");
    assert_eq!(step["state"], "failed", "{run}");
    let message = step["message"].as_str().unwrap();
    assert!(
        message.contains("accepted by another agent process for m1 (instance process-x)")
            && message.contains("not sent again"),
        "{message}"
    );
    assert_eq!(step["attempts"], 1, "{run}");
    // Nothing was sent to y again.
    let quiet = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let C::Assign(a) = next(&mut y_inbound).await {
                return a;
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "assigned again: {quiet:?}");
}
