//! `agent.toml` (SPEC §6): read once and validated into [`AgentConfig`]. Relative paths are relative to
//! the file. Every problem names the file, the line and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use fleet_proto::config::ConfigError;
use fleet_proto::config::{Problem, deserialize, line_of, read_file};
use fleet_proto::tls::TlsFiles;
use serde::Deserialize;
use toml::Spanned;

use crate::builtin::{ToolOverrides, Tools};
use crate::catalogue::{ActionName, PLACEHOLDERS, check_template};

pub mod written;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub path: PathBuf,
    /// As written in the file (lower-cased); the coordinator checks it against the certificate.
    pub node: String,
    pub coordinator: String,
    pub state_dir: PathBuf,
    pub tls: TlsFiles,
    pub backup_password_file: Option<PathBuf>,
    pub actions: BTreeMap<ActionName, ActionOverride>,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
    pub reboot: RebootPolicy,
    /// Where the Windows tools of the built-in actions are (`[tools]` over the platform's defaults).
    pub tools: Tools,
    /// What `configure_sso` writes into ESSO's configuration after a fresh install (`[sso]`).
    pub sso: SsoSettings,
    /// How long verification waits for a STOPPED or START_PENDING ENTSSO after an install or a reboot
    /// (`[verify] entsso_start_budget`, 10 minutes by default: ENTSSO may be on a delayed start).
    pub entsso_start_budget: Duration,
    /// How long a stopping agent (a service stop, Ctrl-C) waits for its own work to end before it
    /// exits (`shutdown_timeout`, 10 s by default). A running step's program is never waited for:
    /// it runs on, and the next start waits for it.
    pub shutdown_timeout: Duration,
}

/// `[sso]`: the answers ESSO's configuration needs after a fresh install (Configuration.exe's
/// `NTService ID="ENTSSO"` and `SQL ID="SSO_DB_ID"`); the password stays in its file until the
/// configuration file is written, and that file is deleted afterwards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SsoSettings {
    /// `DOMAIN\user` the ENTSSO service runs as.
    pub service_account: Option<String>,
    pub service_password_file: Option<PathBuf>,
    /// The SQL Server holding the SSO database, and the database (default `SSODB`).
    pub database_server: Option<String>,
    pub database: String,
    pub admin_group: String,
    pub affiliate_admin_group: String,
}

