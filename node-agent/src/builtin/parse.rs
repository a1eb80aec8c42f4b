//! Reading what the Windows tools print, as pure functions tested against recorded samples
//! (`samples/`, each naming its source): `sc query`, `reg query`, `ssomanage -displaydb`, and the
//! ESSO error codes (0xC0002Axx) that `ssoconfig`/`ssomanage` print when they fail.

/// A Windows service's state (`sc query`'s `STATE` line, or error 1060).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    Stopped,
    StartPending,
    StopPending,
    Running,
    ContinuePending,
    PausePending,
    Paused,
    NotInstalled,
}

impl ServiceState {
    /// The `service=` output value (the facts' words: running, stopped, start-pending, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Stopped => "stopped",
            ServiceState::StartPending => "start-pending",
            ServiceState::StopPending => "stop-pending",
            ServiceState::Running => "running",
            ServiceState::ContinuePending => "continue-pending",
            ServiceState::PausePending => "pause-pending",
            ServiceState::Paused => "paused",
            ServiceState::NotInstalled => "not-installed",
        }
    }

    /// The SERVICE_STATUS `dwCurrentState` numbers that `sc query` prints.
    fn from_number(n: u32) -> Option<Self> {
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceStatus {
    pub state: ServiceState,
    /// `WIN32_EXIT_CODE`: why a stopped service stopped (0: it was stopped, 1067: the process ended…).
    pub win32_exit_code: Option<u32>,
}

/// ERROR_SERVICE_DOES_NOT_EXIST, which `sc query` prints (and exits with) for an unknown service.
const SERVICE_DOES_NOT_EXIST: i32 = 1060;

/// Reads `sc query <service>`'s output (both streams) and exit code.
pub fn parse_sc_query(output: &str, exit_code: Option<i32>) -> Result<ServiceStatus, String> {
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
        .and_then(ServiceState::from_number)
        .ok_or_else(|| format!("sc query printed an unknown STATE {state:?}"))?;
    Ok(ServiceStatus {
        state,
        win32_exit_code: field("WIN32_EXIT_CODE").as_deref().and_then(first_number),
    })
}

/// A registry value as `reg query` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegData {
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
    pub fn text(&self) -> String {
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
pub struct RegValue {
    pub name: String,
    pub data: RegData,
}

/// One key: its values and, when queried without `/v`, its subkeys (full paths).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegKey {
    pub path: String,
    pub values: Vec<RegValue>,
    pub subkeys: Vec<String>,
}

impl RegKey {
    /// The value named `name` (case-insensitive, as the registry is).
    pub fn value(&self, name: &str) -> Option<&RegData> {
        self.values
            .iter()
            .find(|v| v.name.eq_ignore_ascii_case(name))
            .map(|v| &v.data)
    }

    /// Whether the key has a subkey with this last name component.
    pub fn has_subkey(&self, name: &str) -> bool {
        self.subkeys.iter().any(|s| {
            s.rsplit('\\')
                .next()
                .is_some_and(|last| last.eq_ignore_ascii_case(name))
        })
    }
}

/// What `reg query` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegQuery {
    Found(RegKey),
    /// The key or value does not exist.
    Missing,
}

const REG_MISSING: &str = "unable to find the specified registry key or value";

/// Reads `reg query`'s standard output, standard error and exit code.
pub fn parse_reg_query(
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

/// What `ssomanage -displaydb` says about the SSO system.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SsoDbInfo {
    pub sql_server: Option<String>,
    pub database: Option<String>,
    pub secret_server: String,
    /// `SSO enabled : Yes|No` under "Global flags".
    pub enabled: Option<bool>,
    pub admin_account: Option<String>,
}

