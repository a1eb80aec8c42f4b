//! The coordinator's SQL code against a real SQL Server, when `FLEET_TEST_MSSQL` names one (an ADO.NET
//! connection string of a login that may create databases, e.g.
//! `server=tcp:127.0.0.1,1433;user id=sa;password=…;TrustServerCertificate=true`). Without it the test
//! says it was skipped. It makes a scratch database with ESSO's `dbo.SSOX_GlobalInfo`, runs preflight's
//! read and a full backup-database against it, checks the error mapping of a wrong password, a missing
//! database and an unwritable backup path, then drops the database and its msdb history.
//!
//! `FLEET_TEST_MSSQL_BACKUP_DIR` sets the directory on the SQL Server's disks that backups go to;
//! by default the instance's own backup directory (`SERVERPROPERTY('InstanceDefaultBackupPath')`).
//! The backup files stay there (SQL Server offers no way to delete a file without xp_cmdshell).

use std::time::Duration;

use fleet_coordinator::inventory::{SqlAuth, SqlEncryption, SsoDatabase};
use fleet_coordinator::sql::{self, SqlErrorKind};
use tiberius::{Client, Config};
use tokio::net::TcpStream;
use tokio_util::compat::TokioAsyncWriteCompatExt;

/// The pieces of an ADO.NET connection string that `[environment.sso_database]` has.
struct Target {
    host: String,
    port: u16,
    user: String,
    password: String,
    encryption: SqlEncryption,
    trust: bool,
}

fn parse(connection: &str) -> Target {
    let mut t = Target {
        host: "localhost".into(),
        port: 1433,
        user: String::new(),
        password: String::new(),
        encryption: SqlEncryption::Mandatory,
        trust: false,
    };
    for part in connection.split(';').filter(|p| !p.trim().is_empty()) {
        let (key, value) = part.split_once('=').expect("key=value in FLEET_TEST_MSSQL");
        let value = value.trim().trim_matches(['\'', '"']);
        match key.trim().to_ascii_lowercase().replace(' ', "").as_str() {
            "server" | "datasource" | "address" | "addr" => {
                let v = value.trim_start_matches("tcp:");
                match v.split_once(',') {
                    Some((h, p)) => {
                        t.host = h.into();
                        t.port = p.trim().parse().expect("a port number after the comma");
                    }
                    None => t.host = v.into(),
                }
            }
            "userid" | "uid" | "user" => t.user = value.into(),
            "password" | "pwd" => t.password = value.into(),
            "encrypt" => {
                t.encryption = match value.to_ascii_lowercase().as_str() {
                    "strict" => SqlEncryption::Strict,
                    "false" | "no" | "optional" => SqlEncryption::LoginOnly,
                    _ => SqlEncryption::Mandatory,
                }
            }
            "trustservercertificate" => {
                t.trust = matches!(value.to_ascii_lowercase().as_str(), "true" | "yes")
            }
            _ => {}
        }
    }
    t
}

async fn admin(connection: &str) -> Client<tokio_util::compat::Compat<TcpStream>> {
    let config = Config::from_ado_string(connection).expect("FLEET_TEST_MSSQL parses");
    let tcp = TcpStream::connect(config.get_addr()).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    Client::connect(config, tcp.compat_write()).await.unwrap()
}

