//! The coordinator's accept loop: TCP connections in, established TLS streams out to tonic, and idle
//! or slow sockets kept from delaying certified callers.
//!
//! The loop never stops accepting: a caller left in the kernel's backlog waits behind whatever holds
//! the slots, however idle (issue 18: 600 sockets that never started TLS made `fleetctl nodes` take
//! over 5 s). Instead a connection is admitted at once and, at a cap, an older idle one gives way
//! (`pending.rs`: a handshake under way never does). A connection must send its first bytes soon and finish its handshake a little
//! later; one that does neither is closed. Those closings are summed up per address (`drops.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use super::drops::{DropLog, Dropped, Quoted};
use super::pending::{Caps, Pending};

/// The deadlines and caps of the accept loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub first_bytes: Duration,
    pub handshake: Duration,
    pub caps: Caps,
    pub log_interval: Duration,
}

impl Limits {
    pub(super) const DEFAULT: Limits = Limits {
        // A real client sends its ClientHello the moment TCP connects. 3 s still covers a lost
        // segment retransmitted twice (1 s, then 2 s, on a new connection) and a stalled scheduler.
        first_bytes: Duration::from_secs(3),
        // The whole handshake, from the accept: two round trips and a client certificate check. During
        // an attach storm (10,000 agents reconnecting to a saturated coordinator, BENCHMARKS.md) one
        // can wait seconds for the CPU; a deadline shorter than that turns load into retries.
        handshake: Duration::from_secs(10),
        caps: Caps {
            // Half of the total: one address (a NAT in front of a site, or the scale benchmark's local
            // agents reconnecting at once) keeps that many handshakes going, more than two cores
            // progress at once, and never takes more than half of the slots from everyone else.
            per_address: 256,
            // A descriptor each: half of the common default soft limit of 1,024 open files, the other
            // half for established connections, the state database and logs.
            total: 512,
        },
        // A flood costs at most one line per interval per address (after one line of its own).
        log_interval: Duration::from_secs(30),
    };
}

/// A handshake in flight: dropping it (its sender) closes the connection.
struct Slot {
    peer: SocketAddr,
    _evict: oneshot::Sender<()>,
}

/// What a handshake task tells the loop.
enum Event {
    /// The peer sent its first bytes.
    Started(u64),
    /// The handshake ended; `dropped` when it is one for the summary rather than its own line.
    Done {
        id: u64,
        peer: SocketAddr,
        dropped: Option<Dropped>,
    },
}

type Incoming = ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>>;

pub(crate) fn tls_incoming_with(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: Limits,
) -> Incoming {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), limits, tx));
    ReceiverStream::new(rx)
}

