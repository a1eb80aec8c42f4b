//! The SSO database on SQL Server, over tiberius: which server the SSO system records as its master
//! secret server (preflight), and a verified copy-only backup of the database (`backup-database`).
//!
//! Every statement takes its identifiers and paths as parameters (`sp_executesql`), never spliced into
//! the text. tiberius does not surface informational messages (such as 3014, "BACKUP DATABASE
//! successfully processed"), so a backup counts only when the statements raised no error *and*
//! `msdb.dbo.backupset` holds the row of this very backup: copy-only, with checksums, to this file.

use std::fmt;
use std::time::Duration;

use tiberius::error::{Error as TdsError, IoErrorKind};
use tiberius::{AuthMethod, Client, Config, EncryptionLevel, Row, ToSql};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use crate::inventory::{SqlAuth, SqlEncryption, SsoDatabase};

/// The master secret server, as the SSO system records it (one row; ESSO's own schema).
pub const SECRET_SERVER_SQL: &str = "SELECT gi_SecretServer FROM dbo.SSOX_GlobalInfo";
/// The newest backup set of the database before ours: ours must come after it.
pub const LAST_BACKUP_ID_SQL: &str = "SELECT ISNULL(MAX(backup_set_id), 0) AS last_id FROM msdb.dbo.backupset WHERE database_name = @P1";
/// COPY_ONLY leaves the customer's own backup chain (the BizTalk backup job) as it is.
pub const BACKUP_SQL: &str = "BACKUP DATABASE @P1 TO DISK = @P2 WITH COPY_ONLY, CHECKSUM, INIT";
pub const VERIFY_SQL: &str = "RESTORE VERIFYONLY FROM DISK = @P1 WITH CHECKSUM";
/// The row of the backup just taken: after `@P2`, of this database, to this file.
pub const HISTORY_SQL: &str = "SELECT TOP (1) s.backup_set_id, CAST(s.backup_size AS bigint) AS backup_size, \
CONVERT(nvarchar(33), s.backup_finish_date, 126) AS finished, s.is_copy_only, s.has_backup_checksums, \
f.physical_device_name FROM msdb.dbo.backupset AS s JOIN msdb.dbo.backupmediafamily AS f ON f.media_set_id = s.media_set_id \
WHERE s.database_name = @P1 AND s.backup_set_id > @P2 AND s.type = 'D' AND f.physical_device_name = @P3 \
ORDER BY s.backup_set_id DESC";

