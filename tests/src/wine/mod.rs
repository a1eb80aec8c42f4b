//! The Windows tier's harness: the agent built for Windows (`tests/wine/build`: fleet-agent.exe, the
//! bcryptprimitives.dll stand-in Wine 8 needs, and esso-fixture.exe from tests/wine/fixture.c) run
//! under Wine, each "server" a Wine prefix of its own.
//!
//! `FLEET_WINE_BIN` names the folder `tests/wine/build` prints (default `target/wine/bin`). Without
//! Wine or that folder the tests say so loudly and are skipped, unless `FLEET_REQUIRE_WINE` is set.

mod fixture;
mod fleet;
mod server;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use fleet_agent::config::written;

use crate::{Fleet, Process};

pub use fixture::{FIXTURE_BINS, FIXTURE_LOG, FixtureEvent, fixture_actions};
pub use fleet::{INVENTORY, NODE, WineFleet, step_of};
pub use server::{Session, WineServer};

/// The folder with fleet-agent.exe, the bcryptprimitives.dll stand-in (and, from `tests/wine/build`,
/// esso-fixture.exe), or why there is none.
pub fn windows_bin() -> Result<PathBuf, String> {
    windows_bin_with(&["fleet-agent.exe", "bcryptprimitives.dll"])
}

/// As [`windows_bin`], and the folder must hold each of `files`.
pub fn windows_bin_with(files: &[&str]) -> Result<PathBuf, String> {
    let bin = std::env::var_os("FLEET_WINE_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wine/bin"),
        PathBuf::from,
    );
    if Command::new("wine").arg("--version").output().is_err() {
        return Err("wine is not installed (Debian's wine, wine64)".into());
    }
    for file in files {
        if !bin.join(file).is_file() {
            return Err(format!(
                "{} has no {file}: run tests/wine/build",
                bin.display()
            ));
        }
    }
    Ok(bin)
}

/// The bin folder with `files`; `None` (after a loud SKIPPED) when the Windows tier cannot run here,
/// a panic instead when `FLEET_REQUIRE_WINE` is set.
pub fn windows_bin_or_skip(files: &[&str]) -> Option<PathBuf> {
    match windows_bin_with(files) {
        Ok(bin) => Some(bin),
        Err(why) if std::env::var_os("FLEET_REQUIRE_WINE").is_some() => {
            panic!("the Windows tier cannot run, and FLEET_REQUIRE_WINE is set: {why}")
        }
        Err(why) => {
            println!("SKIPPED the Windows tier (Wine): {why}");
            eprintln!("SKIPPED the Windows tier (Wine): {why}");
            None
        }
    }
}

/// A Linux path as a Windows program under Wine reaches it: `Z:` is Wine's drive for `/`.
pub fn windows_path(path: &Path) -> String {
    format!("Z:{}", path.display()).replace('/', "\\")
}

/// Lays out `agents/<node>/` of the fleet as the install script does for the Windows agent: the
/// program and the DLL it needs (copied from `bin`), `agent.toml` (`config`, whose relative paths
/// resolve against that folder) and the node's certificates in `tls/` (issued unless there). Returns
/// the folder.
pub fn lay_out_windows_agent(
    fleet: &Fleet,
    bin: &Path,
    node: &str,
    config: &str,
) -> Result<PathBuf> {
    lay_out_windows_agent_in(fleet, bin, node, &format!("agents/{node}"), config)
}

/// As [`lay_out_windows_agent`], in the fleet's folder `rel`.
pub fn lay_out_windows_agent_in(
    fleet: &Fleet,
    bin: &Path,
    node: &str,
    rel: &str,
    config: &str,
) -> Result<PathBuf> {
    if !fleet.path(rel).join("tls/agent.pem").exists() {
        fleet.issue_agent("tls", node, &format!("{rel}/tls"))?;
    }
    let dir = fleet.path(rel);
    for file in ["fleet-agent.exe", "bcryptprimitives.dll"] {
        std::fs::copy(bin.join(file), dir.join(file))
            .with_context(|| format!("copying {file} into {}", dir.display()))?;
    }
    fleet.write(&format!("{rel}/agent.toml"), config)?;
    Ok(dir)
}

/// agent.toml's first part for a Windows agent laid out by [`lay_out_windows_agent`]: node,
/// coordinator, state and certificates relative to the file's folder, a quick reconnect.
pub fn windows_agent_toml(node: &str, coordinator: &str) -> String {
    written::Head {
        node,
        coordinator,
        state_dir: "state",
        ca: r"tls\ca.pem",
        cert: r"tls\agent.pem",
        key: r"tls\agent-key.pem",
        reconnect: Some(("100ms", "500ms")),
    }
    .render()
}

/// Starts `fleet-agent.exe --config agent.toml` under Wine in `server`, in `dir` (laid out by
/// [`lay_out_windows_agent`]), logging to `<dir>/agent.<n>.log`. The process is the Windows
/// program itself (Wine's loader becomes it), so killing it kills fleet-agent.exe only.
pub fn start_windows_agent(server: &WineServer, dir: &Path, node: &str) -> Result<Process> {
    start_windows_agent_with(server, dir, node, &[], "agent.toml")
}

/// As [`start_windows_agent`], with `env` added to its environment and `config` as its `--config`.
pub fn start_windows_agent_with(
    server: &WineServer,
    dir: &Path,
    node: &str,
    env: &[(&str, String)],
    config: &str,
) -> Result<Process> {
    let log = (1..)
        .map(|i| dir.join(format!("agent.{i}.log")))
        .find(|p| !p.exists())
        .unwrap_or_else(|| dir.join("agent.log"));
    let mut command = server.command(dir);
    for (key, value) in env {
        command.env(key, value);
    }
    Process::spawn(
        &format!("fleet-agent.exe {node} (Wine)"),
        command.args(["fleet-agent.exe", "--config", config]),
        log,
    )
}

/// A file's text; empty when it cannot be read (not there yet).
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
