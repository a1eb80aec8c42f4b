//! The coordinator's side of invariant 5: an agent (here a stand-in speaking the protocol over mTLS
//! with the node's real certificate) delivers a step's events duplicated and out of order; the
//! coordinator stores each once, in sequence order, acknowledges only what has no gap before it, and
//! applies the result once.

use std::time::Duration;

use fleet_proto::identity::Role;
use fleet_proto::pb;
use fleet_proto::pb::agent_message::Body as A;
use fleet_proto::pb::coordinator_message::Body as C;
use fleet_proto::tls::{TlsFiles, TlsMaterial};
use fleet_tests::{Coordinator, CoordinatorOptions, Fleet, fleetctl, path_str};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

pub(crate) const ONE_NODE: &str = r#"
[upgrade]
target_version = "3.0.7"
installer = 'INSTALLER'
[[environment]]
name = "dev"
master = "m1"
backup_dir = '/backups/dev'
"#;

pub(crate) fn msg(body: A) -> pb::AgentMessage {
    pb::AgentMessage { body: Some(body) }
}

fn event(attempt: &str, seq: u64, kind: pb::step_event::Kind) -> A {
    A::Event(pb::StepEvent {
        attempt_id: attempt.into(),
        seq,
        at_unix_ms: 1,
        kind: Some(kind),
    })
}

fn log(line: &str) -> pb::step_event::Kind {
    pb::step_event::Kind::Log(pb::StepLog {
        stream: pb::LogStream::Stdout as i32,
        line: line.into(),
    })
}

fn succeeded() -> pb::step_event::Kind {
    pb::step_event::Kind::Finished(pb::StepFinished {
        outcome: pb::StepOutcome::Succeeded as i32,
        ..Default::default()
    })
}

pub(crate) fn facts(version: &str, installer_sha256: Option<String>) -> pb::Facts {
    pb::Facts {
        esso_version: Some(version.into()),
        service: pb::ServiceState::Running as i32,
        installer_sha256,
        ..Default::default()
    }
}

/// A fleet of one node, m1 (its certificate issued), and its coordinator; the installer's SHA-256.
pub(crate) fn one_node_fleet() -> (Fleet, Coordinator, String) {
    let fleet = Fleet::new().unwrap();
    let installer = fleet.write("media/Setup.exe", "installer\n").unwrap();
    let sha: String = Sha256::digest(std::fs::read(&installer).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    fleet
        .write(
            "fleet.toml",
            &ONE_NODE.replace("INSTALLER", path_str(&installer).unwrap()),
        )
        .unwrap();
    let coordinator =
        Coordinator::start(&fleet, "127.0.0.1:0", &CoordinatorOptions::default()).unwrap();
    fleet.issue_agent("tls", "m1", "agents/m1/tls").unwrap();
    (fleet, coordinator, sha)
}

/// A stand-in for m1's agent process `instance`, attached with m1's certificate (issued before) and
/// kept attached by heartbeats: what it sends, and its inbound stream after the welcome. The
/// coordinator's refusal, if it refuses.
pub(crate) async fn attach_stand_in(
    fleet: &Fleet,
    coordinator: &Coordinator,
    instance: &str,
) -> Result<
    (
        mpsc::Sender<pb::AgentMessage>,
        tonic::Streaming<pb::CoordinatorMessage>,
    ),
    tonic::Status,
> {
    let material = TlsMaterial::load(
        &TlsFiles::in_dir(&fleet.path("agents/m1/tls"), "agent"),
        Role::Agent,
    )
    .unwrap();
    let tls = material
        .client_config(material.coordinator_identity())
        .unwrap();
    let channel = fleet_proto::transport::connect(&coordinator.url(), tls, Duration::from_secs(10))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(64);
    tx.send(msg(A::Hello(pb::Hello {
        node: "m1".into(),
        agent_instance_id: instance.into(),
        facts: Some(facts("3.0.6", None)),
        protocol_version: fleet_proto::PROTOCOL_VERSION,
        ..Default::default()
    })))
    .await
    .unwrap();
    let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
    let mut inbound = client.attach(ReceiverStream::new(rx)).await?.into_inner();
    let C::Welcome(_) = next(&mut inbound).await else {
        panic!("no welcome")
    };
    // Heartbeats until the caller drops its sender: then the stream ends, as a process's would.
    let beats = tx.downgrade();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let beat = msg(A::Heartbeat(pb::Heartbeat::default()));
            let Some(beats) = beats.upgrade() else { return };
            if beats.send(beat).await.is_err() {
                return;
            }
        }
    });
    Ok((tx, inbound))
}

/// The next coordinator message that is not a heartbeat.
pub(crate) async fn next(inbound: &mut tonic::Streaming<pb::CoordinatorMessage>) -> C {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), inbound.message())
            .await
            .expect("a message in time")
            .expect("the stream is fine")
            .expect("the stream is open");
        match m.body {
            Some(C::Heartbeat(_)) | None => continue,
            Some(body) => return body,
        }
    }
}

