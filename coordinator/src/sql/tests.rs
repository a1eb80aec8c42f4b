use std::path::PathBuf;
use std::time::Duration;

use tiberius::error::IoErrorKind;

use super::session::config;
use super::*;
use crate::inventory::{SqlAuth, SqlEncryption};

fn db() -> SsoDatabase {
    SsoDatabase {
        server: "sqldev01.corp.example".into(),
        port: 1433,
        database: "SSODB".into(),
        auth: SqlAuth::Sql {
            user: "ssofleet".into(),
            password_file: PathBuf::from("/etc/ssofleet/sql-dev"),
        },
        encryption: SqlEncryption::Mandatory,
        trust_server_certificate: false,
        ca_file: None,
        connect_timeout: Duration::from_secs(15),
        query_timeout: Duration::from_secs(1800),
    }
}

fn server(code: u32) -> Failure {
    Failure::Server {
        code,
        state: 8,
        class: 16,
        message: format!("message of {code}"),
    }
}

#[test]
fn short_names_match_fqdns_case_insensitively() {
    for (a, b) in [
        ("SSO-DEV-01", "sso-dev-01"),
        ("sso-dev-01.corp.example", "SSO-DEV-01"),
        ("SSO-DEV-01", "sso-dev-01.corp.example"),
        ("sso-dev-01.corp.example.", "SSO-DEV-01.CORP.EXAMPLE"),
        (" sso-dev-01 ", "sso-dev-01"),
    ] {
        assert!(same_server(a, b), "{a} = {b}");
    }
    for (a, b) in [
        ("sso-dev-09", "sso-dev-01"),
        ("sso-dev-01.corp.example", "sso-dev-01.lab.example"),
        ("sso-dev-010", "sso-dev-01"),
        ("10.0.0.1", "10"),
        ("", "sso-dev-01"),
    ] {
        assert!(!same_server(a, b), "{a} ≠ {b}");
    }
}

#[test]
fn backup_paths_follow_the_directory_style_and_are_safe() {
    assert_eq!(
        backup_path(
            "\\\\backup01\\sso\\dev\\",
            "SSODB",
            "dev",
            "0123456789abcdef",
            2
        ),
        "\\\\backup01\\sso\\dev\\SSODB_dev_01234567_2.bak"
    );
    assert_eq!(
        backup_path("D:\\Backups", "SSO DB", "prod", "abcdef12-3456", 1),
        "D:\\Backups\\SSO_DB_prod_abcdef12_1.bak"
    );
    assert_eq!(
        backup_path("/var/opt/mssql/backup/", "x';DROP/..\\", "dev", "r", 1),
        "/var/opt/mssql/backup/x__DROP_..__dev_r_1.bak"
    );
}

#[test]
fn quoting_doubles_the_closing_character() {
    assert_eq!(quote_ident("SSO]DB"), "[SSO]]DB]");
    assert_eq!(quote_literal("C:\\it's.bak"), "N'C:\\it''s.bak'");
}

