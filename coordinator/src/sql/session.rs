//! A session with SQL Server: the tiberius settings from the inventory (`config`: encryption, trust,
//! credentials), the connection and login ([`connect`]), and `run`, which runs one statement within
//! `query_timeout` and tries a deadlock victim again.

use std::time::Duration;

use tiberius::error::{Error as TdsError, IoErrorKind};
use tiberius::{AuthMethod, Client, Config, EncryptionLevel, Row, ToSql};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use super::{DEADLOCK_TRIES, Failure, SqlError, SqlErrorKind, Stage, describe};
use crate::inventory::{SqlAuth, SqlEncryption, SsoDatabase};

type SqlClient = Client<Compat<TcpStream>>;

/// The tiberius settings for `db`; the password is read from its file now, and never logged.
pub(super) fn config(db: &SsoDatabase) -> Result<Config, SqlError> {
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
pub(super) async fn run(
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
pub(super) enum Returns {
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

pub(super) fn column<'a, T: tiberius::FromSql<'a>>(
    row: &'a Row,
    index: usize,
    stage: Stage,
    db: &SsoDatabase,
) -> Result<Option<T>, SqlError> {
    row.try_get::<T, usize>(index)
        .map_err(|e| describe(Failure::Other(e.to_string()), stage, db, None))
}
