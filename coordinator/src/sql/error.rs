//! What went wrong with SQL Server, and the message that says it: [`SqlError`] by [`SqlErrorKind`], the
//! [`Stage`] it happened at, and [`describe`], which turns a [`Failure`] as tiberius reported it into
//! words naming the server, the login, the database and what to check.

use std::fmt;

use tiberius::error::{Error as TdsError, IoErrorKind};

use super::DEADLOCK_TRIES;
use crate::inventory::{SqlAuth, SsoDatabase};

/// What went wrong, by kind (the message says it in words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlErrorKind {
    /// The inventory's settings cannot be used (password file, CA file, authentication).
    Config,
    /// No TCP connection (refused, unreachable, name not found).
    Connect,
    Tls,
    Login,
    DatabaseMissing,
    PermissionDenied,
    /// The database is not an SSO database, or its SSO configuration is not as ESSO writes it.
    NotSsoDatabase,
    BackupDevice,
    VerifyFailed,
    Deadlock,
    Timeout,
    ConnectionDropped,
    /// SQL Server raised no error, but msdb does not show the backup as taken.
    NotRecorded,
    Server,
    Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    pub kind: SqlErrorKind,
    pub message: String,
}

impl SqlError {
    pub(super) fn new(kind: SqlErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SqlError {}

/// What was being done when something failed, for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    SecretServer,
    LastBackupId,
    Backup,
    Verify,
    History,
}

impl Stage {
    fn doing(self) -> &'static str {
        match self {
            Stage::Connect => "connecting and logging in",
            Stage::SecretServer => "reading the master secret server from dbo.SSOX_GlobalInfo",
            Stage::LastBackupId | Stage::History => "reading msdb.dbo.backupset",
            Stage::Backup => "BACKUP DATABASE",
            Stage::Verify => "RESTORE VERIFYONLY",
        }
    }
}

/// A failure as tiberius reported it, reduced to what the messages need (testable without a server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Server {
        code: u32,
        state: u8,
        class: u8,
        message: String,
    },
    Io {
        kind: IoErrorKind,
        message: String,
    },
    Tls(String),
    Other(String),
}

impl From<TdsError> for Failure {
    fn from(e: TdsError) -> Self {
        match e {
            TdsError::Server(t) => Failure::Server {
                code: t.code(),
                state: t.state(),
                class: t.class(),
                message: t.message().to_string(),
            },
            TdsError::Io { kind, message } => Failure::Io { kind, message },
            TdsError::Tls(message) => Failure::Tls(message),
            other => Failure::Other(other.to_string()),
        }
    }
}

/// Where the SSO database is, for messages: `SSODB on sqldev01:1433`.
pub(super) fn place(db: &SsoDatabase) -> String {
    format!("{} on {}:{}", db.database, db.server, db.port)
}

fn login_name(db: &SsoDatabase) -> String {
    match &db.auth {
        SqlAuth::Sql { user, .. } => format!("'{user}'"),
        SqlAuth::Integrated => "the coordinator's Windows account".into(),
    }
}

