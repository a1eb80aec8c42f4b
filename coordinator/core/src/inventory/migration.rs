//! `[environment.migration]` (SPEC §4): where the host security data of Host Integration Server 2000
//! or SNA Server 4.0 comes from, and where its backups and the encryption key go. Validated here, once;
//! the planner and the assignments read the typed [`Migration`].
//!
//! Every parameter a built-in migration step needs comes from here or from the agent's own
//! configuration, never from a default that cannot be right: `backup_dir` is required.

use serde::Deserialize;
use toml::Spanned;

use super::Checker;

/// How an environment's master migrates the old host security data into ESSO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub source: HostSecurity,
    /// Where the old security data and the HIS 2000 encryption key are backed up.
    pub backup_dir: String,
    /// Where `hissomig -log` writes its migration log.
    pub log_dir: Option<String>,
}

/// The old product and where its host security data is (ESSO.md, migration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostSecurity {
    /// Host Integration Server 2000: the primary domain controller holding host security
    /// (`hissomig -export -servername`), which also runs the Host Account Cache service.
    His2000 { server: String },
    /// SNA Server 4.0: the host security database file (`hissomig -export -dbfile`). It has no
    /// encryption key to export.
    Sna4 { dbfile: String },
}

impl Migration {
    /// As written in `source` and sent to the agent as `migration_source`.
    pub fn source_name(&self) -> &'static str {
        match self.source {
            HostSecurity::His2000 { .. } => "his2000",
            HostSecurity::Sna4 { .. } => "sna4",
        }
    }

    /// Only Host Integration Server 2000 has an encryption key (`udbkey /showkey`).
    pub fn has_key(&self) -> bool {
        matches!(self.source, HostSecurity::His2000 { .. })
    }

    /// The server whose Host Account Cache service must be stopped for the export, where the inventory
    /// tells: HIS 2000's host security server, or the server of an SNA Server 4.0 database file given
    /// as a UNC path (`\\server\share\…`). `None`: the database file is on the master's own disk (an
    /// agent, a Windows service, sees no mapped drives), where the export step stops the service.
    pub fn host_account_cache_server(&self) -> Option<&str> {
        match &self.source {
            HostSecurity::His2000 { server } => Some(server),
            HostSecurity::Sna4 { dbfile } => unc_server(dbfile),
        }
    }
}

/// `server` of `\\server\share\…`.
fn unc_server(path: &str) -> Option<&str> {
    let rest = path.strip_prefix(r"\\")?;
    let server = rest.split('\\').next()?;
    (!server.is_empty() && server != "?" && server != ".").then_some(server)
}

