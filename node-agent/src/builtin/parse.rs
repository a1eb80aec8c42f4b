//! Reading what ESSO's own tools print, as pure functions tested against recorded samples
//! (`samples/`, each naming its source): `ssomanage -displaydb`, ESSO's events as `wevtutil qe /f:xml`
//! prints them, and the ESSO error codes (0xC0002Axx) the tools print when they fail. These stay text
//! parsers because no API reads them; the registry and the service controller are read through their
//! APIs (`system`).

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
        // The 2008 console capture's labels, then the docs' ("how to display the SSO database
        // information": BizTalk's "Single Sign-On database", HIS's "SQL Server database").
        match label.as_str() {
            "sql server" => info.sql_server = Some(value),
            "sso database" | "single sign-on database" | "sql server database" => {
                info.database = Some(value)
            }
            "sso admin account" | "single sign-on administrators account" => {
                info.admin_account = Some(value)
            }
            "sso enabled" | "single sign-on status" => info.enabled = yes_no(&value),
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
        0xC000_2A24 => {
            "could not import a DTC transaction: check that MSDTC is configured for remote operation"
        }
        // The next three are not in Microsoft's docs; ESSO.md has them from ESSO's message file.
        0xC000_2A25 => "could not import a DTC transaction (MSDTC): check MSDTC's remote settings",
        0xC000_2A10 => "Enterprise Single Sign-On is offline",
        0xC000_2A02 => "the SSO system is disabled",
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

/// One of ESSO's events as `wevtutil qe … /f:xml` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: u32,
    /// `TimeCreated/@SystemTime`, as written (UTC, ISO 8601).
    pub time: String,
}

/// Reads `wevtutil qe /f:xml` output: one `<Event>` element after another (no enclosing root), each
/// with `<EventID …>n</EventID>` and `<TimeCreated SystemTime='…'/>` under `<System>` (the Windows
/// event schema; the rendered message, which Windows localizes, is not read). In the order printed.
pub fn parse_events(xml: &str) -> Vec<Event> {
    let starts: Vec<usize> = xml
        .match_indices("<Event")
        .map(|(i, _)| i)
        .filter(|&i| xml[i + "<Event".len()..].starts_with([' ', '>']))
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(k, &at)| &xml[at..starts.get(k + 1).copied().unwrap_or(xml.len())])
        .filter_map(|event| {
            let id = event.split("<EventID").nth(1)?;
            let id = id.get(id.find('>')? + 1..)?;
            let id = id.get(..id.find('<')?)?.trim().parse().ok()?;
            let time = event
                .split("SystemTime=")
                .nth(1)
                .and_then(|t| {
                    let quote = t.chars().next()?;
                    let rest = &t[quote.len_utf8()..];
                    rest.get(..rest.find(quote)?)
                })
                .unwrap_or_default()
                .to_string();
            Some(Event { id, time })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISPLAYDB: &str = include_str!("samples/ssomanage-displaydb.txt");
    const NOT_MASTER: &str = include_str!("samples/ssoconfig-error-not-master.txt");
    const EVENTS: &str = include_str!("samples/wevtutil-entsso-events.xml");

    #[test]
    fn events_as_wevtutil_prints_them() {
        let events = parse_events(EVENTS);
        let ids: Vec<u32> = events.iter().map(|e| e.id).collect();
        assert_eq!(ids, [10536, 10534]);
        assert_eq!(events[0].time, "2026-11-29T07:12:03.4567890Z");
        assert_eq!(parse_events(""), []);
        let second: String = EVENTS.lines().skip(1).collect();
        assert_eq!(parse_events(&second).len(), 1, "{second}");
        assert_eq!(
            parse_events("<Event><System><EventID>10529</EventID></System></Event>"),
            [Event {
                id: 10529,
                time: String::new()
            }]
        );
    }

    #[test]
    fn displaydb_of_the_microsoft_sample() {
        let info = parse_displaydb(DISPLAYDB).unwrap();
        assert_eq!(info.sql_server.as_deref(), Some("dsiteamsrv"));
        assert_eq!(info.database.as_deref(), Some("SSODB"));
        assert_eq!(info.secret_server, "DSITEAMSRV");
        assert_eq!(info.enabled, Some(true));
        assert_eq!(info.admin_account.as_deref(), Some("SSO Administrators"));
        // Aligned columns and the docs' wording (biztalk/core/how-to-display-the-sso-database-
        // information.md; HIS names the database row "SQL Server database").
        let aligned = "Single Sign-On Secret Server name   :  sso-dev-01.corp.example\nSSO enabled          : No\n";
        let info = parse_displaydb(aligned).unwrap();
        assert_eq!(info.secret_server, "sso-dev-01.corp.example");
        assert_eq!(info.enabled, Some(false));
        let docs = "SQL Server : sql01\nSingle Sign-On database : SSODB\nSingle Sign-On Secret Server name : SSOCLUSTER\nSingle Sign-On Administrators account : CORP\\SSO Admins\nSingle Sign-On Status : Enabled\n";
        let info = parse_displaydb(docs).unwrap();
        assert_eq!(
            (
                info.database.as_deref(),
                info.secret_server.as_str(),
                info.enabled
            ),
            (Some("SSODB"), "SSOCLUSTER", Some(true))
        );
        assert_eq!(info.admin_account.as_deref(), Some(r"CORP\SSO Admins"));
        let his = parse_displaydb("SQL Server database : SSODB2\nSingle Sign-On Secret Server name : M\nSingle Sign-On Status : Disabled\n").unwrap();
        assert_eq!(
            (
                info.sql_server.as_deref(),
                his.database.as_deref(),
                his.enabled
            ),
            (Some("sql01"), Some("SSODB2"), Some(false))
        );
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
}
