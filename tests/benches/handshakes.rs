//! Certified callers while idle sockets pile up on the coordinator (issue 18, item 6): N TCP
//! connections from 127.0.0.1 that never start TLS are held open (one reopened, once a second, when
//! the coordinator closes it), and meanwhile 10 `fleetctl nodes` calls, one a second at most, and an
//! agent's re-attach are timed. N is 0, 600 and 1,500.
//!
//! `cargo bench -p fleet-tests --bench handshakes` prints the figures (release binaries:
//! `cargo build --release --bins` first); nothing is asserted on time. Idle sockets take one file
//! descriptor each here: the benchmark checks the open-file limit and says so if it is too low.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fleet_tests::{Agent, Coordinator, CoordinatorOptions, Fleet, fleetctl, path_str};

const FLEET: &str = r#"
[upgrade]
target_version = "3.0.7"
installer = '/media/BizTalk/Setup.exe'

[[environment]]
name = "dev"
master = "a1"
backup_dir = '/backups/dev'
"#;

const IDLE: [usize; 3] = [0, 600, 1500];
const CALLS: usize = 10;
const PACE: Duration = Duration::from_secs(1);

fn main() {
    if let Err(e) = run() {
        eprintln!("handshakes benchmark: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    check_open_files(*IDLE.iter().max().unwrap_or(&0))?;
    let fleet = Fleet::new()?;
    fleet.write("fleet.toml", FLEET)?;
    let options = CoordinatorOptions {
        log: Some("info"),
        heartbeat_interval: "5s",
        heartbeat_timeout: "15s",
        ..CoordinatorOptions::default()
    };
    let coordinator = Coordinator::start(&fleet, "127.0.0.1:0", &options)?;
    for idle in IDLE {
        let flood = Flood::start(coordinator.addr, idle)?;
        // Let the coordinator see them all before the first call.
        std::thread::sleep(Duration::from_millis(500));
        let lines_before = coordinator.process.log_text().lines().count();
        let mut calls = Vec::new();
        let mut failures = Vec::new();
        for _ in 0..CALLS {
            // An operator's pace: a call a second at most, so the calls span the deadlines' cycles.
            let started = Instant::now();
            let (took, failure) = time_nodes(&fleet, &coordinator)?;
            calls.push(took);
            failures.extend(failure);
            std::thread::sleep(PACE.saturating_sub(started.elapsed()));
        }
        let attach = time_attach(&fleet, &coordinator)?;
        let reopened = flood.stop();
        let lines = coordinator.process.log_text().lines().count() - lines_before;
        println!(
            "{idle} idle sockets: fleetctl nodes x{CALLS}: {}; agent re-attach {:.2} s; {reopened} idle sockets reopened after the coordinator closed them; {lines} coordinator log lines",
            summary(&calls, failures.len()),
            attach.as_secs_f64()
        );
        if let Some(first) = failures.first() {
            println!("  first failure: {first}");
        }
    }
    Ok(())
}

/// median, max, how many took over a second, and how many failed.
fn summary(times: &[Duration], failed: usize) -> String {
    let mut sorted = times.to_vec();
    sorted.sort();
    let median = match sorted.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2,
    };
    let max = sorted.last().copied().unwrap_or_default();
    let slow = sorted
        .iter()
        .filter(|t| **t > Duration::from_secs(1))
        .count();
    format!(
        "median {:.2} s, max {:.2} s, {slow} over 1 s, {failed} failed",
        median.as_secs_f64(),
        max.as_secs_f64()
    )
}

/// How long one call took, and its error if it failed (a failure is a figure too, not the end).
fn time_nodes(fleet: &Fleet, coordinator: &Coordinator) -> Result<(Duration, Option<String>)> {
    let started = Instant::now();
    let o = fleetctl(&[
        "--coordinator",
        &coordinator.url(),
        "--tls-dir",
        path_str(&fleet.path("tls"))?,
        "nodes",
    ]);
    let took = started.elapsed();
    let failure =
        (!o.status.success()).then(|| String::from_utf8_lossy(&o.stderr).trim().to_string());
    Ok((took, failure))
}

/// From starting the agent to its `attached to` line; the agent is stopped again afterwards.
fn time_attach(fleet: &Fleet, coordinator: &Coordinator) -> Result<Duration> {
    let started = Instant::now();
    let mut agent = Agent::start_issued(fleet, &coordinator.url(), "a1", "3.0.6")?;
    agent.process.wait_for_log_while_running("attached to ")?;
    let took = started.elapsed();
    agent.process.kill();
    Ok(took)
}

/// `count` idle TCP connections to `addr`, held open by a thread until [`Flood::stop`].
struct Flood {
    stop: Arc<AtomicBool>,
    reopened: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flood {
    fn start(addr: SocketAddr, count: usize) -> Result<Self> {
        let mut sockets = (0..count)
            .map(|_| idle_socket(addr))
            .collect::<Result<Vec<_>>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let reopened = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, reopened) = (stop.clone(), reopened.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_secs(1));
                    for socket in &mut sockets {
                        if closed(socket)
                            && let Ok(fresh) = idle_socket(addr)
                        {
                            *socket = fresh;
                            reopened.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        };
        Ok(Self {
            stop,
            reopened,
            thread: Some(thread),
        })
    }

    /// Closes the sockets; returns how many were reopened.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.reopened.load(Ordering::Relaxed)
    }
}

fn idle_socket(addr: SocketAddr) -> Result<TcpStream> {
    let socket = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Whether the coordinator closed it (end of stream or a reset); it never sends anything else.
fn closed(socket: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match socket.read(&mut byte) {
        Ok(0) => true,
        // Never sent by the coordinator; whatever it is, the socket is no longer idle.
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// Idle sockets cost a descriptor each here; a limit that is too low would measure EMFILE instead.
fn check_open_files(idle: usize) -> Result<()> {
    let needed = idle + 256;
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|soft| soft.parse::<usize>().ok());
    match soft {
        Some(soft) if soft < needed => bail!(
            "the open-file limit is {soft}, and {idle} idle sockets need about {needed}: raise it (`ulimit -n 4096`) and run again"
        ),
        Some(_) => Ok(()),
        None => {
            eprintln!(
                "handshakes benchmark: cannot read the open-file limit; {needed} descriptors are needed"
            );
            Ok(())
        }
    }
}