/// Whether `path` is a full Windows path: `X:\…` or `\\server\share\…`.
fn full_windows_path(path: &str) -> bool {
    let bytes = path.as_bytes();
    let drive =
        bytes.len() > 3 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' && bytes[2] == b'\\';
    drive || unc_server(path).is_some_and(|s| path.len() > s.len() + 3)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMigration {
    source: Option<Spanned<String>>,
    host_security_server: Option<Spanned<String>>,
    host_security_dbfile: Option<Spanned<String>>,
    backup_dir: Option<Spanned<String>>,
    log_dir: Option<Spanned<String>>,
}

impl Checker<'_> {
    /// Checks `[environment.migration]` (`key` is its key, e.g. `environment[0].migration`).
    pub(super) fn migration(
        &mut self,
        spanned: &Spanned<RawMigration>,
        key: &str,
    ) -> Option<Migration> {
        let raw = spanned.get_ref();
        let (server, dbfile) = (&raw.host_security_server, &raw.host_security_dbfile);
        let source = match raw.source.as_ref().map(|s| (s, s.get_ref().trim())) {
            None => {
                self.problem(
                    spanned,
                    format!("{key}.source"),
                    "source is missing: write source = \"his2000\" (Host Integration Server 2000) or \"sna4\" (SNA Server 4.0)",
                );
                None
            }
            Some((_, "his2000")) => {
                if let Some(file) = dbfile {
                    self.problem(
                        file,
                        format!("{key}.host_security_dbfile"),
                        "host_security_dbfile is SNA Server 4.0's: with source = \"his2000\" name host_security_server only",
                    );
                }
                match server {
                    None => {
                        self.problem(
                            spanned,
                            format!("{key}.host_security_server"),
                            "source = \"his2000\" needs host_security_server: the primary domain controller holding the host security data (hissomig -export -servername)",
                        );
                        None
                    }
                    Some(s) => self
                        .host_security_server(s, &format!("{key}.host_security_server"))
                        .filter(|_| dbfile.is_none())
                        .map(|server| HostSecurity::His2000 { server }),
                }
            }
            Some((_, "sna4")) => {
                if let Some(s) = server {
                    self.problem(
                        s,
                        format!("{key}.host_security_server"),
                        "host_security_server is Host Integration Server 2000's: with source = \"sna4\" name host_security_dbfile only",
                    );
                }
                match dbfile {
                    None => {
                        self.problem(
                            spanned,
                            format!("{key}.host_security_dbfile"),
                            "source = \"sna4\" needs host_security_dbfile: the full path of the SNA Server 4.0 host security database file (hissomig -export -dbfile)",
                        );
                        None
                    }
                    Some(f) => self
                        .host_security_dbfile(f, &format!("{key}.host_security_dbfile"))
                        .filter(|_| server.is_none())
                        .map(|dbfile| HostSecurity::Sna4 { dbfile }),
                }
            }
            Some((at, other)) => {
                self.problem(
                    at,
                    format!("{key}.source"),
                    format!(
                        "{other:?} is not a migration source: use \"his2000\" (Host Integration Server 2000) or \"sna4\" (SNA Server 4.0)"
                    ),
                );
                None
            }
        };
        let backup_dir = match &raw.backup_dir {
            None => {
                self.problem(
                    spanned,
                    format!("{key}.backup_dir"),
                    "backup_dir is missing: name where the old host security data and its encryption key are backed up (e.g. '\\\\backup01\\hostsec\\dev')",
                );
                None
            }
            Some(dir) => self.not_empty(dir, &format!("{key}.backup_dir"), "backup directory"),
        };
        let log_dir = match &raw.log_dir {
            None => Some(None),
            Some(dir) => self
                .not_empty(dir, &format!("{key}.log_dir"), "migration log directory")
                .map(Some),
        };
        Some(Migration {
            source: source?,
            backup_dir: backup_dir?,
            log_dir: log_dir?,
        })
    }

    fn not_empty(&mut self, raw: &Spanned<String>, key: &str, what: &str) -> Option<String> {
        let value = raw.get_ref().trim();
        if value.is_empty() {
            self.problem(raw, key, format!("the {what} is empty"));
            return None;
        }
        Some(value.to_string())
    }

    /// A server as hissomig takes it: a fully qualified name, a NetBIOS name or an IP address.
    fn host_security_server(&mut self, raw: &Spanned<String>, key: &str) -> Option<String> {
        let value = self.not_empty(raw, key, "host security server")?;
        let name_like = value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
        if !name_like {
            self.problem(
                raw,
                key,
                format!(
                    "{value:?} is not a server name: write the fully qualified name, NetBIOS name or IP address of the Host Integration Server 2000 primary domain controller"
                ),
            );
            return None;
        }
        Some(value)
    }

    fn host_security_dbfile(&mut self, raw: &Spanned<String>, key: &str) -> Option<String> {
        let value = self.not_empty(raw, key, "host security database file")?;
        if !full_windows_path(&value) {
            self.problem(
                raw,
                key,
                format!(
                    "{value:?} is not a full path: write the database file's full path on the master (e.g. 'D:\\SNA Server\\hostsec\\dbfile.dbs') or a UNC path ('\\\\sna01\\hostsec\\dbfile.dbs'); the agent, a service, sees no mapped drives"
                ),
            );
            return None;
        }
        Some(value)
    }
}

#[cfg(test)]
mod tests;
