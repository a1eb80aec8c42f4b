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
use tokio_rustls::TlsConnector;
use tokio_rustls::server::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::tls::{explain, explain_to_client};

mod accept;
mod drops;
mod pending;
mod verdict;

#[cfg(test)]
mod tests;

/// Accepts TCP connections on `listener`, performs the TLS handshake of each in its own task, and
/// yields the established streams, ready for `Server::serve_with_incoming`. Refused handshakes are
/// logged with the peer address and the reason; idle and slow sockets neither stop the loop nor
/// delay other callers (`accept.rs`). The accept loop ends when the returned stream is dropped.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    accept::tls_incoming_with(listener, config, accept::Limits::DEFAULT)
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

/// The TLS error somewhere in `error`'s `source()` chain (an `std::io::Error` hides its inner error
/// from the chain: it is looked into too).
fn find_tls<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        current = e.source();
    }
    None
}

/// When `error` (a client's failed connection or call) is a failed TLS handshake with the
/// coordinator: why, in words that say what to check. `None` for anything else.
pub fn tls_refusal(error: &(dyn StdError + 'static)) -> Option<String> {
    find_tls(error).map(explain_to_client)
}

/// A failure to reach the coordinator: the URL, or the connection (TCP, TLS, HTTP/2).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("bad coordinator URL {url:?}: {problem}")]
    BadUrl { url: String, problem: String },
    #[error("cannot connect to {url}: {detail}")]
    Unreachable { url: String, detail: String },
    /// The TCP connection was made, and the TLS handshake failed: a certificate refused either way.
    #[error("the TLS handshake with {url} failed: {reason}")]
    Refused { url: String, reason: String },
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
            let stream = verdict::first_bytes(stream).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| match tls_refusal(&e) {
            Some(reason) => ConnectError::Refused {
                url: url.to_string(),
                reason,
            },
            None => ConnectError::Unreachable {
                url: url.to_string(),
                detail: describe_chain(&e),
            },
        })
}

/// The whole `source()` chain of an error on one line; a TLS failure is told alone, in words.
pub fn describe_chain(error: &(dyn StdError + 'static)) -> String {
    if let Some(reason) = tls_refusal(error) {
        return reason;
    }
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

mod http_error {
    pub(super) use tonic::codegen::http::uri::InvalidUri;
}
