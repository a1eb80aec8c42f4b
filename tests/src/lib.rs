//! Harness for ssofleet's end-to-end tests: starts the real `fleet-coordinator`, `fleet-agent` and
//! `fleetctl` binaries on 127.0.0.1 port 0, with certificates made per test by `fleetctl certs`, each
//! process logging to a file in the test's temporary directory. Processes are killed when dropped.
//!
//! The binaries are the workspace's own, found next to the test executable (`target/<profile>/`);
//! `cargo test --workspace` builds them before any test runs.
#![forbid(unsafe_code)]
// A harness fails the test it serves by panicking, with a message that says what was missing.
#![allow(clippy::expect_used)]

pub mod proxy;
pub mod tds;
pub mod wine;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fleet_agent::config::written;

/// A generous bound for things that happen in milliseconds on an idle machine: CI machines are shared.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The path of one of the workspace's binaries.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let built = std::fs::metadata(&path).and_then(|m| m.modified());
    let Ok(built) = built else {
        panic!(
            "{} is missing: build the binaries first (`cargo test --workspace` does, or `cargo build --workspace --bins`)",
            path.display()
        );
    };
    // `cargo test -p fleet-tests` alone does not rebuild the other packages' binaries: never test old ones.
    let crates: &[&str] = match name {
        "fleet-agent" => &["coordinator/core", "proto", "node-agent"],
        "fleet-coordinator" => &["coordinator/core", "proto", "coordinator"],
        _ => &[
            "coordinator/core",
            "proto",
            "coordinator",
            "node-agent",
            "cli",
        ],
    };
    if let Some((source, changed)) = newest_source(crates) {
        assert!(
            built >= changed,
            "{} is older than {}: rebuild with `cargo test --workspace` (or `cargo build --workspace --bins`)",
            path.display(),
            source.display()
        );
    }
    path
}

/// The most recently modified source file of the given workspace crates (what a binary is built from).
fn newest_source(crates: &[&str]) -> Option<(PathBuf, std::time::SystemTime)> {
    type Newest = Option<(PathBuf, std::time::SystemTime)>;
    static CACHE: std::sync::Mutex<Vec<(String, Newest)>> = std::sync::Mutex::new(Vec::new());
    let key = crates.join(",");
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, found)) = cache.iter().find(|(k, _)| *k == key) {
        return found.clone();
    }
    let found = (|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
        let mut newest: Option<(PathBuf, std::time::SystemTime)> = None;
        // What a binary is built from: sources, build script, .proto files, manifest (not its tests).
        let mut stack: Vec<PathBuf> = crates
            .iter()
            .flat_map(|c| {
                ["src", "proto", "build.rs", "Cargo.toml"].map(|part| root.join(c).join(part))
            })
            .filter(|p| p.exists())
            .collect();
        while let Some(path) = stack.pop() {
            if path.is_dir() {
                stack.extend(
                    std::fs::read_dir(&path)
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(|e| e.path()),
                );
            } else if path
                .extension()
                .is_some_and(|e| e == "rs" || e == "proto" || e == "toml")
                // Unit tests (`tests.rs`, `*/tests/*.rs`) are not part of a binary.
                && path.file_name().is_none_or(|n| n != "tests.rs")
                && !path.parent().is_some_and(|p| p.ends_with("tests"))
                && let Ok(modified) = std::fs::metadata(&path).and_then(|m| m.modified())
                && newest.as_ref().is_none_or(|(_, t)| modified > *t)
            {
                newest = Some((path, modified));
            }
        }
        newest
    })();
    cache.push((key, found.clone()));
    found
}

/// The fixture scripts that stand in for Windows tools.
pub fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

