//! A real agent process runs the steps a coordinator assigns: numbered events with the result last,
//! an attempt run at most once (across agent restarts too: its journal), unacknowledged events sent
//! again, assignments from an older epoch refused. The coordinator here is a
//! stand-in served by the test over mTLS with the fleet's coordinator certificate.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_proto::identity::Role;
use fleet_proto::pb;
use fleet_proto::pb::agent_message::Body as A;
use fleet_proto::pb::coordinator_message::Body as C;
use fleet_proto::tls::{TlsFiles, TlsMaterial};
use fleet_tests::{Agent, AgentSpec, Fleet, fixture};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

type Outbound = mpsc::Receiver<Result<pb::CoordinatorMessage, tonic::Status>>;

/// Serves one agent stream per queued outbound channel, in order.
struct StandIn {
    inbound: mpsc::Sender<pb::AgentMessage>,
    outbound: Arc<Mutex<VecDeque<Outbound>>>,
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for StandIn {
    type AttachStream = ReceiverStream<Result<pb::CoordinatorMessage, tonic::Status>>;

    async fn attach(
        &self,
        request: tonic::Request<tonic::Streaming<pb::AgentMessage>>,
    ) -> Result<tonic::Response<Self::AttachStream>, tonic::Status> {
        let outbound = self
            .outbound
            .lock()
            .unwrap()
            .pop_front()
            .ok_or_else(|| tonic::Status::unavailable("no stream expected now"))?;
        let mut stream = request.into_inner();
        let inbound = self.inbound.clone();
        tokio::spawn(async move {
            while let Ok(Some(message)) = stream.message().await {
                if inbound.send(message).await.is_err() {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(outbound)))
    }
}

fn send(body: C) -> Result<pb::CoordinatorMessage, tonic::Status> {
    Ok(pb::CoordinatorMessage { body: Some(body) })
}

/// The next message from the agent that is not a heartbeat.
async fn next(rx: &mut mpsc::Receiver<pb::AgentMessage>) -> A {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("a message from the agent")
            .expect("the stream is open");
        match message.body {
            Some(A::Heartbeat(_)) | None => continue,
            Some(body) => return body,
        }
    }
}

fn welcome(epoch: u64) -> Result<pb::CoordinatorMessage, tonic::Status> {
    send(C::Welcome(pb::Welcome {
        epoch,
        heartbeat_interval_ms: 200,
        heartbeat_timeout_ms: 5_000,
        protocol_version: 1,
        ..Default::default()
    }))
}

fn install(attempt_id: &str, epoch: u64) -> C {
    C::Assign(pb::StepAssignment {
        epoch,
        attempt_id: attempt_id.into(),
        run_id: "run-1".into(),
        environment: "dev".into(),
        step: "upgrade-master".into(),
        action: pb::Action::InstallSso as i32,
        params: [("target_version".to_string(), "3.0.7".to_string())].into(),
        timeout_ms: 30_000,
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_runs_an_assigned_step_once_even_across_restarts_and_refuses_a_stale_epoch() {
    let fleet = Fleet::new().unwrap();
    fleet.issue_agent("tls", "a1", "agents/a1/tls").unwrap();
    let coordinator = TlsMaterial::load(
        &TlsFiles::in_dir(&fleet.path("tls"), "coordinator"),
        Role::Coordinator,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let (inbound_tx, mut inbound) = mpsc::channel(1024);
    let (to_agent, outbound) = mpsc::channel(64);
    let streams = Arc::new(Mutex::new(VecDeque::from([outbound])));
    let stand_in = StandIn {
        inbound: inbound_tx,
        outbound: streams.clone(),
    };
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::agent_service_server::AgentServiceServer::new(stand_in))
            .serve_with_incoming(fleet_proto::transport::tls_incoming(
                listener,
                coordinator.server_config().unwrap(),
            )),
    );
    let home = fleet.path("agents/a1/esso");
    let extra = format!(
        "[actions.install_sso]\nprogram = \"{}\"\nargs = [\"{{target_version}}\"]\nenv = {{ FAKE_ESSO_HOME = \"{}\" }}\n",
        fixture("esso-setup").display(),
        home.display()
    );
    let spec = AgentSpec {
        node: "a1",
        tls_rel: "agents/a1/tls",
        coordinator: &url,
        version: "3.0.6",
    };
    let mut agent = Agent::start_with(&fleet, &spec, &extra).unwrap();

    let A::Hello(hello) = next(&mut inbound).await else {
        panic!("no hello first")
    };
    assert_eq!((hello.node.as_str(), hello.highest_epoch_seen), ("a1", 0));
    to_agent.send(welcome(5)).await.unwrap();
    to_agent.send(send(install("att-1", 5))).await.unwrap();

    let A::AssignmentAck(ack) = next(&mut inbound).await else {
        panic!("no ack")
    };
    assert_eq!(
        (ack.attempt_id.as_str(), ack.decision()),
        ("att-1", pb::AssignmentDecision::Accepted)
    );
    let mut events = Vec::new();
    let mut fresh_version = None;
    let finished = loop {
        let event = match next(&mut inbound).await {
            A::Event(event) => event,
            // An install changes the node: its new facts follow the result (below).
            A::Facts(facts) => {
                fresh_version = facts.esso_version;
                continue;
            }
            other => panic!("expected step events, got {other:?}"),
        };
        assert_eq!(event.attempt_id, "att-1");
        events.push(event.seq);
        if let Some(pb::step_event::Kind::Finished(f)) = event.kind {
            break f;
        }
    };
    if fresh_version.is_none() {
        match next(&mut inbound).await {
            A::Facts(facts) => fresh_version = facts.esso_version,
            other => panic!("expected the node's fresh facts after the result, got {other:?}"),
        }
    }
    assert_eq!(
        fresh_version.as_deref(),
        Some("3.0.7"),
        "fresh facts after the install, never holding up its result"
    );
    assert_eq!(
        events,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "numbered with no gap, the result last"
    );
    assert_eq!(
        finished.outcome(),
        pb::StepOutcome::Succeeded,
        "{finished:?}"
    );
    assert_eq!(
        std::fs::read_to_string(home.join("version"))
            .unwrap()
            .trim(),
        "3.0.7"
    );

    // Redelivered: answered from what the agent knows, not run again.
    std::fs::write(home.join("version"), "sentinel\n").unwrap();
    to_agent.send(send(install("att-1", 5))).await.unwrap();
    let A::AssignmentAck(ack) = next(&mut inbound).await else {
        panic!("no ack")
    };
    assert_eq!(ack.decision(), pb::AssignmentDecision::Duplicate);
    assert_eq!(ack.report.unwrap().state(), pb::AttemptState::Finished);

    // From an older coordinator epoch: refused.
    to_agent.send(send(install("att-2", 4))).await.unwrap();
    let A::AssignmentAck(ack) = next(&mut inbound).await else {
        panic!("no ack")
    };
    assert_eq!(ack.decision(), pb::AssignmentDecision::StaleEpoch);
    assert!(
        ack.reason.contains("epoch 4 is older than epoch 5"),
        "{}",
        ack.reason
    );

    // What the agent knows of attempts.
    to_agent
        .send(send(C::AttemptQuery(pb::AttemptQuery {
            attempt_ids: vec!["att-1".into(), "att-9".into()],
            epoch: 5,
        })))
        .await
        .unwrap();
    let A::AttemptReport(r1) = next(&mut inbound).await else {
        panic!("no report")
    };
    let A::AttemptReport(r9) = next(&mut inbound).await else {
        panic!("no report")
    };
    assert_eq!(
        (r1.state(), r9.state()),
        (pb::AttemptState::Finished, pb::AttemptState::Unknown)
    );
    assert_eq!(r1.last_seq, events.len() as u64);
    assert_eq!(
        std::fs::read_to_string(home.join("version"))
            .unwrap()
            .trim(),
        "sentinel",
        "never run twice"
    );

    // The agent restarts. Its journal still holds att-1 (no coordinator said its result is stored)
    // and epoch 5: it reports the attempt in its hello and sends every event again.
    let (to_agent, outbound) = mpsc::channel(64);
    streams.lock().unwrap().push_back(outbound);
    agent.process.kill();
    let mut agent = Agent::start_with(&fleet, &spec, &extra).unwrap();
    let A::Hello(hello) = next(&mut inbound).await else {
        panic!("no hello first")
    };
    assert_eq!(hello.highest_epoch_seen, 5);
    assert_eq!(hello.attempts.len(), 1, "{:?}", hello.attempts);
    assert_eq!(
        (
            hello.attempts[0].attempt_id.as_str(),
            hello.attempts[0].state()
        ),
        ("att-1", pb::AttemptState::Finished)
    );
    to_agent.send(welcome(6)).await.unwrap();
    let mut again = Vec::new();
    while again.len() < events.len() {
        if let A::Event(e) = next(&mut inbound).await {
            again.push(e.seq);
        }
    }
    assert_eq!(again, events, "every unacknowledged event, in order");
    // Delivered again after the restart: still not run.
    to_agent.send(send(install("att-1", 6))).await.unwrap();
    let A::AssignmentAck(ack) = next(&mut inbound).await else {
        panic!("no ack")
    };
    assert_eq!(ack.decision(), pb::AssignmentDecision::Duplicate);

    // Acknowledged as stored and complete: the next hello no longer reports it, and nothing is re-sent.
    to_agent
        .send(send(C::EventAck(pb::EventAck {
            attempt_id: "att-1".into(),
            up_to_seq: events.len() as u64,
            complete: true,
            epoch: 6,
        })))
        .await
        .unwrap();
    // The agent answers queries in order: this one proves the ack above was handled.
    to_agent
        .send(send(C::AttemptQuery(pb::AttemptQuery {
            attempt_ids: vec!["att-1".into()],
            epoch: 6,
        })))
        .await
        .unwrap();
    let A::AttemptReport(report) = next(&mut inbound).await else {
        panic!("no report")
    };
    assert_eq!(report.acked_seq, events.len() as u64);
    let (to_agent, outbound) = mpsc::channel(64);
    streams.lock().unwrap().push_back(outbound);
    agent.process.kill();
    let agent = Agent::start_with(&fleet, &spec, &extra).unwrap();
    let A::Hello(hello) = next(&mut inbound).await else {
        panic!("no hello first")
    };
    assert!(hello.attempts.is_empty(), "{:?}", hello.attempts);
    assert_eq!(hello.highest_epoch_seen, 6);
    to_agent.send(welcome(6)).await.unwrap();
    to_agent.send(send(install("att-1", 6))).await.unwrap();
    let A::AssignmentAck(ack) = next(&mut inbound).await else {
        panic!("no ack: nothing else comes first")
    };
    assert_eq!(ack.decision(), pb::AssignmentDecision::Duplicate);
    assert_eq!(
        std::fs::read_to_string(home.join("version"))
            .unwrap()
            .trim(),
        "sentinel",
        "never run twice"
    );

    drop(agent);
    server.abort();
}
