//! The coordinator's settings: command-line flags (SPEC §8), optionally from `--config coordinator.toml`.
//! A flag given on the command line wins over the same setting in the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

#[derive(Debug, Parser)]
#[command(
    name = "fleet-coordinator",
    version,
    about = "ssofleet coordinator: serves agents and operators over mutual TLS"
)]
pub struct Args {
    /// Address to listen on, e.g. 0.0.0.0:7443 (port 0 picks a free port; the log line says which).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The inventory, fleet.toml.
    #[arg(long)]
    pub inventory: Option<PathBuf>,
    /// Directory for the coordinator's durable state.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Directory holding ca.pem, coordinator.pem and coordinator-key.pem.
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
    /// A coordinator.toml holding any of the settings above.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// How often agents send heartbeats, e.g. "5s".
    #[arg(long, value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// An agent silent for longer than this is shown detached, e.g. "15s".
    #[arg(long, value_parser = humantime::parse_duration)]
    pub heartbeat_timeout: Option<Duration>,
    /// Log format: text or json.
    #[arg(long, value_parser = ["text", "json"])]
    pub log_format: Option<String>,
}

/// `coordinator.toml`: the same settings as the flags. Relative paths are relative to the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<SocketAddr>,
    inventory: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    tls_dir: Option<PathBuf>,
    heartbeat_interval: Option<String>,
    heartbeat_timeout: Option<String>,
    log_format: Option<String>,
}

/// Complete, checked settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub inventory: PathBuf,
    pub state_dir: PathBuf,
    pub tls_dir: PathBuf,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub log_json: bool,
}

pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(15);

impl Args {
    /// Merges the flags with `--config`, and checks that every required setting is present.
    pub fn settings(self) -> Result<Settings, String> {
        let config_name = self.config_name();
        let (file, base) = match &self.config {
            Some(path) => (
                read_file_settings(path)?,
                path.parent().map(Path::to_path_buf),
            ),
            None => (FileSettings::default(), None),
        };
        let rel = |p: PathBuf| match &base {
            Some(base) if p.is_relative() => base.join(p),
            _ => p,
        };
        let file_duration = |raw: &Option<String>, key: &str| -> Result<Option<Duration>, String> {
            raw.as_deref()
                .map(|s| {
                    humantime::parse_duration(s).map_err(|e| {
                        format!("{config_name}: key {key}: {s:?} is not a duration ({e})")
                    })
                })
                .transpose()
        };
        let missing = |what: &str| {
            format!(
                "missing --{what} (or `{}` in --config coordinator.toml)",
                what.replace('-', "_")
            )
        };
        let heartbeat_interval = match self.heartbeat_interval {
            Some(d) => d,
            None => file_duration(&file.heartbeat_interval, "heartbeat_interval")?
                .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL),
        };
        let heartbeat_timeout = match self.heartbeat_timeout {
            Some(d) => d,
            None => file_duration(&file.heartbeat_timeout, "heartbeat_timeout")?
                .unwrap_or(DEFAULT_HEARTBEAT_TIMEOUT),
        };
        // Two missed beats before a node shows detached: one late packet must not make it flap.
        if heartbeat_interval.is_zero() || heartbeat_timeout < heartbeat_interval * 2 {
            return Err(format!(
                "the heartbeat timeout ({}) must be at least twice the heartbeat interval ({})",
                humantime::format_duration(heartbeat_timeout),
                humantime::format_duration(heartbeat_interval)
            ));
        }
        let log_format = self.log_format.or(file.log_format);
        match log_format.as_deref() {
            None | Some("text" | "json") => {}
            Some(other) => {
                return Err(format!(
                    "{config_name}: key log_format: {other:?} is not a log format: use \"text\" or \"json\""
                ));
            }
        }
        Ok(Settings {
            listen: self
                .listen
                .or(file.listen)
                .ok_or_else(|| missing("listen"))?,
            inventory: self
                .inventory
                .or(file.inventory.map(rel))
                .ok_or_else(|| missing("inventory"))?,
            state_dir: self
                .state_dir
                .or(file.state_dir.map(rel))
                .ok_or_else(|| missing("state-dir"))?,
            tls_dir: self
                .tls_dir
                .or(file.tls_dir.map(rel))
                .ok_or_else(|| missing("tls-dir"))?,
            heartbeat_interval,
            heartbeat_timeout,
            log_json: log_format.as_deref() == Some("json"),
        })
    }

    fn config_name(&self) -> String {
        self.config
            .as_ref()
            .map_or_else(|| "coordinator.toml".into(), |p| p.display().to_string())
    }
}

fn read_file_settings(path: &Path) -> Result<FileSettings, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.to_string().trim_end()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["fleet-coordinator"];
        argv.extend_from_slice(extra);
        Args::parse_from(argv)
    }

    #[test]
    fn flags_win_over_the_file_and_paths_are_relative_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("coordinator.toml");
        std::fs::write(
            &config,
            "listen = \"127.0.0.1:7443\"\ninventory = \"fleet.toml\"\nstate_dir = \"state\"\ntls_dir = \"/etc/tls\"\nheartbeat_timeout = \"20s\"\n",
        )
        .unwrap();
        let s = args(&[
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .settings()
        .unwrap();
        assert_eq!(s.listen.port(), 0);
        assert_eq!(s.inventory, dir.path().join("fleet.toml"));
        assert_eq!(s.tls_dir, PathBuf::from("/etc/tls"));
        assert_eq!(s.heartbeat_timeout, Duration::from_secs(20));
        assert_eq!(s.heartbeat_interval, DEFAULT_HEARTBEAT_INTERVAL);
    }

    #[test]
    fn the_deploy_example_is_valid() {
        let example =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/coordinator.toml");
        let s = args(&["--config", example.to_str().unwrap()])
            .settings()
            .unwrap();
        assert_eq!(s.listen.port(), 7443);
        assert_eq!(s.heartbeat_timeout, Duration::from_secs(15));
    }

    #[test]
    fn missing_and_bad_settings_are_named() {
        let e = args(&["--listen", "127.0.0.1:0"]).settings().unwrap_err();
        assert!(e.contains("missing --inventory"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("c.toml");
        std::fs::write(&config, "listen = \"127.0.0.1:1\"\nlisten_port = 3\n").unwrap();
        let e = args(&["--config", config.to_str().unwrap()])
            .settings()
            .unwrap_err();
        assert!(e.contains("c.toml") && e.contains("listen_port"), "{e}");

        let e = args(&[
            "--listen",
            "127.0.0.1:0",
            "--inventory",
            "f",
            "--state-dir",
            "s",
            "--tls-dir",
            "t",
            "--heartbeat-interval",
            "10s",
            "--heartbeat-timeout",
            "5s",
        ])
        .settings()
        .unwrap_err();
        assert!(
            e.contains("must be at least twice the heartbeat interval"),
            "{e}"
        );
    }
}
