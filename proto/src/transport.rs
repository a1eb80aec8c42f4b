//! TLS transport for tonic: the coordinator's accept loop and the clients' connector.
//!
//! ssofleet terminates TLS itself (tokio-rustls) rather than through tonic's `ServerTlsConfig`, for two
//! reasons: a refused handshake (a certificate from another CA, no certificate) must leave a clear log
//! line naming the peer address, and clients must check the server's URI SAN identity, which needs a
//! custom rustls verifier. tonic still sees a `tokio_rustls` stream, so `Request::peer_certs()` works.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::tls::explain;

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once: unauthenticated peers cannot take every file descriptor.
const MAX_HANDSHAKES: usize = 512;

/// Accepts TCP connections on `listener`, performs the TLS handshake of each in its own task, and
/// yields the established streams, ready for `Server::serve_with_incoming`. Refused handshakes are
/// logged with the peer address and the reason. The accept loop ends when the returned stream is dropped.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            // At the limit, stop accepting until a handshake finishes: the kernel's backlog holds the rest.
            let permit = tokio::select! {
                () = tx.closed() => return,
                permit = handshakes.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let (tcp, peer) = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little rather than spin.
                        tracing::warn!(error = %e, "accepting a TCP connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                drop(permit);
                match handshake {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => log_refused(peer, &e),
                    Err(_) => tracing::warn!(
                        %peer,
                        "refused TLS connection from {peer}: no TLS handshake within {HANDSHAKE_TIMEOUT:?}"
                    ),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

fn log_refused(peer: SocketAddr, error: &std::io::Error) {
    let reason = describe_io(error);
    tracing::warn!(%peer, "refused TLS connection from {peer}: {reason}");
}

fn describe_io(error: &std::io::Error) -> String {
    match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(tls) => explain(tls),
        None => error.to_string(),
    }
}

/// A failure to reach the coordinator: the URL, or the connection (TCP, TLS, HTTP/2).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("bad coordinator URL {url:?}: {problem}")]
    BadUrl { url: String, problem: String },
    #[error("cannot connect to {url}: {detail}")]
    Unreachable { url: String, detail: String },
}

/// Opens an HTTP/2 channel to `url` (`https://host:port`) over mutual TLS with `tls`.
pub async fn connect(
    url: &str,
    tls: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
) -> Result<Channel, ConnectError> {
    let bad = |problem: &str| ConnectError::BadUrl {
        url: url.to_string(),
        problem: problem.to_string(),
    };
    let uri: Uri = url
        .parse()
        .map_err(|e: http_error::InvalidUri| bad(&e.to_string()))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad(
            "the scheme must be https:// (there is no plaintext mode)",
        ));
    }
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let server_name = ServerName::try_from(host.clone()).map_err(|e| bad(&e.to_string()))?;
    // tonic refuses https:// URIs on a custom connector (it would add its own TLS): TLS is ours, so the
    // endpoint is named with http:// while the connector below speaks TLS.
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or(&host);
    let endpoint = Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|e| bad(&e.to_string()))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        // HTTP/2 pings find a connection that died without a FIN (host crash, NAT or VPN drop).
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let connector = tower::service_fn(move |_: Uri| {
        let tls = TlsConnector::from(tls.clone());
        let host = host.clone();
        let server_name = server_name.clone();
        async move {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let stream = tls.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| ConnectError::Unreachable {
            url: url.to_string(),
            detail: describe_chain(&e),
        })
}

/// The whole `source()` chain of an error on one line, with TLS errors explained.
pub fn describe_chain(error: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = current {
        let text = if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            explain(tls)
        } else if let Some(io) = e.downcast_ref::<std::io::Error>() {
            describe_io(io)
        } else {
            e.to_string()
        };
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

mod http_error {
    pub use tonic::codegen::http::uri::InvalidUri;
}