type Established = mpsc::Sender<Result<TlsStream<TcpStream>, std::io::Error>>;

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: Limits,
    tx: Established,
) {
    // Each task sends at most two events, and tasks are bounded by the caps: unbounded is bounded.
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut pending: Pending<Slot> = Pending::new(limits.caps);
    let mut drops = DropLog::new(Quoted {
        first_bytes: limits.first_bytes,
        handshake: limits.handshake,
        caps: limits.caps,
        interval: limits.log_interval,
    });
    let mut tick = tokio::time::interval(limits.log_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut accept_failures = 0u64;
    loop {
        tokio::select! {
            () = tx.closed() => return,
            Some(event) = events.recv() => match event {
                Event::Started(id) => pending.started(id),
                Event::Done { id, peer, dropped } => {
                    // Not in `pending` any more: it gave way, and was counted then.
                    if pending.finish(id)
                        && let Some(why) = dropped
                        && let Some(line) = drops.record(peer, why)
                    {
                        tracing::warn!(%peer, "{line}");
                    }
                }
            },
            _ = tick.tick() => {
                for line in drops.flush() {
                    tracing::warn!("{line}");
                }
                if accept_failures > 1 {
                    tracing::warn!("accepting a TCP connection failed {accept_failures} times in the last {:?}", limits.log_interval);
                }
                accept_failures = 0;
            }
            // Full of handshakes under way (none idle to give way): the kernel's backlog holds the
            // newcomers until one ends.
            accepted = listener.accept(), if pending.can_admit() => match accepted {
                Ok((tcp, peer)) => {
                    let (evict, evicted) = oneshot::channel();
                    let (id, gave_way) = match pending.admit(peer.ip(), Slot { peer, _evict: evict }) {
                        Ok(admitted) => admitted,
                        Err(refused) => {
                            // Its address has its share of handshakes under way: closed, it retries.
                            drop(refused);
                            drop(tcp);
                            if let Some(line) = drops.record(peer, Dropped::Evicted) {
                                tracing::warn!(%peer, "{line}");
                            }
                            continue;
                        }
                    };
                    for old in gave_way {
                        // Dropping its slot tells the task; its own Done is then ignored.
                        let peer = old.peer;
                        drop(old);
                        if let Some(line) = drops.record(peer, Dropped::Evicted) {
                            tracing::warn!(%peer, "{line}");
                        }
                    }
                    let acceptor = acceptor.clone();
                    let (tx, events) = (tx.clone(), events_tx.clone());
                    tokio::spawn(async move {
                        let outcome = tokio::select! {
                            _ = evicted => return,
                            outcome = handshake(&acceptor, tcp, id, &events, limits) => outcome,
                        };
                        let dropped = match outcome {
                            Ok(stream) => {
                                let _ = events.send(Event::Done { id, peer, dropped: None });
                                let _ = tx.send(Ok(stream)).await;
                                return;
                            }
                            Err(Failure::Dropped(why)) => Some(why),
                            Err(Failure::Closed) => {
                                tracing::debug!(%peer, "connection from {peer} closed before sending anything");
                                None
                            }
                            Err(Failure::Refused(e)) => {
                                super::log_refused(peer, &e);
                                None
                            }
                        };
                        let _ = events.send(Event::Done { id, peer, dropped });
                    });
                }
                Err(e) => {
                    // Out of file descriptors or memory: free one (an idle socket first) and wait a
                    // little rather than spin. The first failure of an interval has a line of its own.
                    if !matches!(e.kind(), std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset) {
                        drop(pending.evict_one());
                        if accept_failures == 0 {
                            tracing::warn!(error = %e, "accepting a TCP connection failed: {e}");
                        }
                        accept_failures += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            },
        }
    }
}

enum Failure {
    Dropped(Dropped),
    /// The peer closed before sending a byte (a port check).
    Closed,
    Refused(std::io::Error),
}

async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    id: u64,
    events: &mpsc::UnboundedSender<Event>,
    limits: Limits,
) -> Result<TlsStream<TcpStream>, Failure> {
    let accepted = Instant::now();
    let _ = tcp.set_nodelay(true);
    match tokio::time::timeout(limits.first_bytes, client_hello_record(&tcp)).await {
        Err(_) => return Err(Failure::Dropped(Dropped::Silent)),
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => return Err(Failure::Closed),
        // Not TLS at all: counted with the silent ones (no ClientHello), not a line each.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Err(Failure::Dropped(Dropped::Silent));
        }
        Ok(Err(e)) => return Err(Failure::Refused(e)),
    }
    let _ = events.send(Event::Started(id));
    let accept = acceptor.accept(tcp).into_fallible();
    match tokio::time::timeout_at(accepted + limits.handshake, accept).await {
        Err(_) => Err(Failure::Dropped(Dropped::Slow)),
        Ok(Err((e, tcp))) => {
            linger(tcp).await;
            Err(Failure::Refused(e))
        }
        Ok(Ok(stream)) => Ok(stream),
    }
}

/// Waits, without consuming it, until the client's first TLS record (its ClientHello) has arrived
/// whole: only then is the connection "started" and no longer gives way at a cap (`pending.rs`). A
/// real client sends it at once; a peer that sends a byte and stalls stays idle. False when the peer
/// closed first; an error when what it sends is not a TLS handshake record.
async fn client_hello_record(tcp: &TcpStream) -> std::io::Result<bool> {
    /// A record's header: content type, version, length; a handshake record is type 22.
    const HEADER: usize = 5;
    const HANDSHAKE: u8 = 22;
    /// The largest plaintext record TLS allows (RFC 8446 §5.1).
    const MAX_RECORD: usize = 1 << 14;
    let mut buf = vec![0u8; HEADER + MAX_RECORD];
    loop {
        let n = tcp.peek(&mut buf).await?;
        if n == 0 {
            return Ok(false);
        }
        if n >= HEADER {
            let length = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
            if buf[0] != HANDSHAKE || length > MAX_RECORD {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "what it sent is not a TLS handshake",
                ));
            }
            if n >= HEADER + length {
                return Ok(true);
            }
        }
        // `peek` returns at once while unread bytes wait: look again a little later for the rest.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// After a refusal: the alert that says why is written; close gently so that the client reads it.
/// Closing with its unread bytes (in TLS 1.3, the client already sends its first request) would
/// reset the connection and discard the alert: the client would see "broken pipe", not "expired".
async fn linger(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        let mut left = LINGER_BYTES;
        while left > 0 {
            match tcp.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// How long, and how much, a refused client may still send before its connection is closed.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;