/// Reads `ssomanage -displaydb` (`Label : value` lines; the labels of the Microsoft sample, and the
/// "Single Sign-On Secret Server name" wording of the docs).
pub fn parse_displaydb(output: &str) -> Result<SsoDbInfo, String> {
    let mut info = SsoDbInfo::default();
    let mut secret_server = None;
    for line in output.lines() {
        let Some((label, value)) = line.split_once(" : ").or_else(|| line.split_once(':')) else {
            continue;
        };
        let label = label
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_ascii_lowercase();
        let value = value.trim().to_string();
        match label.as_str() {
            "sql server" => info.sql_server = Some(value),
            "sso database" => info.database = Some(value),
            "sso admin account" => info.admin_account = Some(value),
            "sso enabled" => info.enabled = yes_no(&value),
            l if l.contains("secret server") => secret_server = Some(value),
            _ => {}
        }
    }
    match secret_server.filter(|s| !s.is_empty()) {
        Some(s) => {
            info.secret_server = s;
            Ok(info)
        }
        None => Err(match esso_error(output) {
            Some(e) => e.describe(),
            None => "ssomanage -displaydb printed no secret server name".into(),
        }),
    }
}

fn yes_no(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "yes" | "true" | "enabled" => Some(true),
        "no" | "false" | "disabled" => Some(false),
        _ => None,
    }
}

/// An error code found in a tool's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EssoError {
    pub code: u32,
}

impl EssoError {
    /// `0xC0002A0E: <what it means and what to do>`.
    pub fn describe(&self) -> String {
        let code = format!("0x{:08X}", self.code);
        match esso_error_meaning(self.code) {
            Some(meaning) => format!("{code}: {meaning}"),
            None => format!("{code}: ESSO error (see the ENTSSO events in the Application log)"),
        }
    }
}

/// The codes ESSO.md lists; the meanings follow ESSO's own message texts, plus what to do.
pub fn esso_error_meaning(code: u32) -> Option<&'static str> {
    Some(match code {
        0xC000_2A0F => "could not contact the SSO server: is the ENTSSO service running?",
        0xC000_2A0E => "this must be run on the master secret server, and this server is not it",
        0xC000_2A13 => "the agent's account is not a local administrator",
        0xC000_2A14 | 0xC000_2A52 => {
            "the agent's account is not an SSO administrator (add it to the SSO Administrators group)"
        }
        0xC000_2A07 => {
            "the backup file must be on an NTFS file system or removable media (not this location)"
        }
        0xC000_2A54 => "the backup password is shorter than the 7 characters ESSO requires",
        0xC000_2A1F => "no master secret is available from the master secret server",
        0xC000_2A3F => "the master secret is not the right one",
        0xC000_2A1B => "wrong password for the backup file",
        0xC000_2A50 => "the SSO database exists but needs an upgrade",
        0xC000_2A4F => "the SSO database already exists",
        0xC000_2A51 => "the SSO database is not configured",
        0xC000_2A20 => "could not create or open the file: check its name and the access rights",
        0xC000_2A21 => "an error occurred while accessing the SSO database",
        0x8007_06BA => {
            "the RPC server is unavailable: check the firewall (TCP 135, 49152-65535) and MSDTC"
        }
        0x8013_1700 => {
            ".NET could not load (not an ESSO error): check the .NET Framework installation"
        }
        _ => return None,
    })
}

/// The first error code (`0x` and eight hex digits) in a tool's output: a known one first, else any
/// ESSO code (0xC0002Axx).
pub fn esso_error(text: &str) -> Option<EssoError> {
    let codes: Vec<u32> = text
        .match_indices("0x")
        .chain(text.match_indices("0X"))
        .filter_map(|(i, _)| {
            let hex = text.get(i + 2..i + 10)?;
            let after = text[i + 10..].chars().next();
            if after.is_some_and(|c| c.is_ascii_hexdigit()) {
                return None;
            }
            u32::from_str_radix(hex, 16).ok()
        })
        .collect();
    codes
        .iter()
        .find(|c| esso_error_meaning(**c).is_some())
        .or_else(|| codes.iter().find(|c| *c & 0xFFFF_FF00 == 0xC000_2A00))
        .map(|code| EssoError { code: *code })
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(text)
}

/// Whether `found` names the server `expected` (ESSO may record a short name or an FQDN).
pub use fleet_proto::names::same_server;

#[cfg(test)]
mod tests {
    use super::*;

