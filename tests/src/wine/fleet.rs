//! A fleet whose one node is the Windows agent under Wine: the real Linux coordinator, one Wine
//! prefix, and `fleetctl` as the operator of the fleet's `tls/`.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use super::{Session, WineServer, read, windows_path};
use crate::{Coordinator, CoordinatorOptions, Fleet, PATIENCE, eventually, fleetctl, path_str};

/// The Windows agent's node name, the master of [`INVENTORY`].
pub const NODE: &str = "w1";

/// One environment, its master the Windows agent: backup-secret, upgrade-master, verify-master.
pub const INVENTORY: &str = r#"
[upgrade]
target_version = "3.0.7"
installer = 'INSTALLER'
[policy]
max_parallel = 1
max_failures = 0
[[environment]]
name = "dev"
gate = "auto"
install = "unattended"
master = "w1"
backup_dir = 'BACKUPS'
"#;

/// The fleet, its coordinator and the Wine prefix the agent runs in (the agent itself is the
/// scenario's: declared before this, it is dropped first). Dropped in field order: the session (if
/// any), the Wine prefix (`wineserver -k` ends whatever still runs in it), the coordinator, the files.
pub struct WineFleet {
    /// The program keeping the prefix up, when the scenario needs one ([`WineFleet::start_session`]).
    pub session: Option<Session>,
    pub server: WineServer,
    pub coordinator: Coordinator,
    /// The agent's folder (`agents/w1` unless the scenario lays it out elsewhere): its program,
    /// agent.toml, certificates, state and logs.
    pub dir: PathBuf,
    pub fleet: Fleet,
    /// The log the scenario's Windows tools append to: its title in failure messages, its file.
    tool_log: (&'static str, &'static str),
    /// Where what Wine's own processes print goes, when it is kept.
    wine_log: Option<PathBuf>,
}

impl WineFleet {
    /// The coordinator of `fleet` on [`INVENTORY`] with `installer` and `backups`, and a Wine prefix,
    /// made. `tool_log`: the tools' log (title, file in the fleet's folder); `wine_log`: a file of the
    /// fleet's folder for what Wine prints (the prefix's services among it), or `None`.
    pub fn start(
        fleet: Fleet,
        installer: &Path,
        backups: &Path,
        tool_log: (&'static str, &'static str),
        wine_log: Option<&str>,
    ) -> Self {
        // The agent reads (hashes) the installer and writes the backup: Windows paths for it.
        let inventory = INVENTORY
            .replace("INSTALLER", &windows_path(installer))
            .replace("BACKUPS", &windows_path(backups));
        fleet.write("fleet.toml", &inventory).expect("fleet.toml");
        let coordinator = Coordinator::start(
            &fleet,
            "127.0.0.1:0",
            &CoordinatorOptions {
                // Wine starts a process in a second or two; a restarted agent is back within this.
                heartbeat_timeout: "10s",
                ..CoordinatorOptions::default()
            },
        )
        .expect("the coordinator starts");
        let server = WineServer::new();
        let wine_log = wine_log.map(|file| fleet.path(file));
        // Make the prefix before the agent starts (Wine's first start of a prefix takes seconds).
        server.make(wine_log.as_deref());
        Self {
            session: None,
            server,
            coordinator,
            dir: fleet.path(&format!("agents/{NODE}")),
            fleet,
            tool_log,
            wine_log,
        }
    }

    /// Starts the [`Session`] keeping the prefix up (its output into Wine's log, if kept).
    pub fn start_session(&mut self) {
        self.session = Some(Session::start(&self.server, self.wine_log.as_deref()));
    }

    pub fn wait_attached(&self) {
        eventually(PATIENCE, &format!("{NODE} (Wine) attached"), || {
            self.coordinator
                .node(&self.fleet, NODE)
                .ok()
                .filter(|n| n["attached"] == true)
        });
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        let (url, tls) = (self.coordinator.url(), self.fleet.path("tls"));
        let mut all = vec![
            "--coordinator",
            url.as_str(),
            "--tls-dir",
            path_str(&tls).expect("a UTF-8 path"),
        ];
        all.extend_from_slice(args);
        fleetctl(&all)
    }

    pub fn json(&self, args: &[&str]) -> (Option<i32>, serde_json::Value) {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let o = self.ctl(&all);
        let json = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {o:?}\n{}", self.logs()));
        (o.status.code(), json)
    }

    pub fn run(&self, run_id: &str) -> serde_json::Value {
        self.json(&["run", "show", run_id]).1
    }

    /// `fleetctl upgrade --all --detach`, accepted: the run's id.
    pub fn upgrade_detached(&self) -> String {
        let (code, started) = self.json(&["upgrade", "--all", "--detach"]);
        assert_eq!(code, Some(0), "{started}");
        started["run_id"]
            .as_str()
            .expect("the run's id")
            .to_string()
    }

    /// Polls `check` until it returns `Some`; after `within`, fails naming `what`, with the run
    /// (as `run show` prints it) and every log in the message.
    pub fn eventually<T>(
        &self,
        within: Duration,
        what: &str,
        run_id: &str,
        mut check: impl FnMut() -> Option<T>,
    ) -> T {
        let start = Instant::now();
        loop {
            if let Some(value) = check() {
                return value;
            }
            assert!(
                start.elapsed() < within,
                "timed out after {within:?} waiting for: {what}
run {run_id}: {}
{}",
                self.run(run_id),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the run is final, and returns it; the logs in the message when it is not.
    pub fn wait_final(&self, run_id: &str, within: Duration) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let run = self.run(run_id);
            if matches!(
                run["state"].as_str(),
                Some("succeeded" | "failed" | "aborted")
            ) {
                return run;
            }
            assert!(
                start.elapsed() < within,
                "run {run_id} not finished after {within:?}: {run}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What `fleetctl logs` prints of the node's `step` in the run.
    pub fn step_log(&self, run_id: &str, step: &str) -> String {
        let o = self.ctl(&["logs", run_id, "--node", NODE, "--step", step]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The agent's logs: the service's log files (`--log-dir`, in the folder's `logs/`), or the
    /// console agents' `agent.<n>.log`.
    pub fn agent_logs(&self) -> String {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.join("logs"))
            .into_iter()
            .chain(std::fs::read_dir(&self.dir))
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("fleet-agent.log") || n.starts_with("agent."))
                    && p.extension().is_some_and(|e| e != "toml")
            })
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| format!("--- {}\n{}", p.display(), read(p)))
            .collect()
    }

    /// The agent's, Wine's (if kept), the coordinator's and the tools' logs, for a failure's message.
    pub fn logs(&self) -> String {
        let wine = self
            .wine_log
            .as_ref()
            .map(|log| format!("--- wine (services.exe)\n{}\n", read(log)))
            .unwrap_or_default();
        let (title, file) = self.tool_log;
        format!(
            "{}{wine}--- coordinator\n{}\n--- {title}\n{}",
            self.agent_logs(),
            self.coordinator.process.log_text(),
            read(&self.fleet.path(file))
        )
    }
}

/// The node's `step` in a run as `fleetctl run show` prints it.
pub fn step_of<'a>(run: &'a serde_json::Value, step: &str) -> &'a serde_json::Value {
    run["steps"]
        .as_array()
        .expect("the run's steps")
        .iter()
        .find(|s| s["node"] == NODE && s["step"] == step)
        .unwrap_or_else(|| panic!("no {NODE} {step} in {run}"))
}