/// The message for a failure at `stage`; `path` is the backup file, where there is one.
pub fn describe(failure: Failure, stage: Stage, db: &SsoDatabase, path: Option<&str>) -> SqlError {
    use SqlErrorKind as K;
    let file = path.unwrap_or("the backup file");
    let unknown_backup = if matches!(stage, Stage::Backup | Stage::Verify) {
        "; the backup is not counted"
    } else {
        ""
    };
    match failure {
        Failure::Server {
            code,
            state,
            class,
            message,
        } => match code {
            18456 => {
                let check = match &db.auth {
                    SqlAuth::Sql { password_file, .. } => format!(
                        "check the user and the password in {}",
                        password_file.display()
                    ),
                    SqlAuth::Integrated => {
                        "check that the coordinator's account has a login".into()
                    }
                };
                SqlError::new(
                    K::Login,
                    format!(
                        "SQL Server {}:{} refused the login of {} (error 18456, state {state}): {check}; the SQL Server error log gives the reason for state {state}",
                        db.server,
                        db.port,
                        login_name(db)
                    ),
                )
            }
            4060 | 911 | 4064 => SqlError::new(
                K::DatabaseMissing,
                format!(
                    "database '{}' does not exist on {}:{} or the login {} cannot open it (error {code}: {message}): check sso_database.database{unknown_backup}",
                    db.database,
                    db.server,
                    db.port,
                    login_name(db)
                ),
            ),
            262 | 229 | 230 | 297 | 300 | 916 | 15247 => {
                let needs = match stage {
                    Stage::Backup => format!(
                        "it needs the db_backupoperator role in {} (or sysadmin)",
                        db.database
                    ),
                    Stage::Verify => "it needs the CREATE DATABASE permission, or sysadmin / dbcreator, to verify a backup".into(),
                    Stage::SecretServer => format!(
                        "it needs SELECT on dbo.SSOX_GlobalInfo (db_datareader in {})",
                        db.database
                    ),
                    Stage::LastBackupId | Stage::History => "it needs SELECT on msdb.dbo.backupset and msdb.dbo.backupmediafamily (db_datareader in msdb)".into(),
                    Stage::Connect => "it needs access to the database".into(),
                };
                SqlError::new(
                    K::PermissionDenied,
                    format!(
                        "permission denied to the login {} while {} in {} (error {code}: {message}): {needs}{unknown_backup}",
                        login_name(db),
                        stage.doing(),
                        place(db)
                    ),
                )
            }
            208 if stage == Stage::SecretServer => SqlError::new(
                K::NotSsoDatabase,
                format!(
                    "{} has no table dbo.SSOX_GlobalInfo (error 208): it is not an SSO database; check sso_database.database",
                    place(db)
                ),
            ),
            3201 => SqlError::new(
                K::BackupDevice,
                format!(
                    "SQL Server cannot open {file} (error 3201: {message}); the path is on the SQL Server's own disks, or a share its service account can write: check backup_dir{unknown_backup}"
                ),
            ),
            1205 => SqlError::new(
                K::Deadlock,
                format!(
                    "{} was chosen as a deadlock victim {DEADLOCK_TRIES} times in a row (error 1205) in {}: try again when the server is quieter{unknown_backup}",
                    stage.doing(),
                    place(db)
                ),
            ),
            _ if stage == Stage::Verify => SqlError::new(
                K::VerifyFailed,
                format!(
                    "RESTORE VERIFYONLY rejected {file} (error {code}: {message}){unknown_backup}"
                ),
            ),
            _ => SqlError::new(
                K::Server,
                format!(
                    "SQL Server error {code} (severity {class}) while {} in {}: {message}{unknown_backup}",
                    stage.doing(),
                    place(db)
                ),
            ),
        },
        Failure::Io { kind, message } => match kind {
            IoErrorKind::TimedOut if stage == Stage::Connect => SqlError::new(
                K::Timeout,
                format!(
                    "no answer from SQL Server {}:{} within connect_timeout ({})",
                    db.server,
                    db.port,
                    humantime::format_duration(db.connect_timeout)
                ),
            ),
            IoErrorKind::TimedOut => SqlError::new(
                K::Timeout,
                format!(
                    "{} did not finish within query_timeout ({}) in {}{}",
                    stage.doing(),
                    humantime::format_duration(db.query_timeout),
                    place(db),
                    if stage == Stage::Backup {
                        "; SQL Server may still be writing the file, but the backup is not counted"
                    } else {
                        unknown_backup
                    }
                ),
            ),
            IoErrorKind::ConnectionRefused
            | IoErrorKind::NotFound
            | IoErrorKind::HostUnreachable
            | IoErrorKind::NetworkUnreachable
            | IoErrorKind::AddrNotAvailable
                if stage == Stage::Connect =>
            {
                SqlError::new(
                    K::Connect,
                    format!(
                        "cannot connect to SQL Server {}:{}: {message}",
                        db.server, db.port
                    ),
                )
            }
            _ => SqlError::new(
                K::ConnectionDropped,
                format!(
                    "the connection to SQL Server {}:{} dropped while {}: {message}{}",
                    db.server,
                    db.port,
                    stage.doing(),
                    if stage == Stage::Backup {
                        "; whether the file was written is unknown, and the backup is not counted"
                    } else {
                        unknown_backup
                    }
                ),
            ),
        },
        Failure::Tls(message) => SqlError::new(
            K::Tls,
            format!(
                "TLS with SQL Server {}:{} failed: {message}; set sso_database.ca_file to the CA that issued the server's certificate (trust_server_certificate = true only on a network you trust)",
                db.server, db.port
            ),
        ),
        Failure::Other(message) => SqlError::new(
            K::Protocol,
            format!(
                "unexpected answer from SQL Server {}:{} while {}: {message}{unknown_backup}",
                db.server,
                db.port,
                stage.doing()
            ),
        ),
    }
}