/// How often a statement chosen as a deadlock victim (1205) is tried in all.
const DEADLOCK_TRIES: u32 = 3;

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
    fn new(kind: SqlErrorKind, message: impl Into<String>) -> Self {
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
fn place(db: &SsoDatabase) -> String {
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

type SqlClient = Client<Compat<TcpStream>>;

/// The tiberius settings for `db`; the password is read from its file now, and never logged.
fn config(db: &SsoDatabase) -> Result<Config, SqlError> {
    let mut config = Config::new();
    config.host(&db.server);
    config.port(db.port);
    config.database(&db.database);
    config.application_name("ssofleet");
    config.encryption(match db.encryption {
        SqlEncryption::Strict => EncryptionLevel::Strict,
        SqlEncryption::Mandatory => EncryptionLevel::Required,
        SqlEncryption::LoginOnly => EncryptionLevel::Off,
    });
    if db.trust_server_certificate {
        config.trust_cert();
    } else if let Some(ca) = &db.ca_file {
        let pem = std::fs::read(ca).map_err(|e| {
            SqlError::new(
                SqlErrorKind::Config,
                format!("cannot read sso_database.ca_file {}: {e}", ca.display()),
            )
        })?;
        config.trust_cert_ca_bundle(pem);
    }
    config.handshake_timeout(Some(db.connect_timeout));
    config.command_timeout(Some(db.query_timeout));
    match &db.auth {
        SqlAuth::Sql {
            user,
            password_file,
        } => {
            let text = std::fs::read_to_string(password_file).map_err(|e| {
                SqlError::new(
                    SqlErrorKind::Config,
                    format!(
                        "cannot read the SQL password file {}: {e}",
                        password_file.display()
                    ),
                )
            })?;
            let password = fleet_proto::names::secret_text(&text);
            if password.is_empty() {
                return Err(SqlError::new(
                    SqlErrorKind::Config,
                    format!("the SQL password file {} is empty", password_file.display()),
                ));
            }
            config.authentication(AuthMethod::sql_server(user, password));
        }
        SqlAuth::Integrated => integrated(&mut config)?,
    }
    Ok(config)
}

#[cfg(windows)]
fn integrated(config: &mut Config) -> Result<(), SqlError> {
    config.authentication(AuthMethod::Integrated);
    Ok(())
}

#[cfg(not(windows))]
fn integrated(_config: &mut Config) -> Result<(), SqlError> {
    Err(SqlError::new(
        SqlErrorKind::Config,
        "integrated authentication to SQL Server needs a coordinator running on Windows: set sso_database.user and password_file instead",
    ))
}

/// Connects and logs in, within `connect_timeout` (TCP, TLS and login each).
pub async fn connect(db: &SsoDatabase) -> Result<SqlClient, SqlError> {
    let config = config(db)?;
    let fail = |f: Failure| describe(f, Stage::Connect, db, None);
    let tcp = match tokio::time::timeout(
        db.connect_timeout,
        TcpStream::connect((db.server.as_str(), db.port)),
    )
    .await
    {
        Err(_) => {
            return Err(fail(Failure::Io {
                kind: IoErrorKind::TimedOut,
                message: String::new(),
            }));
        }
        Ok(Err(e)) => {
            return Err(fail(Failure::Io {
                kind: e.kind(),
                message: e.to_string(),
            }));
        }
        Ok(Ok(tcp)) => tcp,
    };
    let _ = tcp.set_nodelay(true);
    Client::connect(config, tcp.compat_write())
        .await
        .map_err(|e| fail(e.into()))
}

/// Runs a statement within `query_timeout`, with its rows (none for `Returns::Nothing`); a deadlock
/// victim is tried again, up to `DEADLOCK_TRIES` in all.
async fn run(
    client: &mut SqlClient,
    db: &SsoDatabase,
    stage: Stage,
    sql: &str,
    params: &[&dyn ToSql],
    path: Option<&str>,
    returns: Returns,
) -> Result<Vec<Row>, SqlError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let result = tokio::time::timeout(db.query_timeout, async {
            match returns {
                Returns::Rows => client.query(sql, params).await?.into_first_result().await,
                Returns::Nothing => client.execute(sql, params).await.map(|_| Vec::new()),
            }
        })
        .await;
        match result {
            Ok(Ok(rows)) => return Ok(rows),
            Ok(Err(TdsError::Server(e))) if e.code() == 1205 && tries < DEADLOCK_TRIES => {
                tracing::warn!(stage = ?stage, "chosen as a deadlock victim (1205); trying again");
                tokio::time::sleep(Duration::from_millis(500 * u64::from(tries))).await;
            }
            Ok(Err(e)) => return Err(describe(e.into(), stage, db, path)),
            Err(_) => return Err(timed_out(stage, db, path)),
        }
    }
}

#[derive(Clone, Copy)]
enum Returns {
    Rows,
    Nothing,
}

fn timed_out(stage: Stage, db: &SsoDatabase, path: Option<&str>) -> SqlError {
    describe(
        Failure::Io {
            kind: IoErrorKind::TimedOut,
            message: String::new(),
        },
        stage,
        db,
        path,
    )
}

fn column<'a, T: tiberius::FromSql<'a>>(
    row: &'a Row,
    index: usize,
    stage: Stage,
    db: &SsoDatabase,
) -> Result<Option<T>, SqlError> {
    row.try_get::<T, usize>(index)
        .map_err(|e| describe(Failure::Other(e.to_string()), stage, db, None))
}

/// The master secret server recorded in the SSO database (`gi_SecretServer`).
pub async fn secret_server(db: &SsoDatabase) -> Result<String, SqlError> {
    let mut client = connect(db).await?;
    let rows = run(
        &mut client,
        db,
        Stage::SecretServer,
        SECRET_SERVER_SQL,
        &[],
        None,
        Returns::Rows,
    )
    .await?;
    match rows.as_slice() {
        [row] => match column::<&str>(row, 0, Stage::SecretServer, db)? {
            Some(name) if !name.trim().is_empty() => Ok(name.trim().to_string()),
            _ => Err(SqlError::new(
                SqlErrorKind::NotSsoDatabase,
                format!(
                    "dbo.SSOX_GlobalInfo in {} names no master secret server: the SSO system is not configured",
                    place(db)
                ),
            )),
        },
        [] => Err(SqlError::new(
            SqlErrorKind::NotSsoDatabase,
            format!(
                "dbo.SSOX_GlobalInfo in {} is empty: the SSO system was never configured",
                place(db)
            ),
        )),
        more => Err(SqlError::new(
            SqlErrorKind::NotSsoDatabase,
            format!(
                "dbo.SSOX_GlobalInfo in {} has {} rows, but ESSO keeps exactly one: inspect the database before upgrading",
                place(db),
                more.len()
            ),
        )),
    }
}

/// Whether the name recorded in the SSO database and the inventory's name are the same server.
pub use fleet_proto::names::same_server;

/// A backup that SQL Server took, verified, and recorded in msdb.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupDone {
    pub path: String,
    pub backup_set_id: i32,
    pub size_bytes: u64,
    /// `backup_finish_date`, ISO 8601 in the SQL Server's local time.
    pub finished: String,
}