/// Answers until an assignment comes (facts refreshes on the way), and returns it.
pub(crate) async fn assignment(
    inbound: &mut tonic::Streaming<pb::CoordinatorMessage>,
    tx: &mpsc::Sender<pb::AgentMessage>,
    installer_sha256: &str,
) -> pb::StepAssignment {
    loop {
        match next(inbound).await {
            C::RefreshFacts(_) => tx
                .send(msg(A::Facts(facts("3.0.6", Some(installer_sha256.into())))))
                .await
                .unwrap(),
            C::Assign(a) => return a,
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_and_reordered_events_are_stored_once_in_order_and_applied_once() {
    let (fleet, coordinator, sha) = one_node_fleet();
    let (tx, mut inbound) = attach_stand_in(&fleet, &coordinator, "stand-in")
        .await
        .unwrap();

    let url = coordinator.url();
    let tls_dir = fleet.path("tls");
    let started = tokio::task::spawn_blocking(move || {
        fleetctl(&[
            "--coordinator",
            &url,
            "--tls-dir",
            path_str(&tls_dir).unwrap(),
            "--output",
            "json",
            "upgrade",
            "--all",
            "--detach",
        ])
    })
    .await
    .unwrap();
    assert!(started.status.success(), "{started:?}");
    let run_id = serde_json::from_slice::<serde_json::Value>(&started.stdout).unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();

    let backup = assignment(&mut inbound, &tx, &sha).await;
    assert_eq!(backup.step, "backup-secret");
    let id = backup.attempt_id.clone();
    let accepted = pb::AssignmentAck {
        attempt_id: id.clone(),
        decision: pb::AssignmentDecision::Accepted as i32,
        ..Default::default()
    };
    tx.send(msg(A::AssignmentAck(accepted))).await.unwrap();
    let started_kind = pb::step_event::Kind::Started(pb::StepStarted {
        pid: 7,
        command: "ssoconfig -backupSecret".into(),
        ..Default::default()
    });
    let progress = pb::step_event::Kind::Progress(pb::StepProgress {
        percent: 50,
        message: "half".into(),
    });
    // 2, 1, 2 again, 3, 1 again, then the result (5) before 4.
    for e in [
        event(&id, 2, log("two")),
        event(&id, 1, started_kind.clone()),
        event(&id, 2, log("two")),
        event(&id, 3, progress),
        event(&id, 1, started_kind),
        event(&id, 5, succeeded()),
    ] {
        tx.send(msg(e)).await.unwrap();
    }
    // Acknowledged up to 3 (4 is missing), not complete; the result is applied: the next step comes.
    // (Events are acknowledged once written, with the others that arrived with them: possibly after
    // the result was applied, and an early write may acknowledge only what had arrived by then.)
    let mut acks = Vec::new();
    let mut upgrade = None;
    while upgrade.is_none() || !acks.iter().any(|&(up_to, _)| up_to >= 3) {
        match next(&mut inbound).await {
            C::EventAck(ack) if ack.attempt_id == id => acks.push((ack.up_to_seq, ack.complete)),
            C::Assign(a) => upgrade = Some(a),
            C::RefreshFacts(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let Some(upgrade) = upgrade else {
        unreachable!("the loop ends with the assignment")
    };
    assert_eq!(upgrade.step, "upgrade-master");
    assert_eq!(
        upgrade.expected_installer_sha256, sha,
        "the installer preflight read"
    );
    // The inventory says nothing of `install`: attended, Microsoft supporting no silent upgrade.
    assert_eq!(upgrade.install_mode(), pb::InstallMode::Attended);
    assert_eq!(upgrade.params["sso_configure"], "join");
    assert_eq!(acks.last(), Some(&(3, false)), "{acks:?}");
    assert!(
        acks.iter()
            .all(|(up_to, complete)| *up_to <= 3 && !complete),
        "{acks:?}"
    );
    // 4 arrives, then the result again: now all of it is stored, and it is complete.
    tx.send(msg(event(&id, 4, log("four")))).await.unwrap();
    tx.send(msg(event(&id, 5, succeeded()))).await.unwrap();
    let last = loop {
        if let C::EventAck(ack) = next(&mut inbound).await
            && ack.attempt_id == id
            && ack.complete
        {
            break ack;
        }
    };
    assert_eq!(last.up_to_seq, 5);

    // The other steps succeed; the result of the first, delivered once more, changes nothing.
    tx.send(msg(event(&upgrade.attempt_id, 1, succeeded())))
        .await
        .unwrap();
    let verify = assignment(&mut inbound, &tx, &sha).await;
    assert_eq!(verify.step, "verify-master");
    tx.send(msg(A::Facts(facts("3.0.7", None)))).await.unwrap();
    tx.send(msg(event(&id, 5, succeeded()))).await.unwrap();
    tx.send(msg(event(&verify.attempt_id, 1, succeeded())))
        .await
        .unwrap();

    let db_path = fleet.path("state/ssofleet.db");
    let (kinds, attempts, state) = tokio::task::spawn_blocking(move || {
        fleet_tests::eventually(fleet_tests::PATIENCE, "the run finished", || {
            let db = rusqlite::Connection::open_with_flags(
                &db_path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .ok()?;
            let state: String = db
                .query_row("SELECT state FROM runs WHERE id = ?1", [&run_id], |r| {
                    r.get(0)
                })
                .ok()?;
            if state != "succeeded" {
                return None;
            }
            let mut stmt = db
                .prepare("SELECT seq, kind FROM attempt_events WHERE attempt_id = ?1 ORDER BY seq")
                .ok()?;
            let kinds: Vec<(i64, String)> = stmt
                .query_map([&id], |r| Ok((r.get(0)?, r.get(1)?)))
                .ok()?
                .map(Result::unwrap)
                .collect();
            let attempts: i64 = db
                .query_row(
                    "SELECT COUNT(*) FROM attempts WHERE run_id = ?1",
                    [&run_id],
                    |r| r.get(0),
                )
                .ok()?;
            Some((kinds, attempts, state))
        })
    })
    .await
    .unwrap();
    assert_eq!(state, "succeeded");
    assert_eq!(
        kinds,
        [
            (1, "started".to_string()),
            (2, "log".to_string()),
            (3, "progress".to_string()),
            (4, "log".to_string()),
            (5, "finished".to_string()),
        ],
        "each once, in sequence order"
    );
    assert_eq!(
        attempts, 4,
        "preflight, backup, upgrade, verify: each dispatched once"
    );
}
