//! Validation: the file as written (the `Raw…` structs serde reads) checked into the typed
//! [`Inventory`], every problem with its line and key. [`Checker`] walks the upgrade, the policy and
//! each environment with its nodes and gate; the window, the SSO database and the migration are
//! checked beside their types (`window.rs`, `sso_database.rs`, `migration.rs`).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::config::{LineIndex, Problem};
use crate::domain::{EnvName, NodeName};
use crate::version::Version;

use super::migration;
use super::sso_database::RawSsoDatabase;
use super::window::RawWindow;
use super::{Environment, Gate, InstallMode, Inventory, Policy, Upgrade};

// ---------------------------------------------------------------------------------------------------
// The file as written

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInventory {
    upgrade: Spanned<RawUpgrade>,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    environment: Vec<Spanned<RawEnvironment>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpgrade {
    target_version: Spanned<String>,
    installer: Spanned<String>,
    master_installer: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    max_parallel: Option<Spanned<i64>>,
    max_failures: Option<Spanned<i64>>,
    step_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvironment {
    name: Spanned<String>,
    gate: Option<Spanned<String>>,
    install: Option<Spanned<String>>,
    master: Spanned<String>,
    #[serde(default)]
    members: Vec<Spanned<String>>,
    backup_dir: Spanned<String>,
    window: Option<Spanned<RawWindow>>,
    sso_database: Option<Spanned<RawSsoDatabase>>,
    migration: Option<Spanned<migration::RawMigration>>,
}

// ---------------------------------------------------------------------------------------------------
// Validation

pub(super) struct Checker<'a> {
    pub(super) text: &'a str,
    /// Where each key's line is found (the file may hold tens of thousands of nodes).
    pub(super) lines: LineIndex,
    pub(super) base: &'a Path,
    pub(super) problems: Vec<Problem>,
}

impl Checker<'_> {
    pub(super) fn problem<T>(
        &mut self,
        at: &Spanned<T>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.problems.push(Problem {
            line: self.lines.line(at.span().start),
            key: key.into(),
            message: message.into(),
        });
    }

    fn line<T>(&self, at: &Spanned<T>) -> usize {
        self.lines.line(at.span().start)
    }

    pub(super) fn duration(&mut self, raw: &Spanned<String>, key: &str) -> Option<Duration> {
        match humantime::parse_duration(raw.get_ref().trim()) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.problem(raw, key, "the duration must be longer than zero");
                None
            }
            Err(e) => {
                self.problem(
                    raw,
                    key,
                    format!(
                        "{:?} is not a duration ({e}); write e.g. \"45m\", \"90s\" or \"1h 30m\"",
                        raw.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn count(&mut self, raw: &Spanned<i64>, key: &str, min: i64) -> Option<u32> {
        let value = *raw.get_ref();
        match u32::try_from(value) {
            Ok(v) if value >= min => Some(v),
            _ => {
                self.problem(
                    raw,
                    key,
                    format!(
                        "{value} is out of range: it must be a whole number from {min} to {}",
                        u32::MAX
                    ),
                );
                None
            }
        }
    }

    pub(super) fn inventory(&mut self, path: &Path, raw: RawInventory) -> Option<Inventory> {
        let upgrade = self.upgrade(&raw.upgrade);
        let policy = self.policy(&raw.policy);
        if raw.environment.is_empty() {
            self.problems.push(Problem {
                line: 1,
                key: "environment".into(),
                message: "the inventory names no environment: add at least one [[environment]]"
                    .into(),
            });
        }
        let mut env_names: HashMap<String, usize> = HashMap::new();
        // node → (environment name, line) of its first appearance
        let mut seen: HashMap<NodeName, (String, usize)> = HashMap::new();
        let mut environments = Vec::new();
        for (i, env) in raw.environment.iter().enumerate() {
            let key = format!("environment[{i}]");
            if let Some(env) = self.environment(env, &key, &mut env_names, &mut seen) {
                environments.push(env);
            }
        }
        let complete = environments.len() == raw.environment.len();
        Some(Inventory {
            path: path.to_path_buf(),
            source: self.text.to_string(),
            upgrade: upgrade?,
            policy: policy?,
            environments,
        })
        .filter(|_| complete)
    }

    fn upgrade(&mut self, raw: &Spanned<RawUpgrade>) -> Option<Upgrade> {
        let raw = raw.get_ref();
        let target_version = match raw.target_version.get_ref().parse::<Version>() {
            Ok(version) => Some(version),
            Err(e) => {
                self.problem(&raw.target_version, "upgrade.target_version", e.to_string());
                None
            }
        };
        let installer = raw.installer.get_ref().trim().to_string();
        if installer.is_empty() {
            self.problem(
                &raw.installer,
                "upgrade.installer",
                "the installer path is empty",
            );
        }
        let master_installer = match &raw.master_installer {
            None => Some(None),
            Some(path) if path.get_ref().trim().is_empty() => {
                self.problem(
                    path,
                    "upgrade.master_installer",
                    "the master installer path is empty: name the standalone master secret server's setup (e.g. '\\Platform\\SSO\\Setup.exe' on the BizTalk media), or remove the key to install the master from `installer`",
                );
                None
            }
            Some(path) => Some(Some(path.get_ref().trim().to_string())),
        };
        Some(Upgrade {
            target_version: target_version?,
            installer,
            master_installer: master_installer?,
        })
    }

    fn policy(&mut self, raw: &RawPolicy) -> Option<Policy> {
        let max_parallel = match &raw.max_parallel {
            Some(v) => self.count(v, "policy.max_parallel", 1),
            None => Some(1),
        };
        let max_failures = match &raw.max_failures {
            Some(v) => self.count(v, "policy.max_failures", 0),
            None => Some(0),
        };
        let step_timeout = match &raw.step_timeout {
            Some(v) => self.duration(v, "policy.step_timeout"),
            None => Some(Duration::from_secs(45 * 60)),
        };
        Some(Policy {
            max_parallel: max_parallel?,
            max_failures: max_failures?,
            step_timeout: step_timeout?,
        })
    }

    fn environment(
        &mut self,
        spanned: &Spanned<RawEnvironment>,
        key: &str,
        env_names: &mut HashMap<String, usize>,
        seen: &mut HashMap<NodeName, (String, usize)>,
    ) -> Option<Environment> {
        let raw = spanned.get_ref();
        let name_key = format!("{key}.name");
        let name = match EnvName::new(raw.name.get_ref()) {
            Ok(name) => {
                let line = self.line(&raw.name);
                // `prod` and `Prod` are one environment to a reader: refuse both.
                if let Some(first) = env_names.insert(name.as_str().to_ascii_lowercase(), line) {
                    self.problem(
                        &raw.name,
                        &name_key,
                        format!(
                            "environment {:?} is defined twice (first on line {first})",
                            name.as_str()
                        ),
                    );
                }
                Some(name)
            }
            Err(e) => {
                self.problem(&raw.name, &name_key, e);
                None
            }
        };
        let env_label = name
            .as_ref()
            .map_or_else(|| key.to_string(), |n| n.as_str().to_string());

        let gate = match &raw.gate {
            None => Some(Gate::Auto),
            Some(g) => self.gate(g, &format!("{key}.gate")),
        };
        let install = match raw.install.as_ref().map(|i| (i, i.get_ref().as_str())) {
            None | Some((_, "attended")) => Some(InstallMode::Attended),
            Some((_, "unattended")) => Some(InstallMode::Unattended),
            Some((at, other)) => {
                self.problem(
                    at,
                    format!("{key}.install"),
                    format!("{other:?} is not an install mode: use \"unattended\" or \"attended\""),
                );
                None
            }
        };

        let master = self.node(&raw.master, &format!("{key}.master"), &env_label, seen);
        let mut members = Vec::new();
        let mut members_ok = true;
        for (j, member) in raw.members.iter().enumerate() {
            let member_key = format!("{key}.members[{j}]");
            if let Some(master) = &master
                && NodeName::new(member.get_ref()).is_ok_and(|m| &m == master)
            {
                self.problem(
                    member,
                    member_key,
                    format!(
                        "{:?} is this environment's master; a member must be another server",
                        master.as_str()
                    ),
                );
                members_ok = false;
                continue;
            }
            match self.node(member, &member_key, &env_label, seen) {
                Some(m) => members.push(m),
                None => members_ok = false,
            }
        }

        let backup_dir = raw.backup_dir.get_ref().trim().to_string();
        if backup_dir.is_empty() {
            self.problem(
                &raw.backup_dir,
                format!("{key}.backup_dir"),
                "the backup directory is empty",
            );
        }
        let window = match &raw.window {
            None => Some(None),
            Some(w) => self.window(w, &format!("{key}.window")).map(Some),
        };
        let sso_database = match &raw.sso_database {
            None => Some(None),
            Some(db) => self
                .sso_database(db, &format!("{key}.sso_database"))
                .map(Some),
        };
        let migration = match &raw.migration {
            None => Some(None),
            Some(m) => self.migration(m, &format!("{key}.migration")).map(Some),
        };
        if backup_dir.is_empty() || !members_ok {
            return None;
        }
        Some(Environment {
            name: name?,
            gate: gate?,
            install: install?,
            master: master?,
            members,
            backup_dir,
            window: window?,
            sso_database: sso_database?,
            migration: migration?,
        })
    }

    fn node(
        &mut self,
        raw: &Spanned<String>,
        key: &str,
        env_label: &str,
        seen: &mut HashMap<NodeName, (String, usize)>,
    ) -> Option<NodeName> {
        let node = match NodeName::new(raw.get_ref()) {
            Ok(node) => node,
            Err(e) => {
                self.problem(raw, key, e);
                return None;
            }
        };
        let line = self.line(raw);
        match seen.get(&node) {
            Some((env, first)) if env == env_label => {
                let message = format!(
                    "duplicate node name {:?} (first on line {first})",
                    node.as_str()
                );
                self.problem(raw, key, message);
                None
            }
            Some((env, first)) => {
                let message = format!(
                    "node {:?} is already in environment {env:?} (line {first}); a node belongs to one environment",
                    node.as_str()
                );
                self.problem(raw, key, message);
                None
            }
            None => {
                seen.insert(node.clone(), (env_label.to_string(), line));
                Some(node)
            }
        }
    }

    fn gate(&mut self, raw: &Spanned<String>, key: &str) -> Option<Gate> {
        let text = raw.get_ref().trim();
        match text {
            "auto" => Some(Gate::Auto),
            "manual" => Some(Gate::Manual),
            _ => match text.strip_prefix("soak") {
                Some(rest) if rest.starts_with(char::is_whitespace) => {
                    let duration = Spanned::new(raw.span(), rest.trim().to_string());
                    self.duration(&duration, key).map(Gate::Soak)
                }
                _ => {
                    self.problem(
                        raw,
                        key,
                        format!("{text:?} is not a gate: use \"auto\", \"manual\" or \"soak <duration>\" (e.g. \"soak 10m\")"),
                    );
                    None
                }
            },
        }
    }
}