    const RUNNING: &str = include_str!("samples/sc-query-running.txt");
    const STOPPED: &str = include_str!("samples/sc-query-stopped.txt");
    const START_PENDING: &str = include_str!("samples/sc-query-start-pending.txt");
    const NOT_INSTALLED: &str = include_str!("samples/sc-query-not-installed.txt");
    const REG_BIZTALK: &str = include_str!("samples/reg-query-biztalk-version.txt");
    const REG_ENTSSO: &str = include_str!("samples/reg-query-entsso-key.txt");
    const REG_MISSING_TEXT: &str = include_str!("samples/reg-query-missing.txt");
    const DISPLAYDB: &str = include_str!("samples/ssomanage-displaydb.txt");
    const NOT_MASTER: &str = include_str!("samples/ssoconfig-error-not-master.txt");

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
            k.value("ProductVersion").map(RegData::text).as_deref(),
            Some("3.0.7")
        );
        assert_eq!(
            k.value("InstallPath"),
            Some(&RegData::ExpandSz(
                r"%CommonProgramFiles%\Enterprise Single Sign-On\".into()
            ))
        );
        assert_eq!(k.value("ServiceStartTimeout"), Some(&RegData::Dword(180)));
        assert_eq!(
            k.value("(Default)"),
            Some(&RegData::Sz("(value not set)".into()))
        );
        assert!(k.has_subkey("SSOSS"));
        assert!(!k.has_subkey("SSO"));

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

    #[test]
    fn displaydb_of_the_microsoft_sample() {
        let info = parse_displaydb(DISPLAYDB).unwrap();
        assert_eq!(info.sql_server.as_deref(), Some("dsiteamsrv"));
        assert_eq!(info.database.as_deref(), Some("SSODB"));
        assert_eq!(info.secret_server, "DSITEAMSRV");
        assert_eq!(info.enabled, Some(true));
        assert_eq!(info.admin_account.as_deref(), Some("SSO Administrators"));
        // Aligned columns and the docs' wording.
        let aligned = "Single Sign-On Secret Server name   :  sso-dev-01.corp.example\nSSO enabled          : No\n";
        let info = parse_displaydb(aligned).unwrap();
        assert_eq!(info.secret_server, "sso-dev-01.corp.example");
        assert_eq!(info.enabled, Some(false));
        let e = parse_displaydb("ERROR: 0xC0002A0F : Could not contact the SSO server 'X'.")
            .unwrap_err();
        assert!(
            e.starts_with("0xC0002A0F: could not contact the SSO server"),
            "{e}"
        );
    }

    #[test]
    fn esso_error_codes() {
        let e = esso_error(NOT_MASTER).unwrap();
        assert_eq!(e.code, 0xC000_2A0E);
        assert_eq!(
            e.describe(),
            "0xC0002A0E: this must be run on the master secret server, and this server is not it"
        );
        assert_eq!(
            esso_error("failed: 0x800706BA").map(|e| e.code),
            Some(0x8007_06BA)
        );
        assert_eq!(
            esso_error("code 0xc0002a54.").map(|e| e.code),
            Some(0xC000_2A54)
        );
        // An unknown ESSO code is still reported; other hex numbers are not errors.
        assert_eq!(
            esso_error("CHECKPOINT : 0x0\nERROR 0xC0002A99").map(|e| e.describe()),
            Some("0xC0002A99: ESSO error (see the ENTSSO events in the Application log)".into())
        );
        assert_eq!(esso_error("WAIT_HINT : 0x7d0 0x12345678"), None);
        assert_eq!(esso_error("0xC0002A0F0"), None);
    }

    #[test]
    fn server_names_compare_like_esso_records_them() {
        assert!(same_server("DSITEAMSRV", "dsiteamsrv"));
        assert!(same_server("SSO-DEV-01", "sso-dev-01.corp.example"));
        assert!(same_server("sso-dev-01.CORP.example", "sso-dev-01"));
        assert!(!same_server(
            "sso-dev-01.corp.example",
            "sso-dev-01.other.example"
        ));
        assert!(!same_server("sso-dev-02", "sso-dev-01.corp.example"));
        assert!(!same_server("", ""));
    }
}