/// Their folder, `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Polls `check` until it returns `Some`, or fails after `within` with `what` and the last value seen.
pub fn eventually<T>(within: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `fleetctl` with `args` and returns its output.
pub fn fleetctl(args: &[&str]) -> Output {
    Command::new(bin("fleetctl"))
        .args(args)
        .env_remove("FLEET_COORDINATOR")
        .env_remove("FLEET_TLS_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("fleetctl runs")
}

/// A test's working directory with a fleet CA made by `fleetctl certs init`.
pub struct Fleet {
    pub dir: tempfile::TempDir,
}

impl Fleet {
    pub fn new() -> Result<Self> {
        let fleet = Self {
            dir: tempfile::tempdir()?,
        };
        fleet.certs_init("tls")?;
        Ok(fleet)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `fleetctl certs init --out <rel>`: a CA with coordinator and operator certificates.
    pub fn certs_init(&self, rel: &str) -> Result<PathBuf> {
        let out = self.path(rel);
        let o = fleetctl(&["certs", "init", "--out", path_str(&out)?]);
        if !o.status.success() {
            bail!("certs init failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        Ok(out)
    }

    /// `fleetctl certs issue --agent NODE` signed by the CA in `ca_rel`, into `out_rel`.
    pub fn issue_agent(&self, ca_rel: &str, node: &str, out_rel: &str) -> Result<PathBuf> {
        let out = self.path(out_rel);
        let o = fleetctl(&[
            "certs",
            "issue",
            "--out",
            path_str(&out)?,
            "--ca-dir",
            path_str(&self.path(ca_rel))?,
            "--agent",
            node,
        ]);
        if !o.status.success() {
            bail!("certs issue failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        Ok(out)
    }

    pub fn write(&self, rel: &str, content: &str) -> Result<PathBuf> {
        let path = self.path(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, content)?;
        Ok(path)
    }
}

pub fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 path")
}

/// A child process whose standard error goes to a log file; killed on drop.
pub struct Process {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(name: &str, command: &mut Command, log: PathBuf) -> Result<Self> {
        let file = std::fs::File::create(&log)?;
        // Debug logging unless the caller chose a filter (benchmarks log what production does).
        if !command.get_envs().any(|(key, _)| key == "FLEET_LOG") {
            command.env(
                "FLEET_LOG",
                "info,fleet_coordinator=debug,fleet_agent=debug",
            );
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
            log,
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has a line containing `needle`; an error if the process exits first.
    pub fn wait_for_log_while_running(&mut self, needle: &str) -> Result<String> {
        let start = Instant::now();
        loop {
            if let Some(line) = self.log_text().lines().find(|l| l.contains(needle)) {
                return Ok(line.to_string());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "{} exited ({status}) before logging {needle:?}:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            if start.elapsed() > PATIENCE {
                bail!("{} did not log {needle:?} within {PATIENCE:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until the log has a line containing `needle`, and returns that line.
    pub fn wait_for_log(&self, needle: &str) -> String {
        eventually(
            PATIENCE,
            &format!("{} to log {needle:?}", self.name),
            || {
                self.log_text()
                    .lines()
                    .find(|l| l.contains(needle))
                    .map(str::to_string)
            },
        )
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal by name (`STOP`, `CONT`) with kill(1).
    pub fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.pid().context("process already gone")?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{signal} {pid} failed");
        }
        Ok(())
    }

    /// Waits for the process to exit by itself and returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        let code = eventually(PATIENCE, &format!("{} to exit", self.name), || {
            child.try_wait().ok().flatten().map(|s| s.code())
        });
        self.child = None;
        code
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running coordinator.
pub struct Coordinator {
    pub process: Process,
    pub addr: SocketAddr,
}

pub struct CoordinatorOptions {
    pub heartbeat_interval: &'static str,
    pub heartbeat_timeout: &'static str,
    /// The state directory, relative to the fleet directory.
    pub state: &'static str,
    /// `FLEET_LOG`; none: debug for ssofleet's own crates.
    pub log: Option<&'static str>,
}

impl Default for CoordinatorOptions {
    fn default() -> Self {
        Self {
            heartbeat_interval: "200ms",
            // Short, and yet a loaded CI machine does not stall this long: a detached master halts a run.
            heartbeat_timeout: "2s",
            state: "state",
            log: None,
        }
    }
}

impl Coordinator {
    /// Starts `fleet-coordinator` on `listen` (use "127.0.0.1:0") with `fleet.toml`, `state/` and `tls/`
    /// of the fleet directory, and waits for its `listening on` line.
    pub fn start(fleet: &Fleet, listen: &str, options: &CoordinatorOptions) -> Result<Self> {
        let log = next_log(fleet, "coordinator");
        let mut command = Command::new(bin("fleet-coordinator"));
        if let Some(filter) = options.log {
            command.env("FLEET_LOG", filter);
        }
        let mut process = Process::spawn(
            "fleet-coordinator",
            command.args([
                "--listen",
                listen,
                "--inventory",
                path_str(&fleet.path("fleet.toml"))?,
                "--state-dir",
                path_str(&fleet.path(options.state))?,
                "--tls-dir",
                path_str(&fleet.path("tls"))?,
                "--heartbeat-interval",
                options.heartbeat_interval,
                "--heartbeat-timeout",
                options.heartbeat_timeout,
            ]),
            log,
        )?;
        let line = process.wait_for_log_while_running("listening on ")?;
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .context("no address after `listening on`")?
            .parse()?;
        Ok(Self { process, addr })
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// `fleetctl nodes --output json` as the operator of `tls/`.
    pub fn nodes(&self, fleet: &Fleet) -> Result<Vec<serde_json::Value>> {
        let o = fleetctl(&[
            "--coordinator",
            &self.url(),
            "--tls-dir",
            path_str(&fleet.path("tls"))?,
            "--output",
            "json",
            "nodes",
        ]);
        if !o.status.success() {
            bail!(
                "fleetctl nodes failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            );
        }
        match serde_json::from_slice(&o.stdout)? {
            serde_json::Value::Array(nodes) => Ok(nodes),
            other => bail!("nodes printed no array: {other}"),
        }
    }

    /// The `nodes` entry of `name`.
    pub fn node(&self, fleet: &Fleet, name: &str) -> Result<serde_json::Value> {
        self.nodes(fleet)?
            .into_iter()
            .find(|n| n["name"] == name)
            .with_context(|| format!("node {name} not listed"))
    }

    /// Waits until `nodes` shows `name` attached (or detached).
    pub fn wait_attached(&self, fleet: &Fleet, name: &str, attached: bool) -> serde_json::Value {
        eventually(PATIENCE, &format!("{name} attached={attached}"), || {
            self.node(fleet, name)
                .ok()
                .filter(|n| n["attached"] == attached)
        })
    }
}

fn next_log(fleet: &Fleet, stem: &str) -> PathBuf {
    (1..)
        .map(|i| fleet.path(&format!("{stem}.{i}.log")))
        .find(|p| !p.exists())
        .unwrap_or_else(|| fleet.path(&format!("{stem}.log")))
}

/// An agent's settings for [`Agent::start`].
pub struct AgentSpec<'a> {
    /// `node` in agent.toml.
    pub node: &'a str,
    /// Directory (relative to the fleet) holding ca.pem, agent.pem and agent-key.pem.
    pub tls_rel: &'a str,
    pub coordinator: &'a str,
    /// The ESSO version the simulated facts tool reports ("" for none).
    pub version: &'a str,
}

pub struct Agent {
    pub process: Process,
}

impl Agent {
    /// Writes `agents/<node>/agent.toml` (facts from the fixture tool) and starts `fleet-agent`.
    pub fn start(fleet: &Fleet, spec: &AgentSpec<'_>) -> Result<Self> {
        Self::start_with(fleet, spec, "")
    }

    /// Issues a certificate for `node` (unless it has one) and starts its agent, ESSO at `version`.
    pub fn start_issued(
        fleet: &Fleet,
        coordinator: &str,
        node: &str,
        version: &str,
    ) -> Result<Self> {
        let tls = format!("agents/{node}/tls");
        if !fleet.path(&tls).join("agent.pem").exists() {
            fleet.issue_agent("tls", node, &tls)?;
        }
        Self::start(
            fleet,
            &AgentSpec {
                node,
                tls_rel: &tls,
                coordinator,
                version,
            },
        )
    }

    /// As [`Agent::start`], with `extra` appended to agent.toml (more actions, secrets).
    pub fn start_with(fleet: &Fleet, spec: &AgentSpec<'_>, extra: &str) -> Result<Self> {
        Self::start_with_top(fleet, spec, "", extra)
    }

    /// As [`Agent::start_with`], with `top` lines (top-level keys such as `reboot`) first in agent.toml.
    pub fn start_with_top(
        fleet: &Fleet,
        spec: &AgentSpec<'_>,
        top: &str,
        extra: &str,
    ) -> Result<Self> {
        let tls = fleet.path(spec.tls_rel);
        let file = |name: &str| tls.join(name).display().to_string();
        let head = written::Head {
            node: spec.node,
            coordinator: spec.coordinator,
            state_dir: "state",
            ca: &file("ca.pem"),
            cert: &file("agent.pem"),
            key: &file("agent-key.pem"),
            reconnect: Some(("100ms", "500ms")),
        };
        let [facts, ..] = written::simulated_esso(&fixtures());
        let facts = facts.env(&format!(
            "{}, {}",
            esso_env(fleet, spec.node),
            written::env(&[
                ("FAKE_ESSO_SERVICE", "running"),
                ("FAKE_ESSO_PRODUCTS", "biztalk")
            ])
        ));
        let config = top.to_string() + &head.render() + &facts.render() + extra;
        // The simulated server's ESSO, at the version the spec says (none when empty).
        let home = fleet.path(&format!("agents/{}/esso", spec.node));
        std::fs::create_dir_all(&home)?;
        if !spec.version.is_empty() && !home.join("version").exists() {
            std::fs::write(home.join("version"), format!("{}\n", spec.version))?;
        }
        let dir = format!("agents/{}", spec.node);
        let path = fleet.write(&format!("{dir}/agent.toml"), &config)?;
        let log = next_log(fleet, &format!("{dir}/agent"));
        let process = Process::spawn(
            &format!("fleet-agent {}", spec.node),
            Command::new(bin("fleet-agent")).args(["--config", path_str(&path)?]),
            log,
        )?;
        Ok(Self { process })
    }
}

/// The environment every fixture tool of `node` gets: its simulated ESSO home, its name, the shared log.
pub fn esso_env(fleet: &Fleet, node: &str) -> String {
    let home = fleet.path(&format!("agents/{node}/esso"));
    let log = fleet.path("esso.log");
    written::env(&[
        ("FAKE_ESSO_HOME", &home.display().to_string()),
        ("FAKE_ESSO_NODE", node),
        ("FAKE_ESSO_LOG", &log.display().to_string()),
    ])
}

/// agent.toml lines for the upgrade actions (fixture tools) and a backup password; `extra_env` is
/// appended to every action's environment (e.g. `, FAKE_SETUP_EXIT = "67"`).
pub fn upgrade_actions(fleet: &Fleet, node: &str, extra_env: &str) -> Result<String> {
    let password = fleet.write(
        &format!("agents/{node}/backup-password"),
        "correct horse battery\n",
    )?;
    let env = esso_env(fleet, node) + extra_env;
    let [_, backup, install, verify] = written::simulated_esso(&fixtures());
    Ok(written::secrets(&password.display().to_string())
        + &[backup, install, verify]
            .map(|action| action.env(&env).render())
            .concat())
}

/// One line of the fixtures' own log: when, which node, which tool, start or end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolEvent {
    pub at_ns: u128,
    pub node: String,
    pub tool: String,
    pub start: bool,
}

/// The fixtures' log, in time order.
pub fn tool_log(fleet: &Fleet) -> Vec<ToolEvent> {
    let text = std::fs::read_to_string(fleet.path("esso.log")).unwrap_or_default();
    let mut events: Vec<ToolEvent> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            Some(ToolEvent {
                at_ns: parts.next()?.parse().ok()?,
                node: parts.next()?.to_string(),
                tool: parts.next()?.to_string(),
                start: parts.next()? == "start",
            })
        })
        .collect();
    events.sort_by_key(|e| e.at_ns);
    events
}
