//! The inventory, `fleet.toml` (SPEC §4): read once, validated into typed structs.
//!
//! Every problem is reported with the file, the line and the key it concerns. Syntax and type errors
//! stop at the first (the TOML parser's limit); every semantic problem of a well-formed file is listed.
//!
//! This file holds the inventory's types and [`Inventory::parse`]; `check.rs` validates the file as
//! written into them, and the window, the SSO database and the migration each have their own file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{ConfigError, LineIndex, deserialize, read_file};
use crate::version::Version;

use crate::domain::{EnvName, NodeName, Role};

mod check;
mod migration;
mod sso_database;
mod window;

use check::{Checker, RawInventory};
pub use migration::{HostSecurity, Migration};
pub use sso_database::{SqlAuth, SqlEncryption, SsoDatabase};
pub use window::Window;

/// A validated inventory.
#[derive(Debug, Clone)]
pub struct Inventory {
    pub path: PathBuf,
    /// The text this inventory was parsed from: what a run stores as its snapshot (not the file as
    /// it may read later).
    pub source: String,
    pub upgrade: Upgrade,
    pub policy: Policy,
    /// In file order: the order environments are upgraded in.
    pub environments: Vec<Environment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// The ESSO version every upgraded node must report afterwards, compared as a number.
    pub target_version: Version,
    /// The members' installer, and the master's unless `master_installer` is set.
    pub installer: String,
    /// A standalone master secret server's own installer (`\Platform\SSO\Setup.exe`, ESSO.md).
    pub master_installer: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub max_parallel: u32,
    pub max_failures: u32,
    pub step_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Gate {
    Auto,
    Manual,
    Soak(Duration),
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gate::Auto => f.write_str("auto"),
            Gate::Manual => f.write_str("manual"),
            Gate::Soak(d) => write!(f, "soak {}", humantime::format_duration(*d)),
        }
    }
}

/// How an install runs: the agent runs it (`unattended`), or the run stops at it with the instruction
/// for the operator (`attended`, the default: Microsoft supports no silent BizTalk upgrade, ESSO.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum InstallMode {
    Unattended,
    Attended,
}

impl InstallMode {
    /// As written in the inventory and shown by `fleetctl plan`.
    pub fn as_str(self) -> &'static str {
        match self {
            InstallMode::Unattended => "unattended",
            InstallMode::Attended => "attended",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Environment {
    pub name: EnvName,
    pub gate: Gate,
    pub install: InstallMode,
    pub master: NodeName,
    pub members: Vec<NodeName>,
    pub backup_dir: String,
    pub window: Option<Window>,
    pub sso_database: Option<SsoDatabase>,
    /// `[environment.migration]`: what `fleetctl migrate` migrates (an environment without it is
    /// not migrated).
    pub migration: Option<Migration>,
}

impl Environment {
    /// Master first, then members in file order.
    pub fn nodes(&self) -> impl Iterator<Item = (&NodeName, Role)> {
        std::iter::once((&self.master, Role::Master))
            .chain(self.members.iter().map(|m| (m, Role::Member)))
    }
}

impl Inventory {
    /// Every node with its environment and role, environments in file order, master first.
    pub fn nodes(&self) -> impl Iterator<Item = (&Environment, &NodeName, Role)> {
        self.environments
            .iter()
            .flat_map(|env| env.nodes().map(move |(n, r)| (env, n, r)))
    }

    /// The environment called `name`.
    pub fn environment(&self, name: &str) -> Option<&Environment> {
        self.environments.iter().find(|e| e.name.as_str() == name)
    }

    pub fn find_node(&self, node: &NodeName) -> Option<(&Environment, Role)> {
        self.nodes()
            .find(|(_, n, _)| *n == node)
            .map(|(env, _, role)| (env, role))
    }

    pub fn node_count(&self) -> usize {
        self.environments.iter().map(|e| 1 + e.members.len()).sum()
    }

    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, InventoryError> {
        Self::parse(path, &read_file(path)?)
    }

    /// Validates `text` as the content of `path` (used for messages and for relative paths).
    pub fn parse(path: &Path, text: &str) -> Result<Self, InventoryError> {
        let fail = |problems| InventoryError::new(path, problems);
        let raw: RawInventory = deserialize(text).map_err(|p| fail(vec![p]))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut check = Checker {
            text,
            lines: LineIndex::new(text),
            base,
            problems: Vec::new(),
        };
        let inventory = check.inventory(path, raw);
        if check.problems.is_empty()
            && let Some(inventory) = inventory
        {
            return Ok(inventory);
        }
        check.problems.sort_by_key(|p| p.line);
        Err(fail(check.problems))
    }
}

/// An invalid inventory: every problem found, each naming the file, line and key.
pub type InventoryError = ConfigError;

#[cfg(test)]
mod tests;
