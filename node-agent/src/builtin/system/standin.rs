//! The stand-ins for the registry and the service controller where Windows' APIs do not exist (the
//! Linux tests): programs named in `[tools] reg` and `[tools] sc` that speak reg.exe's and sc.exe's
//! formats (`reg query <key> [/v <value>] [/reg:32]`, `sc query|start|stop <service>`), read here as
//! recorded in `../samples/`. The Windows agent never runs them: it calls the APIs (`super::windows`).

use super::{RegView, SERVICE_DOES_NOT_EXIST, ServiceState, ServiceStatus};
use crate::builtin::commands::{self, Invocation};
use crate::builtin::session::{Echo, Fail, Ran, Session};
use crate::builtin::tools::Tool;

pub(super) async fn key_exists(
    s: &mut Session<'_>,
    view: RegView,
    key: &str,
) -> Result<bool, Fail> {
    Ok(query(s, view, key, None).await?.is_some())
}

pub(super) async fn value(
    s: &mut Session<'_>,
    view: RegView,
    key: &str,
    name: &str,
) -> Result<Option<String>, Fail> {
    Ok(query(s, view, key, Some(name))
        .await?
        .and_then(|k| k.value(name).map(RegData::text)))
}

async fn query(
    s: &mut Session<'_>,
    view: RegView,
    key: &str,
    value: Option<&str>,
) -> Result<Option<RegKey>, Fail> {
    let reg = s.tool(Tool::Reg)?;
    let mut args = vec!["query", key];
    if let Some(value) = value {
        args.extend(["/v", value]);
    }
    if view == RegView::Wow32 {
        args.push("/reg:32");
    }
    let ran = s
        .exec(&Invocation::new(&reg, &args), None, Echo::Quiet)
        .await?;
    match parse_reg_query(&ran.stdout_text(), &ran.stderr.join("\n"), ran.exit_code) {
        Ok(RegQuery::Found(k)) => Ok(Some(k)),
        Ok(RegQuery::Missing) => Ok(None),
        Err(e) => Err(Fail::new(format!("{key}: {e}"))),
    }
}

async fn sc(s: &mut Session<'_>, verb: &str, service: &str) -> Result<Ran, Fail> {
    let sc = s.tool(Tool::Sc)?;
    s.exec(&Invocation::new(&sc, &[verb, service]), None, Echo::Quiet)
        .await
}

pub(super) async fn service(s: &mut Session<'_>, service: &str) -> Result<ServiceStatus, Fail> {
    let ran = sc(s, "query", service).await?;
    parse_sc_query(&ran.all_text(), ran.exit_code).map_err(Fail::new)
}

/// `sc start`; 1056: already running.
pub(super) async fn start(s: &mut Session<'_>, service: &str) -> Result<(), Fail> {
    control(s, "start", service, 1056).await
}

/// `sc stop`; 1062: not started.
pub(super) async fn stop(s: &mut Session<'_>, service: &str) -> Result<(), Fail> {
    control(s, "stop", service, 1062).await
}

/// `sc <verb> <service>`: done, or already so (`already`, sc's error for that).
async fn control(s: &mut Session<'_>, verb: &str, service: &str, already: i32) -> Result<(), Fail> {
    let ran = sc(s, verb, service).await?;
    if ran.ok() || ran.exit_code == Some(already) {
        return Ok(());
    }
    Err(Fail::new(format!(
        "the {service} service did not {verb} (sc {verb} exited with code {}): {}",
        commands::code_text(ran.exit_code),
        last_line(&ran.all_text())
    )))
}

/// The SERVICE_STATUS `dwCurrentState` numbers that `sc query` prints.
fn state_of_number(n: u32) -> Option<ServiceState> {
    Some(match n {
        1 => ServiceState::Stopped,
        2 => ServiceState::StartPending,
        3 => ServiceState::StopPending,
        4 => ServiceState::Running,
        5 => ServiceState::ContinuePending,
        6 => ServiceState::PausePending,
        7 => ServiceState::Paused,
        _ => return None,
    })
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(text)
}

/// Reads `sc query <service>`'s output (both streams) and exit code.
pub(super) fn parse_sc_query(
    output: &str,
    exit_code: Option<i32>,
) -> Result<ServiceStatus, String> {
    if exit_code == Some(SERVICE_DOES_NOT_EXIST) || output.contains("FAILED 1060") {
        return Ok(ServiceStatus {
            state: ServiceState::NotInstalled,
            win32_exit_code: None,
        });
    }
    let field = |name: &str| {
        output.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_string())
        })
    };
    let first_number = |s: &str| {
        s.split_whitespace()
            .next()
            .and_then(|n| n.parse::<u32>().ok())
    };
    let Some(state) = field("STATE") else {
        let shown = output.trim();
        return Err(if shown.is_empty() {
            format!("sc query printed nothing (exit code {exit_code:?})")
        } else {
            format!("sc query printed no STATE: {}", last_line(shown))
        });
    };
    let state = first_number(&state)
        .and_then(state_of_number)
        .ok_or_else(|| format!("sc query printed an unknown STATE {state:?}"))?;
    Ok(ServiceStatus {
        state,
        win32_exit_code: field("WIN32_EXIT_CODE").as_deref().and_then(first_number),
    })
}

