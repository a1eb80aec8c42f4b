//! Every identity that must be refused is refused, with a clear line in the coordinator's log.

use std::sync::Arc;
use std::time::Duration;

use fleet_proto::identity::Role;
use fleet_proto::pb;
use fleet_proto::tls::{TlsFiles, TlsMaterial};
use fleet_tests::{Agent, AgentSpec, Coordinator, CoordinatorOptions, Fleet, fleetctl, path_str};

use crate::FLEET;

fn started() -> (Fleet, Coordinator) {
    let fleet = Fleet::new().unwrap();
    fleet.write("fleet.toml", FLEET).unwrap();
    let coordinator =
        Coordinator::start(&fleet, "127.0.0.1:0", &CoordinatorOptions::default()).unwrap();
    (fleet, coordinator)
}

#[test]
fn an_agent_certificate_from_another_ca_is_refused() {
    let (fleet, coordinator) = started();
    fleet.certs_init("other-ca").unwrap();
    // The agent trusts our CA (so it accepts the coordinator) but holds a certificate of another CA.
    let tls = fleet
        .issue_agent("other-ca", "a1", "agents/a1/tls")
        .unwrap();
    std::fs::copy(fleet.path("tls/ca.pem"), tls.join("ca.pem")).unwrap();
    let agent = Agent::start(
        &fleet,
        &AgentSpec {
            node: "a1",
            tls_rel: "agents/a1/tls",
            coordinator: &coordinator.url(),
            version: "3.0.6",
        },
    )
    .unwrap();
    let line = coordinator
        .process
        .wait_for_log("refused TLS connection from 127.0.0.1");
    assert!(line.contains("not issued by this fleet's CA"), "{line}");
    let line = agent
        .process
        .wait_for_log("the coordinator refused this certificate");
    assert!(
        line.contains(
            "it was not issued by the coordinator's CA; issue a new one with `fleetctl certs issue`"
        ),
        "{line}"
    );
    assert_eq!(coordinator.node(&fleet, "a1").unwrap()["attached"], false);
}

#[test]
fn an_agent_whose_certificate_names_another_node_is_refused() {
    let (fleet, coordinator) = started();
    fleet.issue_agent("tls", "a1", "agents/a2/tls").unwrap();
    let agent = Agent::start(
        &fleet,
        &AgentSpec {
            node: "a2",
            tls_rel: "agents/a2/tls",
            coordinator: &coordinator.url(),
            version: "3.0.6",
        },
    )
    .unwrap();
    let line = coordinator
        .process
        .wait_for_log("refused agent from 127.0.0.1");
    assert!(
        line.contains("its certificate is for node a1 but its configuration says node \"a2\""),
        "{line}"
    );
    let line = agent
        .process
        .wait_for_log("the coordinator refused this agent");
    assert!(
        line.contains("this certificate is for node a1, but agent.toml says node \"a2\""),
        "{line}"
    );
    let nodes = coordinator.nodes(&fleet).unwrap();
    assert!(nodes.iter().all(|n| n["attached"] == false), "{nodes:?}");
}

#[test]
fn a_node_that_is_not_in_the_inventory_is_refused() {
    let (fleet, coordinator) = started();
    fleet
        .issue_agent("tls", "stranger", "agents/stranger/tls")
        .unwrap();
    let agent = Agent::start(
        &fleet,
        &AgentSpec {
            node: "stranger",
            tls_rel: "agents/stranger/tls",
            coordinator: &coordinator.url(),
            version: "",
        },
    )
    .unwrap();
    let line = coordinator.process.wait_for_log("refused agent stranger");
    assert!(
        line.contains("node stranger is not in the inventory"),
        "{line}"
    );
    agent
        .process
        .wait_for_log("node stranger is not in the coordinator's inventory");
}

#[test]
fn an_agent_certificate_on_the_operator_service_is_refused_and_fleetctl_exits_3() {
    let (fleet, coordinator) = started();
    let agent_tls = fleet.issue_agent("tls", "a1", "agent-as-operator").unwrap();
    std::fs::rename(agent_tls.join("agent.pem"), agent_tls.join("operator.pem")).unwrap();
    std::fs::rename(
        agent_tls.join("agent-key.pem"),
        agent_tls.join("operator-key.pem"),
    )
    .unwrap();
    let o = fleetctl(&[
        "--coordinator",
        &coordinator.url(),
        "--tls-dir",
        path_str(&agent_tls).unwrap(),
        "nodes",
    ]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("refused this certificate"), "{stderr}");
    let line = coordinator.process.wait_for_log("on the operator service");
    assert!(
        line.contains("refused spiffe://ssofleet.local/agent/a1"),
        "{line}"
    );
    assert!(
        line.contains("only operator certificates may use it"),
        "{line}"
    );
}

