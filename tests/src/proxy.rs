//! A fault-injecting TCP proxy for tests, in-process on 127.0.0.1: put it between agents and the
//! coordinator and change its [`Fault`] at any moment; the change applies to every connection open
//! through it, and to new ones.
//!
//! - [`Fault::Pass`]: bytes go through.
//! - [`Fault::Delay`]: every chunk waits before it goes on.
//! - [`Fault::CutAfter`]: after that many more bytes (counted over all connections), the connection
//!   that carries them is closed mid-stream (FIN both ways); then the proxy passes again.
//! - [`Fault::Blackhole`]: bytes vanish and nothing is closed, like a dead link; connections made
//!   meanwhile vanish too. Leaving it resets the connections it swallowed from.
//! - [`Fault::Reset`]: the open connections are reset (RST both ways); then the proxy passes again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    Delay(Duration),
    CutAfter(u64),
    Blackhole,
    Reset,
}

pub struct Proxy {
    addr: SocketAddr,
    fault: watch::Sender<Fault>,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

struct Shared {
    /// Bytes still allowed under `CutAfter`.
    budget: AtomicU64,
    connections: AtomicU64,
    /// What each connection saw: (bytes forwarded, bytes swallowed).
    log: Mutex<Vec<String>>,
}

impl Proxy {
    /// Listens on 127.0.0.1 port 0 and forwards every connection to `upstream`.
    pub fn start(upstream: SocketAddr) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("the proxy's runtime")?;
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .context("the proxy's listener")?;
        let addr = listener.local_addr()?;
        let (fault, _) = watch::channel(Fault::Pass);
        let shared = Arc::new(Shared {
            budget: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
        });
        let (faults, state) = (fault.clone(), shared.clone());
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                state.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(connection(client, upstream, faults.clone(), state.clone()));
            }
        });
        Ok(Self {
            addr,
            fault,
            shared,
            runtime: Some(runtime),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn set(&self, fault: Fault) {
        if let Fault::CutAfter(n) = fault {
            self.shared.budget.store(n, Ordering::SeqCst);
        }
        self.fault.send_replace(fault);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// One line per connection that ended: how it ended and how many bytes went through.
    pub fn log(&self) -> Vec<String> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn connection(
    mut client: TcpStream,
    upstream: SocketAddr,
    faults: watch::Sender<Fault>,
    shared: Arc<Shared>,
) {
    let mut fault = faults.subscribe();
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut up, mut down) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let (mut forwarded, mut swallowed) = (0u64, 0u64);
    let end = loop {
        let current = *fault.borrow_and_update();
        if current == Fault::Reset {
            reset(&client, &server);
            // One-shot: later connections pass.
            faults.send_if_modified(|f| std::mem::replace(f, Fault::Pass) == Fault::Reset);
            break "reset";
        }
        let (chunk, to_server) = tokio::select! {
            changed = fault.changed() => {
                if changed.is_err() {
                    break "proxy stopped";
                }
                // Leaving a blackhole: what it swallowed broke this stream; reset it.
                if swallowed > 0 && *fault.borrow() != Fault::Blackhole {
                    reset(&client, &server);
                    break "reset after a blackhole";
                }
                continue;
            }
            n = client.read(&mut up) => match n {
                Ok(0) | Err(_) => break "client closed",
                Ok(n) => (&up[..n], true),
            },
            n = server.read(&mut down) => match n {
                Ok(0) | Err(_) => break "server closed",
                Ok(n) => (&down[..n], false),
            },
        };
        let target = if to_server { &mut server } else { &mut client };
        match current {
            Fault::Pass | Fault::Reset => {}
            Fault::Delay(d) => tokio::time::sleep(d).await,
            Fault::Blackhole => {
                swallowed += chunk.len() as u64;
                continue;
            }
            Fault::CutAfter(_) => {
                let len = chunk.len() as u64;
                let allowed = shared
                    .budget
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
                        Some(b.saturating_sub(len))
                    })
                    .unwrap_or(0);
                if allowed < len {
                    let part = usize::try_from(allowed).unwrap_or(0);
                    let _ = target.write_all(&chunk[..part]).await;
                    forwarded += allowed;
                    let _ = client.shutdown().await;
                    let _ = server.shutdown().await;
                    faults.send_if_modified(|f| {
                        matches!(f, Fault::CutAfter(_)) && {
                            *f = Fault::Pass;
                            true
                        }
                    });
                    break "cut";
                }
            }
        }
        if target.write_all(chunk).await.is_err() {
            break "write failed";
        }
        forwarded += chunk.len() as u64;
    };
    shared
        .log
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(format!(
            "{end} after {forwarded} bytes ({swallowed} swallowed)"
        ));
}

/// Closes both sides with an RST (linger 0), as a reset link would.
fn reset(client: &TcpStream, server: &TcpStream) {
    #[allow(deprecated)]
    {
        let _ = client.set_linger(Some(Duration::ZERO));
        let _ = server.set_linger(Some(Duration::ZERO));
    }
}
