//! The accept loop against real sockets: idle ones from one address do not keep a TLS client out.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_stream::StreamExt;

use super::accept::{Limits, tls_incoming_with};
use super::pending::Caps;
use crate::identity::Role;
use crate::tls::{TlsFiles, TlsMaterial};

/// A generous bound for what takes milliseconds: the machine running the tests may be loaded.
const PATIENCE: Duration = Duration::from_secs(20);

/// A CA, the coordinator's certificate and an operator's, in `dir`.
fn material(dir: &std::path::Path) -> (TlsMaterial, TlsMaterial) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let issue = |stem: &str, uri: &str, role: Role| {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::URI(uri.try_into().unwrap()));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{stem}-key.pem")), key.serialize_pem()).unwrap();
        TlsMaterial::load(&TlsFiles::in_dir(dir, stem), role).unwrap()
    };
    (
        issue(
            "coordinator",
            "spiffe://t.example/coordinator",
            Role::Coordinator,
        ),
        issue(
            "operator",
            "spiffe://t.example/operator/admin",
            Role::Operator,
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_past_the_cap_give_way_to_a_tls_client_from_the_same_address() {
    let dir = tempfile::tempdir().unwrap();
    let (coordinator, operator) = material(dir.path());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Deadlines far beyond the test's patience: only giving way can let the client in.
    let limits = Limits {
        first_bytes: Duration::from_secs(3600),
        handshake: Duration::from_secs(3600),
        caps: Caps {
            per_address: 8,
            total: 16,
        },
        log_interval: Duration::from_secs(3600),
    };
    let mut incoming = tls_incoming_with(listener, coordinator.server_config().unwrap(), limits);

    // Every other one sends the first bytes of a TLS record and stalls: not a whole ClientHello, so
    // it counts as idle too (one byte must not make a socket hold its slot).
    const IDLE: usize = 40;
    let mut idle = Vec::new();
    for i in 0..IDLE {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        if i % 2 == 1 {
            socket.write_all(&[22, 3, 1]).await.unwrap();
        }
        idle.push(socket);
    }
    let connector = TlsConnector::from(
        operator
            .client_config(operator.coordinator_identity())
            .unwrap(),
    );
    let handshake = async {
        let tcp = TcpStream::connect(addr).await?;
        connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    };
    let (client, server) =
        tokio::time::timeout(PATIENCE, async { tokio::join!(handshake, incoming.next()) })
            .await
            .expect(
                "the TLS client did not get in while idle sockets from its address held every slot",
            );
    client.unwrap();
    let stream = server.unwrap().unwrap();
    assert!(stream.get_ref().1.peer_certificates().is_some());

    // The oldest idle sockets were closed to make room: all but the last 8 (the cap), and one more
    // for the client. The kernel accepts in order of arrival.
    for (i, socket) in idle.iter_mut().take(IDLE - 8 + 1).enumerate() {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(PATIENCE, socket.read(&mut byte))
            .await
            .unwrap_or_else(|_| panic!("idle socket {i} is still open"));
        assert!(matches!(read, Ok(0) | Err(_)), "idle socket {i}: {read:?}");
    }
}