#[test]
fn an_operator_certificate_from_another_ca_or_no_coordinator_exits_3() {
    let (fleet, coordinator) = started();
    let other = fleet.certs_init("other-ca").unwrap();
    // Trusts our CA, presents the other CA's operator certificate.
    std::fs::copy(fleet.path("tls/ca.pem"), other.join("ca.pem")).unwrap();
    let o = fleetctl(&[
        "--coordinator",
        &coordinator.url(),
        "--tls-dir",
        path_str(&other).unwrap(),
        "nodes",
    ]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    coordinator
        .process
        .wait_for_log("refused TLS connection from 127.0.0.1");

    // Nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let o = fleetctl(&[
        "--coordinator",
        &format!("https://{closed}"),
        "--tls-dir",
        path_str(&fleet.path("tls")).unwrap(),
        "nodes",
    ]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot connect"),
        "{o:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_certificate_on_the_agent_service_is_refused() {
    let (fleet, coordinator) = tokio::task::spawn_blocking(started).await.unwrap();
    let material = TlsMaterial::load(
        &TlsFiles::in_dir(&fleet.path("tls"), "operator"),
        Role::Operator,
    )
    .unwrap();
    let config = material
        .client_config(material.coordinator_identity())
        .unwrap();
    let channel =
        fleet_proto::transport::connect(&coordinator.url(), config, Duration::from_secs(10))
            .await
            .unwrap();
    let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
    let hello = pb::AgentMessage {
        body: Some(pb::agent_message::Body::Hello(pb::Hello {
            node: "a1".into(),
            ..Default::default()
        })),
    };
    let status = client
        .attach(tokio_stream::iter(vec![hello]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let line = coordinator.process.wait_for_log("on the agent service");
    assert!(
        line.contains("refused spiffe://ssofleet.local/operator/admin"),
        "{line}"
    );
    assert_eq!(coordinator.node(&fleet, "a1").unwrap()["attached"], false);
}

/// A server with a valid certificate of the fleet CA for 127.0.0.1 that names an operator, not the
/// coordinator: the agent must not attach to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_accepts_only_the_coordinator_identity() {
    let fleet = Fleet::new().unwrap();
    fleet.issue_agent("tls", "a1", "agents/a1/tls").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let incoming = fleet_proto::transport::tls_incoming(listener, impostor_server_config(&fleet));
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::agent_service_server::AgentServiceServer::new(
                Unreachable,
            ))
            .serve_with_incoming(incoming),
    );
    let agent_url = url.clone();
    let (fleet, line) = tokio::task::spawn_blocking(move || {
        let agent = Agent::start(
            &fleet,
            &AgentSpec {
                node: "a1",
                tls_rel: "agents/a1/tls",
                coordinator: &agent_url,
                version: "",
            },
        )
        .unwrap();
        let line = agent
            .process
            .wait_for_log("names spiffe://ssofleet.local/operator/admin");
        (fleet, line)
    })
    .await
    .unwrap();
    assert!(
        line.contains("names spiffe://ssofleet.local/operator/admin, expected spiffe://ssofleet.local/coordinator"),
        "{line}"
    );
    assert!(!line.contains("UnexpectedPeer {"), "{line}");
    let stderr = tokio::task::spawn_blocking(move || {
        let tls = fleet.path("tls");
        let o = fleetctl(&[
            "--coordinator",
            &url,
            "--tls-dir",
            path_str(&tls).unwrap(),
            "nodes",
        ]);
        assert_eq!(o.status.code(), Some(3), "{o:?}");
        String::from_utf8_lossy(&o.stderr).into_owned()
    })
    .await
    .unwrap();
    assert!(
        stderr.contains("names spiffe://ssofleet.local/operator/admin, expected spiffe://ssofleet.local/coordinator"),
        "{stderr}"
    );
    assert!(
        stderr.contains("check that the URL names this fleet's coordinator"),
        "{stderr}"
    );
    assert!(!stderr.contains("UnexpectedPeer {"), "{stderr}");
    server.abort();
}

/// A TLS server configuration presenting a fleet-CA certificate for 127.0.0.1 that names an operator.
fn impostor_server_config(fleet: &Fleet) -> Arc<rustls::ServerConfig> {
    let ca_pem = std::fs::read_to_string(fleet.path("tls/ca.pem")).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(fleet.path("tls/ca-key.pem")).unwrap())
            .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://ssofleet.local/operator/admin".try_into().unwrap(),
    ));
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let dir = fleet.path("impostor-server");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.pem"), &ca_pem).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server-key.pem"), key.serialize_pem()).unwrap();
    TlsMaterial::load_any_role(&TlsFiles::in_dir(&dir, "server"))
        .unwrap()
        .server_config()
        .unwrap()
}

struct Unreachable;

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for Unreachable {
    type AttachStream = tokio_stream::Empty<Result<pb::CoordinatorMessage, tonic::Status>>;

    async fn attach(
        &self,
        _request: tonic::Request<tonic::Streaming<pb::AgentMessage>>,
    ) -> Result<tonic::Response<Self::AttachStream>, tonic::Status> {
        panic!("the agent must not get this far: the TLS handshake has to fail");
    }
}