/// A configured command that replaces an action's built-in implementation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionOverride {
    pub program: PathBuf,
    /// Argument templates with `{placeholder}`s, expanded per step.
    pub args: Vec<String>,
    pub timeout: Option<Duration>,
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootPolicy {
    Never,
    IfRequired,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    node: Spanned<String>,
    coordinator: Spanned<String>,
    state_dir: Spanned<String>,
    tls: RawTls,
    #[serde(default)]
    secrets: RawSecrets,
    #[serde(default)]
    actions: BTreeMap<Spanned<String>, RawAction>,
    #[serde(default)]
    reconnect: RawReconnect,
    reboot: Option<Spanned<String>>,
    shutdown_timeout: Option<Spanned<String>>,
    #[serde(default)]
    tools: RawTools,
    #[serde(default)]
    sso: RawSso,
    #[serde(default)]
    verify: RawVerify,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawVerify {
    entsso_start_budget: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSso {
    service_account: Option<String>,
    service_password_file: Option<String>,
    database_server: Option<String>,
    database: Option<String>,
    admin_group: Option<String>,
    affiliate_admin_group: Option<String>,
}

/// `[tools]`: each tool's path (relative to the file), the ESSO folder, the migration folder and
/// the Host Account Cache service's name.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTools {
    sc: Option<Spanned<String>>,
    reg: Option<Spanned<String>>,
    boot_id: Option<Spanned<String>>,
    shutdown: Option<Spanned<String>>,
    msiexec: Option<Spanned<String>>,
    powershell: Option<Spanned<String>>,
    wevtutil: Option<Spanned<String>>,
    ssomanage: Option<Spanned<String>>,
    biztalk_configuration: Option<Spanned<String>>,
    udbkey: Option<Spanned<String>>,
    hissomig: Option<Spanned<String>>,
    esso_dir: Option<Spanned<String>>,
    migration_dir: Option<Spanned<String>>,
    host_account_cache_service: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: String,
    cert: String,
    key: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSecrets {
    backup_password_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    program: Spanned<String>,
    #[serde(default)]
    args: Vec<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReconnect {
    initial: Option<Spanned<String>>,
    max: Option<Spanned<String>>,
}

impl AgentConfig {
    /// Reads and checks `path`. Paths in it are relative to its folder, and made absolute: the
    /// tools the agent runs get absolute paths whatever folder the agent was started in (a tool such
    /// as `ISSOConfigSS` may resolve a relative path against another process's folder).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_file(path)?;
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        Self::parse(&path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let fail = |problems| ConfigError::new(path, problems);
        let raw: Raw = deserialize(text).map_err(|p| fail(vec![p]))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rel = |p: &str| base.join(p);
        let mut ctx = Ctx {
            text,
            problems: Vec::new(),
        };

        let node = raw.node.get_ref().trim().to_ascii_lowercase();
        if fleet_proto::identity::valid_name(&node, "node name").is_err() {
            ctx.problem(
                raw.node.span(),
                "node",
                format!(
                    "{:?} is not a valid node name (letters, digits, '-', '_' and '.', starting with a letter or digit)",
                    raw.node.get_ref()
                ),
            );
        }
        let coordinator = raw.coordinator.get_ref().trim().to_string();
        if !coordinator.starts_with("https://") {
            ctx.problem(
                raw.coordinator.span(),
                "coordinator",
                format!("{coordinator:?} must be an https:// URL, e.g. \"https://coord.corp.example:7443\""),
            );
        }
        let reconnect_initial = ctx.duration(
            &raw.reconnect.initial,
            "reconnect.initial",
            Duration::from_millis(500),
        );
        let reconnect_max =
            ctx.duration(&raw.reconnect.max, "reconnect.max", Duration::from_secs(30));

        let mut actions = BTreeMap::new();
        for (name, action) in &raw.actions {
            let key = format!("actions.{}", name.get_ref());
            let Ok(action_name) = name.get_ref().parse::<ActionName>() else {
                ctx.problem(
                    name.span(),
                    &key,
                    format!(
                        "{:?} is not an action of the catalogue: use one of {}",
                        name.get_ref(),
                        ActionName::ALL.map(|a| a.as_str()).join(", ")
                    ),
                );
                continue;
            };
            if action.program.get_ref().trim().is_empty() {
                ctx.problem(
                    action.program.span(),
                    &format!("{key}.program"),
                    "the program is empty".into(),
                );
            }
            for (i, arg) in action.args.iter().enumerate() {
                if let Err(e) = check_template(arg.get_ref()) {
                    ctx.problem(
                        arg.span(),
                        &format!("{key}.args[{i}]"),
                        format!(
                            "{e}; the placeholders are {}",
                            PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
                        ),
                    );
                }
            }
            let timeout = action
                .timeout
                .as_ref()
                .map(|t| ctx.duration_of(t, &format!("{key}.timeout"), Duration::from_secs(600)));
            actions.insert(
                action_name,
                ActionOverride {
                    program: rel(action.program.get_ref().trim()),
                    args: action.args.iter().map(|a| a.get_ref().clone()).collect(),
                    timeout,
                    env: action.env.clone(),
                },
            );
        }
        let reboot = match raw.reboot.as_ref().map(|r| (r, r.get_ref().as_str())) {
            None | Some((_, "never")) => RebootPolicy::Never,
            Some((_, "if-required")) => RebootPolicy::IfRequired,
            Some((at, other)) => {
                ctx.problem(
                    at.span(),
                    "reboot",
                    format!("{other:?} is not a reboot policy: use \"never\" or \"if-required\""),
                );
                RebootPolicy::Never
            }
        };
        let entsso_start_budget = ctx.duration(
            &raw.verify.entsso_start_budget,
            "verify.entsso_start_budget",
            Duration::from_secs(600),
        );
        let shutdown_timeout = ctx.duration(
            &raw.shutdown_timeout,
            "shutdown_timeout",
            Duration::from_secs(10),
        );
        let tools = ctx.tools(&raw.tools, base);
        if !ctx.problems.is_empty() {
            ctx.problems.sort_by_key(|p| p.line);
            return Err(fail(ctx.problems));
        }
        Ok(Self {
            path: path.to_path_buf(),
            node,
            coordinator,
            state_dir: rel(raw.state_dir.get_ref()),
            tls: TlsFiles {
                ca: rel(&raw.tls.ca),
                cert: rel(&raw.tls.cert),
                key: rel(&raw.tls.key),
            },
            backup_password_file: raw.secrets.backup_password_file.as_deref().map(rel),
            actions,
            reconnect_initial,
            reconnect_max: reconnect_max.max(reconnect_initial),
            reboot,
            entsso_start_budget,
            shutdown_timeout,
            tools: Tools::for_this_platform(&tools),
            sso: SsoSettings {
                service_account: raw.sso.service_account.clone(),
                service_password_file: raw.sso.service_password_file.as_deref().map(rel),
                database_server: raw.sso.database_server.clone(),
                database: raw.sso.database.clone().unwrap_or_else(|| "SSODB".into()),
                admin_group: raw
                    .sso
                    .admin_group
                    .clone()
                    .unwrap_or_else(|| "SSO Administrators".into()),
                affiliate_admin_group: raw
                    .sso
                    .affiliate_admin_group
                    .clone()
                    .unwrap_or_else(|| "SSO Affiliate Administrators".into()),
            },
        })
    }
}

struct Ctx<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl Ctx<'_> {
    fn tools(&mut self, raw: &RawTools, base: &Path) -> ToolOverrides {
        let mut path = |value: &Option<Spanned<String>>, key: &str| {
            let value = value.as_ref()?;
            let text = value.get_ref().trim();
            if text.is_empty() {
                self.problem(
                    value.span(),
                    &format!("tools.{key}"),
                    "the path is empty".into(),
                );
                return None;
            }
            Some(base.join(text))
        };
        let overrides = ToolOverrides {
            sc: path(&raw.sc, "sc"),
            reg: path(&raw.reg, "reg"),
            boot_id: path(&raw.boot_id, "boot_id"),
            shutdown: path(&raw.shutdown, "shutdown"),
            msiexec: path(&raw.msiexec, "msiexec"),
            powershell: path(&raw.powershell, "powershell"),
            wevtutil: path(&raw.wevtutil, "wevtutil"),
            ssomanage: path(&raw.ssomanage, "ssomanage"),
            biztalk_configuration: path(&raw.biztalk_configuration, "biztalk_configuration"),
            udbkey: path(&raw.udbkey, "udbkey"),
            hissomig: path(&raw.hissomig, "hissomig"),
            esso_dir: path(&raw.esso_dir, "esso_dir"),
            migration_dir: path(&raw.migration_dir, "migration_dir"),
            host_account_cache_service: None,
        };
        if cfg!(windows) {
            // The stand-ins exist for platforms without the APIs; on Windows they would read a
            // localized text where the API reads the value itself.
            for (value, key) in [
                (&raw.sc, "sc"),
                (&raw.reg, "reg"),
                (&raw.boot_id, "boot_id"),
            ] {
                if let Some(value) = value {
                    self.problem(
                        value.span(),
                        &format!("tools.{key}"),
                        "on Windows the agent reads the registry, the service controller and the boot through their APIs: remove this key".into(),
                    );
                }
            }
        }
        let service = raw.host_account_cache_service.as_ref().and_then(|name| {
            let text = name.get_ref().trim();
            // Service names cannot hold these (MS-SCMR: "/", "\\", "," and space are illegal).
            if text.is_empty() || text.contains(['/', '\\', ',', ' ']) {
                self.problem(
                    name.span(),
                    "tools.host_account_cache_service",
                    format!("{:?} is not a service name (no spaces, slashes or commas), e.g. \"SnaDatabase\"", name.get_ref()),
                );
                None
            } else {
                Some(text.to_string())
            }
        });
        ToolOverrides {
            host_account_cache_service: service,
            ..overrides
        }
    }

    fn problem(&mut self, at: std::ops::Range<usize>, key: &str, message: String) {
        self.problems.push(Problem {
            line: line_of(self.text, at.start),
            key: key.to_string(),
            message,
        });
    }

    fn duration(
        &mut self,
        raw: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        raw.as_ref()
            .map_or(default, |d| self.duration_of(d, key, default))
    }

    fn duration_of(&mut self, raw: &Spanned<String>, key: &str, default: Duration) -> Duration {
        match humantime::parse_duration(raw.get_ref().trim()) {
            Ok(v) if !v.is_zero() => v,
            _ => {
                self.problem(
                    raw.span(),
                    key,
                    format!(
                        "{:?} is not a duration longer than zero; write e.g. \"10m\" or \"500ms\"",
                        raw.get_ref()
                    ),
                );
                default
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"node = "SSO-DEV-01"
coordinator = "https://coord.corp.example:7443"
state_dir = 'state'
[tls]
ca = "ca.pem"
cert = "agent.pem"
key = "agent-key.pem"
[secrets]
backup_password_file = 'backup-password'
[actions.backup_secret]
program = "/opt/fake-esso/ssoconfig"
args = ["-backupSecret", "{backup_file}"]
timeout = "10m"
"#;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(Path::new("/etc/ssofleet/agent.toml"), text)
    }

    #[test]
    fn parses_the_spec_example() {
        let c = parse(VALID).unwrap();
        assert_eq!(c.node, "sso-dev-01");
        assert_eq!(c.state_dir, PathBuf::from("/etc/ssofleet/state"));
        assert_eq!(c.tls.cert, PathBuf::from("/etc/ssofleet/agent.pem"));
        let action = &c.actions[&ActionName::BackupSecret];
        assert_eq!(action.program, PathBuf::from("/opt/fake-esso/ssoconfig"));
        assert_eq!(action.timeout, Some(Duration::from_secs(600)));
        assert_eq!(c.reboot, RebootPolicy::Never);
    }

    /// Started as `fleet-agent --config agent.toml` in the agent's folder, its paths are still
    /// absolute (the tools it runs get them).
    #[test]
    fn paths_are_absolute_when_the_file_is_named_relative() {
        let here = std::env::current_dir().unwrap();
        let dir = tempfile::tempdir_in(&here).unwrap();
        std::fs::write(dir.path().join("agent.toml"), VALID).unwrap();
        let relative = dir.path().strip_prefix(&here).unwrap().join("agent.toml");
        assert!(relative.is_relative());
        let c = AgentConfig::load(&relative).unwrap();
        assert!(c.state_dir.is_absolute(), "{}", c.state_dir.display());
        assert_eq!(c.state_dir, dir.path().join("state"));
    }

    #[test]
    fn the_deploy_example_is_valid() {
        let example = include_str!("../../deploy/examples/agent.toml");
        let c = AgentConfig::parse(Path::new("agent.toml"), example).unwrap();
        assert_eq!(c.node, "sso-dev-01");
        assert_eq!(c.reconnect_max, Duration::from_secs(30));
    }

    /// The Windows agent uses the registry's and the service controller's APIs: a stand-in named for
    /// them is a mistake it names (run under Wine by the Windows tier).
    #[test]
    #[cfg(windows)]
    fn the_windows_agent_refuses_stand_ins_for_its_apis() {
        let e = parse(&format!("{VALID}[tools]\nsc = 'fake/sc'\n")).unwrap_err();
        assert!(
            e.to_string().contains("line 15, key tools.sc: on Windows the agent reads the registry, the service controller and the boot through their APIs"),
            "{e}"
        );
    }

    #[test]
    fn tools_are_read_relative_to_the_file() {
        let text = format!(
            "{VALID}[tools]\nwevtutil = 'fake/wevtutil'\nssomanage = '/opt/esso/ssomanage'\nmigration_dir = 'hostsec'\nhost_account_cache_service = 'SnaHac'\n"
        );
        let c = parse(&text).unwrap();
        assert_eq!(
            c.tools.wevtutil,
            Some(PathBuf::from("/etc/ssofleet/fake/wevtutil"))
        );
        assert_eq!(
            c.tools.ssomanage,
            Some(PathBuf::from("/opt/esso/ssomanage"))
        );
        assert_eq!(
            c.tools.hissomig,
            Some(PathBuf::from("/etc/ssofleet/hostsec/hissomig.exe"))
        );
        assert_eq!(c.tools.host_account_cache_service, "SnaHac");
        if !cfg!(windows) {
            assert_eq!(c.tools.reg, None);
            assert_eq!(parse(VALID).unwrap().tools, Tools::default());
        }

        let e = parse(&format!("{VALID}[tools]\nscexe = 'x'\n")).unwrap_err();
        assert!(
            e.to_string()
                .contains("line 15, key tools.scexe: unknown key `scexe`"),
            "{e}"
        );
        let e = parse(&format!(
            "{VALID}[tools]\nwevtutil = ''\nhost_account_cache_service = 'Sna Hac'\n"
        ))
        .unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.contains("line 15, key tools.wevtutil: the path is empty"),
            "{shown}"
        );
        assert!(
            shown.contains(
                "line 16, key tools.host_account_cache_service: \"Sna Hac\" is not a service name"
            ),
            "{shown}"
        );
    }

    #[test]
    fn problems_name_line_and_key() {
        let e = parse(&VALID.replace("[actions.backup_secret]", "[actions.backup_secrets]"))
            .unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.starts_with("/etc/ssofleet/agent.toml: line 10, key actions.backup_secrets: "),
            "{shown}"
        );

        let e = parse(&VALID.replace("{backup_file}", "{backupfile}")).unwrap_err();
        assert!(
            e.to_string().contains(
                "line 12, key actions.backup_secret.args[1]: unknown placeholder {backupfile}"
            ),
            "{e}"
        );

        let e = parse(&VALID.replace("https://", "http://")).unwrap_err();
        assert!(e.to_string().contains("line 2, key coordinator"), "{e}");

        let e = parse(&VALID.replace("[tls]", "[tls]\npassword = 1")).unwrap_err();
        assert!(
            e.to_string()
                .contains("line 5, key tls.password: unknown key `password`"),
            "{e}"
        );
    }
}