/// `[name]` as T-SQL quotes an identifier (for messages; statements take parameters).
pub fn quote_ident(name: &str) -> String {
    format!("[{}]", name.replace(']', "]]"))
}

/// `N'text'` as T-SQL quotes a Unicode literal (for messages; statements take parameters).
pub fn quote_literal(text: &str) -> String {
    format!("N'{}'", text.replace('\'', "''"))
}

/// The backup file of one attempt, in `backup_dir` as the SQL Server sees it: a Windows path or UNC
/// share takes `\`, anything else `/`. The same attempt always gets the same name, so a coordinator
/// restart that runs it again overwrites (INIT) instead of leaving a second file.
pub fn backup_path(
    backup_dir: &str,
    database: &str,
    env: &str,
    run_id: &str,
    attempt: u32,
) -> String {
    let safe = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let windows = backup_dir.contains('\\')
        || backup_dir.as_bytes().get(1) == Some(&b':')
            && backup_dir.as_bytes()[0].is_ascii_alphabetic();
    let sep = if windows { '\\' } else { '/' };
    let dir = backup_dir.trim_end_matches(['\\', '/']);
    let run: String = run_id.chars().take(8).collect();
    format!(
        "{dir}{sep}{}_{}_{}_{attempt}.bak",
        safe(database),
        safe(env),
        safe(&run)
    )
}

/// `BACKUP DATABASE … WITH COPY_ONLY, CHECKSUM, INIT` to `path`, `RESTORE VERIFYONLY … WITH CHECKSUM`,
/// then the msdb row that proves it. `progress` hears each stage as it starts and ends.
pub async fn backup(
    db: &SsoDatabase,
    path: &str,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<BackupDone, SqlError> {
    let mut client = connect(db).await?;
    let database = db.database.as_str();
    let last = run(
        &mut client,
        db,
        Stage::LastBackupId,
        LAST_BACKUP_ID_SQL,
        &[&database],
        Some(path),
        Returns::Rows,
    )
    .await?;
    let last_id: i32 = match last.first() {
        Some(row) => column::<i32>(row, 0, Stage::LastBackupId, db)?.unwrap_or(0),
        None => 0,
    };
    progress(format!(
        "BACKUP DATABASE {} TO DISK = {} WITH COPY_ONLY, CHECKSUM, INIT",
        quote_ident(database),
        quote_literal(path)
    ));
    run(
        &mut client,
        db,
        Stage::Backup,
        BACKUP_SQL,
        &[&database, &path],
        Some(path),
        Returns::Nothing,
    )
    .await?;
    progress(format!(
        "RESTORE VERIFYONLY FROM DISK = {} WITH CHECKSUM",
        quote_literal(path)
    ));
    run(
        &mut client,
        db,
        Stage::Verify,
        VERIFY_SQL,
        &[&path],
        Some(path),
        Returns::Nothing,
    )
    .await?;
    let history = run(
        &mut client,
        db,
        Stage::History,
        HISTORY_SQL,
        &[&database, &last_id, &path],
        Some(path),
        Returns::Rows,
    )
    .await?;
    let Some(row) = history.first() else {
        return Err(SqlError::new(
            SqlErrorKind::NotRecorded,
            format!(
                "SQL Server raised no error, but msdb.dbo.backupset has no backup of {} to {path} after backup_set_id {last_id}: the backup is not counted",
                quote_ident(database)
            ),
        ));
    };
    let id = column::<i32>(row, 0, Stage::History, db)?.unwrap_or(0);
    let size = column::<i64>(row, 1, Stage::History, db)?.unwrap_or(0);
    let finished = column::<&str>(row, 2, Stage::History, db)?
        .unwrap_or_default()
        .to_string();
    let copy_only = column::<bool>(row, 3, Stage::History, db)?.unwrap_or(false);
    let checksums = column::<bool>(row, 4, Stage::History, db)?.unwrap_or(false);
    if !copy_only || !checksums {
        return Err(SqlError::new(
            SqlErrorKind::NotRecorded,
            format!(
                "msdb records backup_set_id {id} of {} to {path}{}{}: not the backup this step takes, so it is not counted",
                quote_ident(database),
                if copy_only { "" } else { " as not copy-only" },
                if checksums { "" } else { " without checksums" }
            ),
        ));
    }
    let _ = client.close().await;
    let done = BackupDone {
        path: path.to_string(),
        backup_set_id: id,
        size_bytes: u64::try_from(size).unwrap_or(0),
        finished,
    };
    progress(format!(
        "verified, and recorded in msdb: backup_set_id {}, {} bytes, finished {}",
        done.backup_set_id, done.size_bytes, done.finished
    ));
    Ok(done)
}

#[cfg(test)]
mod tests;
