//! The inventory, `fleet.toml` (SPEC §4): read once, validated into typed structs.
//!
//! Every problem is reported with the file, the line and the key it concerns. Syntax and type errors
//! stop at the first (the TOML parser's limit); every semantic problem of a well-formed file is listed.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::config::{ConfigError, LineIndex, Problem, deserialize, read_file};
use crate::version::Version;

use crate::domain::{EnvName, NodeName, Role};

mod migration;

pub use migration::{HostSecurity, Migration};

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

#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub days: Vec<jiff::civil::Weekday>,
    pub start: jiff::civil::Time,
    pub end: jiff::civil::Time,
    pub tz_name: String,
    pub tz: jiff::tz::TimeZone,
}

impl fmt::Display for Window {
    /// As written in the inventory: `sat,sun 22:00-04:00 Europe/Berlin`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use jiff::civil::Weekday;
        let days: Vec<&str> = self
            .days
            .iter()
            .map(|d| match d {
                Weekday::Monday => "mon",
                Weekday::Tuesday => "tue",
                Weekday::Wednesday => "wed",
                Weekday::Thursday => "thu",
                Weekday::Friday => "fri",
                Weekday::Saturday => "sat",
                Weekday::Sunday => "sun",
            })
            .collect();
        let time = |t: &jiff::civil::Time| {
            if t.second() == 0 {
                t.strftime("%H:%M").to_string()
            } else {
                t.strftime("%H:%M:%S").to_string()
            }
        };
        write!(
            f,
            "{} {}-{} {}",
            days.join(","),
            time(&self.start),
            time(&self.end),
            self.tz_name
        )
    }
}

// Equal windows have equal days, times and zone names; the zone follows from its name.
impl Eq for Window {}

impl Window {
    /// The openings of the window around `at` (Unix ms): `[open, close)` pairs in time order, from the
    /// day before `at` to a week after. An opening belongs to the day it starts on; when `end` is not
    /// after `start` it closes the next day. Wall times a DST change skips or repeats resolve to the
    /// later instant, as Windows' scheduler does.
    fn openings(&self, at: i64) -> Vec<(i64, i64)> {
        let Ok(ts) = jiff::Timestamp::from_millisecond(at) else {
            return Vec::new();
        };
        let today = ts.to_zoned(self.tz.clone()).date();
        let instant = |date: jiff::civil::Date, time: jiff::civil::Time| {
            date.to_datetime(time)
                .to_zoned(self.tz.clone())
                .ok()
                .map(|z| z.timestamp().as_millisecond())
        };
        let mut out = Vec::new();
        for offset in -1..=8i64 {
            let Ok(day) = today.checked_add(jiff::Span::new().days(offset)) else {
                continue;
            };
            if !self.days.contains(&day.weekday()) {
                continue;
            }
            let end_day = if self.end > self.start {
                Some(day)
            } else {
                day.tomorrow().ok()
            };
            if let (Some(open), Some(close)) = (
                instant(day, self.start),
                end_day.and_then(|d| instant(d, self.end)),
            ) && open < close
            {
                out.push((open, close));
            }
        }
        out
    }

    /// When the opening `at` is in closes, or `None` when the window is closed at `at`.
    pub fn closes_at(&self, at: i64) -> Option<i64> {
        self.openings(at)
            .into_iter()
            .filter(|&(open, close)| open <= at && at < close)
            .map(|(_, close)| close)
            .max()
    }

    pub fn is_open(&self, at: i64) -> bool {
        self.closes_at(at).is_some()
    }

    /// `at` when the window is open then, else when it next opens.
    pub fn next_open(&self, at: i64) -> Option<i64> {
        if self.is_open(at) {
            return Some(at);
        }
        self.openings(at)
            .into_iter()
            .map(|(open, _)| open)
            .filter(|&open| open > at)
            .min()
    }