/// A registry value as `reg query` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RegData {
    Sz(String),
    /// Printed unexpanded (`%CommonProgramFiles%\…`).
    ExpandSz(String),
    Dword(u32),
    Qword(u64),
    /// `reg query` separates the strings with a literal `\0`.
    MultiSz(Vec<String>),
    Other {
        kind: String,
        raw: String,
    },
}

impl RegData {
    /// The value as text: strings as they are, numbers in decimal.
    pub(super) fn text(&self) -> String {
        match self {
            RegData::Sz(s) | RegData::ExpandSz(s) => s.clone(),
            RegData::Dword(n) => n.to_string(),
            RegData::Qword(n) => n.to_string(),
            RegData::MultiSz(v) => v.join(","),
            RegData::Other { raw, .. } => raw.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RegValue {
    pub name: String,
    pub data: RegData,
}

/// One key: its values and, when queried without `/v`, its subkeys (full paths).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct RegKey {
    pub path: String,
    pub values: Vec<RegValue>,
    pub subkeys: Vec<String>,
}

impl RegKey {
    /// The value named `name` (case-insensitive, as the registry is).
    pub(super) fn value(&self, name: &str) -> Option<&RegData> {
        self.values
            .iter()
            .find(|v| v.name.eq_ignore_ascii_case(name))
            .map(|v| &v.data)
    }
}

/// What `reg query` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RegQuery {
    Found(RegKey),
    /// The key or value does not exist.
    Missing,
}

const REG_MISSING: &str = "unable to find the specified registry key or value";

/// Reads `reg query`'s standard output, standard error and exit code.
pub(super) fn parse_reg_query(
    stdout: &str,
    stderr: &str,
    exit_code: Option<i32>,
) -> Result<RegQuery, String> {
    if stderr.contains(REG_MISSING) || stdout.contains(REG_MISSING) {
        return Ok(RegQuery::Missing);
    }
    if exit_code != Some(0) {
        let why = [stderr.trim(), stdout.trim()]
            .into_iter()
            .find(|s| !s.is_empty())
            .map(last_line)
            .unwrap_or("no output");
        return Err(format!("reg query failed (exit code {exit_code:?}): {why}"));
    }
    let mut key: Option<RegKey> = None;
    for line in stdout.lines() {
        let line = line.trim_end();
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with("HKEY_") {
            match &mut key {
                None => {
                    key = Some(RegKey {
                        path: line.to_string(),
                        ..Default::default()
                    })
                }
                Some(k) => k.subkeys.push(line.to_string()),
            }
        } else if let (Some(k), Some(value)) = (&mut key, parse_reg_value(line)) {
            k.values.push(value);
        }
    }
    key.map(RegQuery::Found)
        .ok_or_else(|| "reg query printed no key".to_string())
}

/// `    <name>    <REG_TYPE>    <data>`: four spaces separate the columns; a name may hold spaces.
fn parse_reg_value(line: &str) -> Option<RegValue> {
    let line = line.trim_start();
    let at = line.find("    REG_")?;
    let name = line[..at].to_string();
    let rest = &line[at + 4..];
    let (kind, data) = match rest.split_once(char::is_whitespace) {
        Some((kind, data)) => (kind, data.strip_prefix("   ").unwrap_or(data.trim_start())),
        None => (rest, ""),
    };
    let number = |s: &str| s.trim().strip_prefix("0x").map(str::to_string);
    let data = match kind {
        "REG_SZ" => RegData::Sz(data.to_string()),
        "REG_EXPAND_SZ" => RegData::ExpandSz(data.to_string()),
        "REG_DWORD" => match number(data).and_then(|h| u32::from_str_radix(&h, 16).ok()) {
            Some(n) => RegData::Dword(n),
            None => RegData::Other {
                kind: kind.into(),
                raw: data.into(),
            },
        },
        "REG_QWORD" => match number(data).and_then(|h| u64::from_str_radix(&h, 16).ok()) {
            Some(n) => RegData::Qword(n),
            None => RegData::Other {
                kind: kind.into(),
                raw: data.into(),
            },
        },
        "REG_MULTI_SZ" => RegData::MultiSz(
            data.split("\\0")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        ),
        _ => RegData::Other {
            kind: kind.into(),
            raw: data.into(),
        },
    };
    Some(RegValue { name, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNNING: &str = include_str!("../samples/sc-query-running.txt");
    const STOPPED: &str = include_str!("../samples/sc-query-stopped.txt");
    const START_PENDING: &str = include_str!("../samples/sc-query-start-pending.txt");
    const NOT_INSTALLED: &str = include_str!("../samples/sc-query-not-installed.txt");
    const REG_BIZTALK: &str = include_str!("../samples/reg-query-biztalk-version.txt");
    const REG_ENTSSO: &str = include_str!("../samples/reg-query-entsso-key.txt");
    const REG_MISSING_TEXT: &str = include_str!("../samples/reg-query-missing.txt");

    #[test]
    fn sc_query_states() {
        let s = parse_sc_query(RUNNING, Some(0)).unwrap();
        assert_eq!(s.state, ServiceState::Running);
        assert_eq!(s.win32_exit_code, Some(0));
        let s = parse_sc_query(STOPPED, Some(0)).unwrap();
        assert_eq!(
            (s.state, s.win32_exit_code),
            (ServiceState::Stopped, Some(1077))
        );
        let s = parse_sc_query(&STOPPED.replace('\n', "\r\n"), Some(0)).unwrap();
        assert_eq!(s.state.as_str(), "stopped");
        assert_eq!(
            parse_sc_query(START_PENDING, Some(0))
                .unwrap()
                .state
                .as_str(),
            "start-pending"
        );
        assert_eq!(
            parse_sc_query(
                &START_PENDING.replace("2  START_PENDING", "3  STOP_PENDING"),
                Some(0)
            )
            .unwrap()
            .state,
            ServiceState::StopPending
        );
        assert_eq!(
            parse_sc_query(NOT_INSTALLED, Some(1060)).unwrap().state,
            ServiceState::NotInstalled
        );
        // The message alone is enough (sc's exit code lost by a wrapper).
        assert_eq!(
            parse_sc_query(NOT_INSTALLED, Some(1))
                .unwrap()
                .state
                .as_str(),
            "not-installed"
        );
        let e = parse_sc_query(
            "[SC] OpenSCManager FAILED 5:\n\nAccess is denied.\n",
            Some(5),
        )
        .unwrap_err();
        assert_eq!(e, "sc query printed no STATE: Access is denied.");
        assert!(parse_sc_query("", Some(1)).is_err());
    }

    #[test]
    fn reg_query_values_and_subkeys() {
        let RegQuery::Found(k) = parse_reg_query(REG_BIZTALK, "", Some(0)).unwrap() else {
            panic!("not found");
        };
        assert_eq!(
            k.path,
            r"HKEY_LOCAL_MACHINE\SOFTWARE\Microsoft\BizTalk Server\3.0"
        );
        assert_eq!(
            k.value("productversion"),
            Some(&RegData::Sz("3.13.717.0".into()))
        );

        let RegQuery::Found(k) =
            parse_reg_query(&REG_ENTSSO.replace('\n', "\r\n"), "", Some(0)).unwrap()
        else {
            panic!("not found");
        };
        assert_eq!(
            k.value("server").map(RegData::text).as_deref(),
            Some("3.0.7.0")
        );
        assert_eq!(
            k.value("Administration"),
            Some(&RegData::Sz("3.0.7.0".into()))
        );
        assert_eq!(k.value("ServiceStartTimeout"), Some(&RegData::Dword(180)));
        assert_eq!(
            parse_reg_value(
                r"    Path    REG_EXPAND_SZ    %CommonProgramFiles%\Enterprise Single Sign-On\"
            )
            .map(|v| v.data),
            Some(RegData::ExpandSz(
                r"%CommonProgramFiles%\Enterprise Single Sign-On\".into()
            ))
        );
        assert_eq!(
            k.value("(Default)"),
            Some(&RegData::Sz("(value not set)".into()))
        );
        assert!(k.subkeys.iter().any(|k| k.ends_with(r"\SSOSS")));

        assert_eq!(
            parse_reg_query("", REG_MISSING_TEXT, Some(1)).unwrap(),
            RegQuery::Missing
        );
        let e = parse_reg_query(
            "",
            "ERROR: Invalid key name.\nType \"REG QUERY /?\" for usage.\n",
            Some(1),
        )
        .unwrap_err();
        assert!(e.contains("exit code Some(1)"), "{e}");
    }

    #[test]
    fn reg_value_types() {
        let v = |line: &str| parse_reg_value(line).map(|v| (v.name, v.data));
        assert_eq!(
            v("    Display Name    REG_SZ    Enterprise Single Sign-On Service"),
            Some((
                "Display Name".into(),
                RegData::Sz("Enterprise Single Sign-On Service".into())
            ))
        );
        assert_eq!(
            v("    Empty    REG_SZ"),
            Some(("Empty".into(), RegData::Sz(String::new())))
        );
        assert_eq!(
            v("    Big    REG_QWORD    0x100000000"),
            Some(("Big".into(), RegData::Qword(1 << 32)))
        );
        assert_eq!(
            v(r"    Deps    REG_MULTI_SZ    RPCSS\0MSDTC"),
            Some((
                "Deps".into(),
                RegData::MultiSz(vec!["RPCSS".into(), "MSDTC".into()])
            ))
        );
        assert_eq!(v("HKEY_LOCAL_MACHINE\\X"), None);
    }
}
