//! `[environment.sso_database]` (SPEC §4): where an environment's SSO database is on SQL Server, how
//! the coordinator logs in to it and how the connection is encrypted. Validated here, once; the
//! coordinator's `sql` module connects with the typed [`SsoDatabase`].

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Checker;

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSsoDatabase {
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

impl Checker<'_> {
    pub(super) fn sso_database(
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