    /// A time in the window's own zone, for messages: `Sat 2026-11-28 22:00 CET`.
    pub fn local(&self, at: i64) -> String {
        jiff::Timestamp::from_millisecond(at)
            .map(|ts| {
                ts.to_zoned(self.tz.clone())
                    .strftime("%a %Y-%m-%d %H:%M:%S %Z")
                    .to_string()
            })
            .unwrap_or_else(|_| at.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlAuth {
    /// SQL authentication; the password is read from the file when needed, never kept in config.
    Sql {
        user: String,
        password_file: PathBuf,
    },
    /// Windows integrated authentication, where the platform supports it.
    Integrated,
}

/// How the connection to SQL Server is encrypted (`encrypt` in `[environment.sso_database]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlEncryption {
    /// `encrypt = "strict"`: TDS 8.0, TLS before anything else (SQL Server 2022 and later).
    Strict,
    /// `encrypt = true`, the default: the whole session in TLS, negotiated at pre-login (TDS 7.4).
    Mandatory,
    /// `encrypt = false`: only the login packet is encrypted, as SQL Server always does; the rest is
    /// plaintext. For a SQL Server that has no certificate.
    LoginOnly,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsoDatabase {
    pub server: String,
    pub port: u16,
    pub database: String,
    pub auth: SqlAuth,
    /// TLS to SQL Server: `Mandatory` by default.
    pub encryption: SqlEncryption,
    /// Trust any server certificate: only when explicitly set.
    pub trust_server_certificate: bool,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub query_timeout: Duration,
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

// ---------------------------------------------------------------------------------------------------
// The file as written

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventory {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    days: Vec<Spanned<String>>,
    start: Spanned<String>,
    end: Spanned<String>,
    tz: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSsoDatabase {
    server: Spanned<String>,
    port: Option<Spanned<i64>>,
    database: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    integrated: Option<Spanned<bool>>,
    encrypt: Option<Spanned<toml::Value>>,
    trust_server_certificate: Option<Spanned<bool>>,
    ca_file: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    query_timeout: Option<Spanned<String>>,
}

// ---------------------------------------------------------------------------------------------------
// Validation

struct Checker<'a> {
    text: &'a str,
    /// Where each key's line is found (the file may hold tens of thousands of nodes).
    lines: LineIndex,
    base: &'a Path,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn problem<T>(&mut self, at: &Spanned<T>, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            line: self.lines.line(at.span().start),
            key: key.into(),
            message: message.into(),
        });
    }

    fn line<T>(&self, at: &Spanned<T>) -> usize {
        self.lines.line(at.span().start)
    }

    fn duration(&mut self, raw: &Spanned<String>, key: &str) -> Option<Duration> {
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

    fn inventory(&mut self, path: &Path, raw: RawInventory) -> Option<Inventory> {
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

    fn window(&mut self, spanned: &Spanned<RawWindow>, key: &str) -> Option<Window> {
        use jiff::civil::Weekday;
        let raw = spanned.get_ref();
        let mut days = Vec::new();
        let mut ok = true;
        if raw.days.is_empty() {
            self.problem(
                spanned,
                format!("{key}.days"),
                "no day listed: name at least one of mon, tue, wed, thu, fri, sat, sun",
            );
            ok = false;
        }
        for (i, day) in raw.days.iter().enumerate() {
            let parsed = match day.get_ref().to_ascii_lowercase().as_str() {
                "mon" => Some(Weekday::Monday),
                "tue" => Some(Weekday::Tuesday),
                "wed" => Some(Weekday::Wednesday),
                "thu" => Some(Weekday::Thursday),
                "fri" => Some(Weekday::Friday),
                "sat" => Some(Weekday::Saturday),
                "sun" => Some(Weekday::Sunday),
                _ => None,
            };
            match parsed {
                Some(d) if days.contains(&d) => {
                    self.problem(
                        day,
                        format!("{key}.days[{i}]"),
                        format!("{:?} is listed twice", day.get_ref()),
                    );
                    ok = false;
                }
                Some(d) => days.push(d),
                None => {
                    self.problem(
                        day,
                        format!("{key}.days[{i}]"),
                        format!(
                            "{:?} is not a day: use mon, tue, wed, thu, fri, sat or sun",
                            day.get_ref()
                        ),
                    );
                    ok = false;
                }
            }
        }
        let start = self.time_of_day(&raw.start, &format!("{key}.start"));
        let end = self.time_of_day(&raw.end, &format!("{key}.end"));
        if let (Some(s), Some(e)) = (start, end)
            && s == e
        {
            self.problem(
                &raw.end,
                format!("{key}.end"),
                "the window ends when it starts: it would be empty",
            );
            ok = false;
        }
        let tz_name = raw.tz.get_ref().trim().to_string();
        let tz = match jiff::tz::TimeZone::get(&tz_name) {
            Ok(tz) => Some(tz),
            Err(_) => {
                self.problem(
                    &raw.tz,
                    format!("{key}.tz"),
                    format!("{tz_name:?} is not a known time zone: use an IANA name such as \"Europe/Berlin\" or \"UTC\""),
                );
                None
            }
        };
        if !ok {
            return None;
        }
        Some(Window {
            days,
            start: start?,
            end: end?,
            tz_name,
            tz: tz?,
        })
    }

    fn time_of_day(&mut self, raw: &Spanned<String>, key: &str) -> Option<jiff::civil::Time> {
        let text = raw.get_ref().trim();
        // HH:MM, or HH:MM:SS where a window must be exact to the second.
        let parts: Vec<&str> = text.split(':').collect();
        let parsed = (parts.len() == 2 || parts.len() == 3)
            .then_some(())
            .filter(|()| parts.iter().all(|p| p.len() == 2))
            .and_then(|()| {
                let n: Option<Vec<i8>> = parts.iter().map(|p| p.parse::<i8>().ok()).collect();
                let n = n?;
                jiff::civil::Time::new(n[0], n[1], n.get(2).copied().unwrap_or(0), 0).ok()
            });
        if parsed.is_none() {
            self.problem(
                raw,
                key,
                format!("{text:?} is not a time of day: write HH:MM, e.g. \"22:00\""),
            );
        }
        parsed
    }

    fn sso_database(
        &mut self,
        spanned: &Spanned<RawSsoDatabase>,
        key: &str,
    ) -> Option<SsoDatabase> {
        let raw = spanned.get_ref();
        let mut ok = true;
        let server = raw.server.get_ref().trim().to_string();
        if server.is_empty() {
            self.problem(
                &raw.server,
                format!("{key}.server"),
                "the SQL Server host is empty",
            );
            ok = false;
        }
        let port = match &raw.port {
            None => Some(1433),
            Some(p) => match u16::try_from(*p.get_ref()) {
                Ok(port) if port > 0 => Some(port),
                _ => {
                    self.problem(
                        p,
                        format!("{key}.port"),
                        format!("{} is not a TCP port (1 to 65535)", p.get_ref()),
                    );
                    None
                }
            },
        };
        let database = match &raw.database {
            None => "SSODB".to_string(),
            Some(d) if d.get_ref().trim().is_empty() => {
                self.problem(d, format!("{key}.database"), "the database name is empty");
                ok = false;
                String::new()
            }
            Some(d) => d.get_ref().trim().to_string(),
        };
        let integrated = raw.integrated.as_ref().is_some_and(|i| *i.get_ref());
        let auth = match (&raw.user, &raw.password_file, integrated) {
            (Some(user), Some(file), false) if !user.get_ref().trim().is_empty() => {
                Some(SqlAuth::Sql {
                    user: user.get_ref().trim().to_string(),
                    password_file: self.base.join(file.get_ref()),
                })
            }
            (None, None, true) => Some(SqlAuth::Integrated),
            (Some(_), _, true) | (_, Some(_), true) => {
                self.problem(
                    spanned,
                    format!("{key}.integrated"),
                    "choose either integrated = true or user + password_file, not both",
                );
                None
            }
            (Some(user), None, false) => {
                self.problem(
                    user,
                    format!("{key}.password_file"),
                    "user is set but password_file is missing: name the file holding the password",
                );
                None
            }
            (None, Some(file), false) => {
                self.problem(
                    file,
                    format!("{key}.user"),
                    "password_file is set but user is missing",
                );
                None
            }
            (Some(user), Some(_), false) => {
                self.problem(user, format!("{key}.user"), "the SQL login name is empty");
                None
            }
            (None, None, false) => {
                self.problem(
                    spanned,
                    key,
                    "no credentials: set user + password_file, or integrated = true",
                );
                None
            }
        };
        let connect_timeout = match &raw.connect_timeout {
            None => Some(Duration::from_secs(15)),
            Some(d) => self.duration(d, &format!("{key}.connect_timeout")),
        };
        let query_timeout = match &raw.query_timeout {
            None => Some(Duration::from_secs(30 * 60)),
            Some(d) => self.duration(d, &format!("{key}.query_timeout")),
        };
        let encryption = match raw.encrypt.as_ref().map(|e| (e, e.get_ref())) {
            None | Some((_, toml::Value::Boolean(true))) => Some(SqlEncryption::Mandatory),
            Some((_, toml::Value::Boolean(false))) => Some(SqlEncryption::LoginOnly),
            Some((_, toml::Value::String(text))) if text.eq_ignore_ascii_case("strict") => {
                Some(SqlEncryption::Strict)
            }
            Some((at, other)) => {
                self.problem(
                    at,
                    format!("{key}.encrypt"),
                    format!(
                        "{other} is not an encryption mode: write true (the default: TLS for the whole session), \"strict\" (TDS 8.0, SQL Server 2022 and later) or false (only the login is encrypted)"
                    ),
                );
                None
            }
        };
        let trust_any = raw
            .trust_server_certificate
            .as_ref()
            .is_some_and(|t| *t.get_ref());
        if let (Some(trust), Some(_), true) =
            (&raw.trust_server_certificate, &raw.ca_file, trust_any)
        {
            self.problem(
                trust,
                format!("{key}.trust_server_certificate"),
                "choose either ca_file (verify the server's certificate against that CA) or trust_server_certificate = true (accept any certificate), not both",
            );
            ok = false;
        }
        if !ok {
            return None;
        }
        Some(SsoDatabase {
            server,
            port: port?,
            database,
            auth: auth?,
            encryption: encryption?,
            trust_server_certificate: trust_any,
            ca_file: raw.ca_file.as_ref().map(|f| self.base.join(f.get_ref())),
            connect_timeout: connect_timeout?,
            query_timeout: query_timeout?,
        })
    }
}

#[cfg(test)]
mod tests;