#[test]
fn server_errors_become_clear_messages() {
    let db = db();
    let path = Some("\\\\backup01\\sso\\dev\\SSODB_dev_1_1.bak");
    let cases: &[(Failure, Stage, SqlErrorKind, &[&str])] = &[
        (
            server(18456),
            Stage::Connect,
            SqlErrorKind::Login,
            &[
                "refused the login of 'ssofleet'",
                "/etc/ssofleet/sql-dev",
                "state 8",
            ],
        ),
        (
            server(4060),
            Stage::Connect,
            SqlErrorKind::DatabaseMissing,
            &[
                "database 'SSODB' does not exist",
                "sqldev01.corp.example:1433",
            ],
        ),
        (
            server(262),
            Stage::Backup,
            SqlErrorKind::PermissionDenied,
            &["db_backupoperator", "'ssofleet'"],
        ),
        (
            server(229),
            Stage::SecretServer,
            SqlErrorKind::PermissionDenied,
            &["SELECT on dbo.SSOX_GlobalInfo"],
        ),
        (
            server(208),
            Stage::SecretServer,
            SqlErrorKind::NotSsoDatabase,
            &["not an SSO database"],
        ),
        (
            server(3201),
            Stage::Backup,
            SqlErrorKind::BackupDevice,
            &[
                "cannot open \\\\backup01",
                "error 3201",
                "check backup_dir",
                "not counted",
            ],
        ),
        (
            server(3189),
            Stage::Verify,
            SqlErrorKind::VerifyFailed,
            &["RESTORE VERIFYONLY rejected", "error 3189", "not counted"],
        ),
        (
            server(3013),
            Stage::Backup,
            SqlErrorKind::Server,
            &["error 3013", "BACKUP DATABASE", "not counted"],
        ),
        (
            server(1205),
            Stage::History,
            SqlErrorKind::Deadlock,
            &["deadlock victim 3 times", "msdb.dbo.backupset"],
        ),
        (
            Failure::Io {
                kind: IoErrorKind::TimedOut,
                message: String::new(),
            },
            Stage::Backup,
            SqlErrorKind::Timeout,
            &["query_timeout (30m)", "may still be writing", "not counted"],
        ),
        (
            Failure::Io {
                kind: IoErrorKind::TimedOut,
                message: String::new(),
            },
            Stage::Connect,
            SqlErrorKind::Timeout,
            &["connect_timeout (15s)"],
        ),
        (
            Failure::Io {
                kind: IoErrorKind::UnexpectedEof,
                message: "eof".into(),
            },
            Stage::Backup,
            SqlErrorKind::ConnectionDropped,
            &["dropped while BACKUP DATABASE", "unknown", "not counted"],
        ),
        (
            Failure::Io {
                kind: IoErrorKind::ConnectionRefused,
                message: "refused".into(),
            },
            Stage::Connect,
            SqlErrorKind::Connect,
            &["cannot connect to SQL Server sqldev01.corp.example:1433"],
        ),
        (
            Failure::Tls("invalid peer certificate: UnknownIssuer".into()),
            Stage::Connect,
            SqlErrorKind::Tls,
            &["UnknownIssuer", "ca_file"],
        ),
    ];
    for (failure, stage, kind, needles) in cases {
        let e = describe(failure.clone(), *stage, &db, path);
        assert_eq!(e.kind, *kind, "{failure:?}: {}", e.message);
        for needle in *needles {
            assert!(
                e.message.contains(needle),
                "{needle:?} not in {:?}",
                e.message
            );
        }
    }
}

#[test]
fn settings_problems_are_named_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = db();
    db.auth = SqlAuth::Sql {
        user: "ssofleet".into(),
        password_file: dir.path().join("missing"),
    };
    let e = config(&db).unwrap_err();
    assert_eq!(e.kind, SqlErrorKind::Config);
    assert!(
        e.message.contains("cannot read the SQL password file"),
        "{e}"
    );

    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    db.auth = SqlAuth::Sql {
        user: "ssofleet".into(),
        password_file: empty,
    };
    assert!(config(&db).unwrap_err().message.contains("is empty"));
    // A byte order mark alone is no password either (it is stripped, not sent).
    let bom = dir.path().join("bom");
    std::fs::write(&bom, "\u{feff}\r\n").unwrap();
    db.auth = SqlAuth::Sql {
        user: "ssofleet".into(),
        password_file: bom,
    };
    assert!(config(&db).unwrap_err().message.contains("is empty"));

    let good = dir.path().join("pw");
    std::fs::write(&good, "s3cret\r\n").unwrap();
    db.auth = SqlAuth::Sql {
        user: "ssofleet".into(),
        password_file: good,
    };
    db.ca_file = Some(dir.path().join("no-ca.pem"));
    let e = config(&db).unwrap_err();
    assert!(e.message.contains("sso_database.ca_file"), "{e}");
    db.ca_file = None;
    assert!(config(&db).is_ok());
}