#[tokio::test]
async fn the_sql_code_against_a_real_sql_server() {
    let Ok(connection) = std::env::var("FLEET_TEST_MSSQL") else {
        println!(
            "skipped: FLEET_TEST_MSSQL is not set (an ADO.NET connection string of a SQL Server login that may create databases)"
        );
        return;
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let target = parse(&connection);
    let name = format!("ssofleet_contract_{:08x}", fastrand::u32(..));
    let mut admin = admin(&connection).await;
    admin
        .simple_query(format!("CREATE DATABASE [{name}]"))
        .await
        .unwrap()
        .into_results()
        .await
        .unwrap();
    admin
        .simple_query(format!(
            "USE [{name}]; CREATE TABLE dbo.SSOX_GlobalInfo (gi_SecretServer nvarchar(256) NOT NULL); \
             INSERT dbo.SSOX_GlobalInfo VALUES (N'SSO-CONTRACT-01.corp.example'); USE master;"
        ))
        .await
        .unwrap()
        .into_results()
        .await
        .unwrap();
    let backup_dir = match std::env::var("FLEET_TEST_MSSQL_BACKUP_DIR") {
        Ok(dir) => dir,
        Err(_) => admin
            .simple_query(
                "SELECT CAST(SERVERPROPERTY('InstanceDefaultBackupPath') AS nvarchar(400))",
            )
            .await
            .unwrap()
            .into_row()
            .await
            .unwrap()
            .and_then(|r| r.get::<&str, _>(0).map(str::to_string))
            .expect("the instance's default backup directory (or set FLEET_TEST_MSSQL_BACKUP_DIR)"),
    };

    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("sql-password");
    std::fs::write(&password_file, format!("{}\n", target.password)).unwrap();
    let db = SsoDatabase {
        server: target.host.clone(),
        port: target.port,
        database: name.clone(),
        auth: SqlAuth::Sql {
            user: target.user.clone(),
            password_file: password_file.clone(),
        },
        encryption: target.encryption,
        trust_server_certificate: target.trust,
        ca_file: None,
        connect_timeout: Duration::from_secs(15),
        query_timeout: Duration::from_secs(300),
    };

    let outcome = {
        let name = name.clone();
        async move {
            // Preflight's read.
            let recorded = sql::secret_server(&db).await.unwrap();
            assert_eq!(recorded, "SSO-CONTRACT-01.corp.example");
            assert!(sql::same_server(&recorded, "sso-contract-01"));

            // backup-database: backup, verify, msdb.
            let path = sql::backup_path(&backup_dir, &name, "contract", "0123456789", 1);
            let mut lines = Vec::new();
            let done = sql::backup(&db, &path, &mut |l| lines.push(l))
                .await
                .unwrap();
            assert_eq!(done.path, path);
            assert!(done.backup_set_id > 0 && done.size_bytes > 0, "{done:?}");
            assert_eq!(lines.len(), 3, "{lines:?}");
            // A second backup to the same file (INIT) is found as a new row, not the old one.
            let again = sql::backup(&db, &path, &mut |_| {}).await.unwrap();
            assert!(again.backup_set_id > done.backup_set_id);

            // Error mapping against the real server's errors.
            let bad = sql::backup(
                &db,
                &sql::backup_path(
                    &format!("{backup_dir}/no-such-dir-{name}"),
                    &name,
                    "c",
                    "r",
                    1,
                ),
                &mut |_| {},
            )
            .await
            .unwrap_err();
            assert_eq!(bad.kind, SqlErrorKind::BackupDevice, "{bad}");

            let missing = SsoDatabase {
                database: format!("{name}_missing"),
                ..db.clone()
            };
            let e = sql::secret_server(&missing).await.unwrap_err();
            assert_eq!(e.kind, SqlErrorKind::DatabaseMissing, "{e}");

            let wrong = dir.path().join("wrong-password");
            std::fs::write(&wrong, "not-the-password").unwrap();
            let wrong = SsoDatabase {
                auth: SqlAuth::Sql {
                    user: target.user.clone(),
                    password_file: wrong,
                },
                ..db.clone()
            };
            let e = sql::secret_server(&wrong).await.unwrap_err();
            assert_eq!(e.kind, SqlErrorKind::Login, "{e}");
        }
    };
    // Clean up whatever happened above, then report it.
    let result = tokio::spawn(outcome).await;
    let _ = admin
        .simple_query(format!(
            "EXEC msdb.dbo.sp_delete_database_backuphistory @database_name = N'{name}'; \
             ALTER DATABASE [{name}] SET SINGLE_USER WITH ROLLBACK IMMEDIATE; DROP DATABASE [{name}];"
        ))
        .await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}
