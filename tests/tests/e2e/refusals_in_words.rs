//! A TLS refusal seen by a client (fleetctl, an agent) is told in words that say what to check, never
//! as a Rust error structure, and a refused certificate is not "cannot reach the coordinator".

use std::path::Path;

use fleet_tests::{Agent, AgentSpec, Coordinator, CoordinatorOptions, Fleet, fleetctl, path_str};

use crate::FLEET;

/// What a message must not be made of: debug output of rustls and webpki errors.
const RAW: [&str; 7] = [
    "UnexpectedPeer {",
    "EndEntityUsedAsCa",
    "UnknownIssuer",
    "OtherError",
    "AlertReceived",
    "InvalidCertificate",
    "received fatal alert",
];

fn assert_words(text: &str) {
    for raw in RAW {
        assert!(!text.contains(raw), "{raw:?} in: {text}");
    }
}

fn start(fleet: &Fleet) -> Coordinator {
    fleet.write("fleet.toml", FLEET).unwrap();
    Coordinator::start(fleet, "127.0.0.1:0", &CoordinatorOptions::default()).unwrap()
}

/// `fleetctl nodes` with the TLS directory `tls`; its standard error, after checking exit status 3.
fn nodes_refused(coordinator: &Coordinator, tls: &Path) -> String {
    let o = fleetctl(&[
        "--coordinator",
        &coordinator.url(),
        "--tls-dir",
        path_str(tls).unwrap(),
        "nodes",
    ]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn agent(fleet: &Fleet, coordinator: &Coordinator, tls_rel: &str) -> Agent {
    Agent::start(
        fleet,
        &AgentSpec {
            node: "a1",
            tls_rel,
            coordinator: &coordinator.url(),
            version: "3.0.6",
        },
    )
    .unwrap()
}

/// A certificate of the fleet CA in `fleet/tls`, with `customize` applied; (certificate, key) PEM.
fn issue(
    fleet: &Fleet,
    issuer: (&str, &str),
    customize: impl FnOnce(&mut rcgen::CertificateParams),
) -> (String, String) {
    let ca_pem = std::fs::read_to_string(fleet.path(issuer.0)).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(fleet.path(issuer.1)).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.use_authority_key_identifier_extension = true;
    customize(&mut params);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn uri(text: &str) -> rcgen::SanType {
    rcgen::SanType::URI(text.try_into().unwrap())
}

#[test]
fn a_coordinator_certificate_from_another_ca_is_told_in_words() {
    let fleet = Fleet::new().unwrap();
    let coordinator = start(&fleet);
    let other = fleet.certs_init("other-ca").unwrap();
    // Our operator certificate, but the other CA as the one to trust.
    let tls = fleet.path("trusts-other");
    std::fs::create_dir_all(&tls).unwrap();
    std::fs::copy(other.join("ca.pem"), tls.join("ca.pem")).unwrap();
    for file in ["operator.pem", "operator-key.pem"] {
        std::fs::copy(fleet.path("tls").join(file), tls.join(file)).unwrap();
    }
    let stderr = nodes_refused(&coordinator, &tls);
    assert_words(&stderr);
    assert!(
        stderr.contains("was not issued by the CA in ca.pem"),
        "{stderr}"
    );
    assert!(
        stderr.contains("check that ca.pem is this fleet's CA"),
        "{stderr}"
    );

    let agent_tls = fleet.issue_agent("tls", "a1", "agents/a1/tls").unwrap();
    std::fs::copy(other.join("ca.pem"), agent_tls.join("ca.pem")).unwrap();
    let agent = agent(&fleet, &coordinator, "agents/a1/tls");
    let line = agent
        .process
        .wait_for_log("was not issued by the CA in ca.pem");
    assert_words(&line);
}

#[test]
fn a_coordinator_certificate_signed_by_an_end_entity_is_told_in_words() {
    let fleet = Fleet::new().unwrap();
    // The coordinator's certificate signed with the operator's key, as if the operator's were a CA.
    let (leaf, key) = issue(&fleet, ("tls/operator.pem", "tls/operator-key.pem"), |p| {
        p.subject_alt_names = vec![
            rcgen::SanType::DnsName("localhost".try_into().unwrap()),
            rcgen::SanType::IpAddress([127, 0, 0, 1].into()),
            uri("spiffe://ssofleet.local/coordinator"),
        ];
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    });
    let operator = std::fs::read_to_string(fleet.path("tls/operator.pem")).unwrap();
    fleet
        .write("tls/coordinator.pem", &(leaf + &operator))
        .unwrap();
    fleet.write("tls/coordinator-key.pem", &key).unwrap();
    let coordinator = start(&fleet);

    let stderr = nodes_refused(&coordinator, &fleet.path("tls"));
    assert_words(&stderr);
    assert!(stderr.contains("is not a CA"), "{stderr}");

    fleet.issue_agent("tls", "a1", "agents/a1/tls").unwrap();
    let agent = agent(&fleet, &coordinator, "agents/a1/tls");
    let line = agent.process.wait_for_log("is not a CA");
    assert_words(&line);
}

#[test]
fn an_expired_client_certificate_is_a_refusal_not_an_unreachable_coordinator() {
    let fleet = Fleet::new().unwrap();
    let coordinator = start(&fleet);
    let expired = |who: &str| {
        issue(&fleet, ("tls/ca.pem", "tls/ca-key.pem"), |p| {
            p.subject_alt_names = vec![uri(&format!("spiffe://ssofleet.local/{who}"))];
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2020, 1, 2);
        })
    };

    let (cert, key) = expired("operator/admin");
    let ca = std::fs::read_to_string(fleet.path("tls/ca.pem")).unwrap();
    fleet.write("expired/ca.pem", &ca).unwrap();
    fleet.write("expired/operator.pem", &cert).unwrap();
    fleet.write("expired/operator-key.pem", &key).unwrap();
    let stderr = nodes_refused(&coordinator, &fleet.path("expired"));
    assert_words(&stderr);
    assert!(!stderr.contains("cannot reach"), "{stderr}");
    assert!(!stderr.contains("cannot connect"), "{stderr}");
    assert!(
        stderr.contains("the coordinator refused this certificate: it has expired"),
        "{stderr}"
    );
    assert!(stderr.contains("fleetctl certs issue"), "{stderr}");
    coordinator
        .process
        .wait_for_log("the peer's certificate has expired");

    let (cert, key) = expired("agent/a1");
    fleet.write("agents/a1/tls/ca.pem", &ca).unwrap();
    fleet.write("agents/a1/tls/agent.pem", &cert).unwrap();
    fleet.write("agents/a1/tls/agent-key.pem", &key).unwrap();
    let agent = agent(&fleet, &coordinator, "agents/a1/tls");
    let line = agent
        .process
        .wait_for_log("the coordinator refused this certificate: it has expired");
    assert_words(&line);
    assert!(!line.contains("lost"), "{line}");
}
