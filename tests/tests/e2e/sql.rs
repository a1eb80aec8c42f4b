//! The coordinator's SQL Server code (preflight's master secret server check, backup-database) against
//! the scripted TDS server of `fleet_tests::tds`, over real TLS on 127.0.0.1: directly, with every
//! fault the server can play, and end to end in upgrade runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use fleet_coordinator::inventory::{SqlAuth, SqlEncryption, SsoDatabase};
use fleet_coordinator::sql::{self, SqlErrorKind};
use fleet_tests::tds::{
    ConnMode, FakeDatabase, FakeSqlConfig, FakeSqlServer, Fault, Op, ServerEncryption, TlsIdentity,
};
use fleet_tests::{PATIENCE, eventually, path_str, tool_log};

use crate::durability::{restart_coordinator, start_detached, wait_final};
use crate::upgrade::{FLEET, setup};

const USER: &str = "ssofleet";
const PASSWORD: &str = "Corr3ct-h0rse!";

/// A CA and a server certificate for localhost / 127.0.0.1 signed by it.
pub(crate) struct Pki {
    pub(crate) ca_pem: String,
    pub(crate) identity: TlsIdentity,
}

pub(crate) fn pki() -> Pki {
    pki_for(&["localhost", "127.0.0.1"])
}

/// As [`pki`], the server certificate naming `names`.
fn pki_for(names: &[&str]) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "ssofleet test SQL CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, names[0]);
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        identity: TlsIdentity {
            cert_chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        },
    }
}

async fn server(pki: &Pki, secret_server: &str) -> FakeSqlServer {
    server_with(pki, secret_server, ServerEncryption::Required).await
}

async fn server_with(
    pki: &Pki,
    secret_server: &str,
    encryption: ServerEncryption,
) -> FakeSqlServer {
    FakeSqlServer::start(FakeSqlConfig {
        tls: Some(TlsIdentity {
            cert_chain_pem: pki.identity.cert_chain_pem.clone(),
            key_pem: pki.identity.key_pem.clone(),
        }),
        encryption,
        logins: vec![(USER.into(), PASSWORD.into())],
        databases: vec![FakeDatabase {
            name: "SSODB".into(),
            global_info: Some(vec![secret_server.into()]),
        }],
    })
    .await
    .unwrap()
}

/// `[environment.sso_database]` for the fake server, its files in `dir`.
fn database(dir: &Path, pki: &Pki, port: u16, encryption: SqlEncryption) -> SsoDatabase {
    let password_file = dir.join("sql-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let ca_file = dir.join("sql-ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    SsoDatabase {
        server: "localhost".into(),
        port,
        database: "SSODB".into(),
        auth: SqlAuth::Sql {
            user: USER.into(),
            password_file,
        },
        encryption,
        trust_server_certificate: false,
        ca_file: Some(ca_file),
        connect_timeout: Duration::from_secs(5),
        query_timeout: Duration::from_secs(10),
    }
}

fn ops(server: &FakeSqlServer) -> Vec<Op> {
    server.log().into_iter().map(|l| l.op).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_the_master_and_takes_a_verified_backup_in_every_encryption_mode() {
    let pki = pki();
    let fake = server(&pki, "SSO-DEV-01.corp.example").await;
    let optional = server_with(&pki, "SSO-DEV-01.corp.example", ServerEncryption::Optional).await;
    let dir = tempfile::tempdir().unwrap();
    for (mode, fake, expected) in [
        (SqlEncryption::Strict, &fake, ConnMode::Strict),
        (SqlEncryption::Mandatory, &fake, ConnMode::Tls),
        // A server that forces encryption encrypts the whole session anyway.
        (SqlEncryption::LoginOnly, &fake, ConnMode::Tls),
        (SqlEncryption::LoginOnly, &optional, ConnMode::LoginOnly),
        (SqlEncryption::Mandatory, &optional, ConnMode::Tls),
    ] {
        let db = database(dir.path(), &pki, fake.port(), mode);
        let recorded = sql::secret_server(&db).await.unwrap();
        assert_eq!(recorded, "SSO-DEV-01.corp.example");
        assert!(sql::same_server(&recorded, "sso-dev-01"));
        let conn = fake.connections().pop().unwrap();
        assert_eq!(conn.mode, expected, "{mode:?}");
        assert_eq!(
            (conn.user.as_str(), conn.database.as_str()),
            (USER, "SSODB")
        );
    }

    // Identifiers and paths travel as parameters: a quote and a bracket reach the server intact.
    let backups = dir.path().join("it's [odd]");
    std::fs::create_dir_all(&backups).unwrap();
    let db = database(dir.path(), &pki, fake.port(), SqlEncryption::Strict);
    let path = sql::backup_path(path_str(&backups).unwrap(), "SSODB", "dev", "0123456789", 1);
    let before = fake.log().len();
    let mut lines = Vec::new();
    let done = sql::backup(&db, &path, &mut |l| lines.push(l))
        .await
        .unwrap();
    assert_eq!(done.path, path);
    assert!(done.size_bytes > 0 && done.backup_set_id > 0, "{done:?}");
    assert!(Path::new(&path).exists(), "the backup file is written");
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines[0].starts_with("BACKUP DATABASE [SSODB] TO DISK = N'"),
        "{lines:?}"
    );
    assert!(
        lines[0].contains("it''s [odd]"),
        "quoted for display: {lines:?}"
    );
    assert!(lines[2].contains(&format!("backup_set_id {}", done.backup_set_id)));
    let log = fake.log().split_off(before);
    assert_eq!(
        log.iter().map(|l| l.op).collect::<Vec<_>>(),
        [Op::LastBackupId, Op::Backup, Op::Verify, Op::History],
        "backup, verify, then the msdb row"
    );
    assert_eq!(log[1].text, sql::BACKUP_SQL);
    assert_eq!(log[1].params, ["SSODB", path.as_str()]);
    assert_eq!(log[2].text, sql::VERIFY_SQL);
    assert_eq!(log[2].params, [path.as_str()]);
    let rows = fake.backups();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].physical_device_name, path);
    assert!(rows[0].is_copy_only && rows[0].has_backup_checksums);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_is_named_and_none_counts_as_a_backup() {
    let pki = pki();
    let fake = server(&pki, "SSO-DEV-01").await;
    let dir = tempfile::tempdir().unwrap();
    let mut db = database(dir.path(), &pki, fake.port(), SqlEncryption::Mandatory);
    db.query_timeout = Duration::from_secs(2);
    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    let path = sql::backup_path(path_str(&backups).unwrap(), "SSODB", "dev", "run", 1);

    let cases: Vec<(Op, Fault, SqlErrorKind, &str)> = vec![
        (
            Op::Login,
            Fault::Error(18456),
            SqlErrorKind::Login,
            "error 18456",
        ),
        (
            Op::Backup,
            Fault::Error(3201),
            SqlErrorKind::BackupDevice,
            "error 3201",
        ),
        (
            Op::Backup,
            Fault::Error(262),
            SqlErrorKind::PermissionDenied,
            "db_backupoperator",
        ),
        (
            Op::Backup,
            Fault::Hang,
            SqlErrorKind::Timeout,
            "query_timeout (2s)",
        ),
        (
            Op::Backup,
            Fault::Drop,
            SqlErrorKind::ConnectionDropped,
            "dropped while BACKUP DATABASE",
        ),
        (
            Op::Backup,
            Fault::Corrupt,
            SqlErrorKind::VerifyFailed,
            "error 3189",
        ),
        (
            Op::Backup,
            Fault::NoHistory,
            SqlErrorKind::NotRecorded,
            "no backup of [SSODB]",
        ),
        (
            Op::Verify,
            Fault::Drop,
            SqlErrorKind::ConnectionDropped,
            "RESTORE VERIFYONLY",
        ),
        (
            Op::History,
            Fault::Error(229),
            SqlErrorKind::PermissionDenied,
            "msdb",
        ),
    ];
    for (op, fault, kind, needle) in cases {
        let label = format!("{op:?} {fault:?}");
        fake.inject(op, fault.clone());
        let rows_before = fake.backups().len();
        let e = sql::backup(&db, &path, &mut |_| {}).await.unwrap_err();
        assert_eq!(e.kind, kind, "{label}: {e}");
        assert!(e.message.contains(needle), "{label}: {needle:?} not in {e}");
        if matches!(op, Op::Backup | Op::Verify) {
            assert!(e.message.contains("not counted"), "{label}: {e}");
        }
        // Whatever the server did, the caller was told there is no backup; the next one works.
        if matches!(fault, Fault::NoHistory) {
            assert_eq!(fake.backups().len(), rows_before, "{label}: no msdb row");
        }
        sql::backup(&db, &path, &mut |_| {})
            .await
            .unwrap_or_else(|e| panic!("after {label}: {e}"));
    }

    // A deadlock victim is tried again, up to three times in all.
    fake.inject(Op::History, Fault::Error(1205));
    sql::backup(&db, &path, &mut |_| {}).await.unwrap();
    fake.inject_times(Op::History, Fault::Error(1205), 3);
    let e = sql::backup(&db, &path, &mut |_| {}).await.unwrap_err();
    assert_eq!(e.kind, SqlErrorKind::Deadlock, "{e}");

    // A directory the server cannot write to.
    let nowhere = sql::backup_path(
        path_str(&dir.path().join("missing")).unwrap(),
        "SSODB",
        "dev",
        "run",
        1,
    );
    let e = sql::backup(&db, &nowhere, &mut |_| {}).await.unwrap_err();
    assert_eq!(e.kind, SqlErrorKind::BackupDevice, "{e}");

    // The master secret server's table: denied, missing, empty.
    fake.inject(Op::SecretServer, Fault::Error(229));
    let e = sql::secret_server(&db).await.unwrap_err();
    assert_eq!(e.kind, SqlErrorKind::PermissionDenied, "{e}");
    fake.set_global_info("SSODB", None);
    let e = sql::secret_server(&db).await.unwrap_err();
    assert_eq!(e.kind, SqlErrorKind::NotSsoDatabase, "{e}");
    fake.set_global_info("SSODB", Some(vec![]));
    let e = sql::secret_server(&db).await.unwrap_err();
    assert!(e.message.contains("is empty"), "{e}");

    // Login: a wrong password, a database that does not exist.
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "nope").unwrap();
    let e = sql::secret_server(&SsoDatabase {
        auth: SqlAuth::Sql {
            user: USER.into(),
            password_file: wrong,
        },
        ..db.clone()
    })
    .await
    .unwrap_err();
    assert_eq!(e.kind, SqlErrorKind::Login, "{e}");
    let e = sql::secret_server(&SsoDatabase {
        database: "SSODB_OLD".into(),
        ..db.clone()
    })
    .await
    .unwrap_err();
    assert_eq!(e.kind, SqlErrorKind::DatabaseMissing, "{e}");
    assert!(e.message.contains("SSODB_OLD"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_certificate_is_verified_and_timeouts_hold() {
    let pki = pki();
    let other = self::pki();
    let fake = server(&pki, "SSO-DEV-01").await;
    let dir = tempfile::tempdir().unwrap();
    for mode in [
        SqlEncryption::Strict,
        SqlEncryption::Mandatory,
        SqlEncryption::LoginOnly,
    ] {
        // Another CA: refused in every mode (even "login only" encrypts the login).
        let db = database(dir.path(), &other, fake.port(), mode);
        let e = sql::secret_server(&db).await.unwrap_err();
        assert_eq!(e.kind, SqlErrorKind::Tls, "{mode:?}: {e}");
        // Trusting any certificate is a choice the inventory has to make.
        let trusting = SsoDatabase {
            ca_file: None,
            trust_server_certificate: true,
            ..db
        };
        sql::secret_server(&trusting).await.unwrap();
    }

    // A certificate from the right CA for another host name: refused too.
    let elsewhere = pki_for(&["sqlprod01.corp.example"]);
    let misnamed = server(&elsewhere, "SSO-DEV-01").await;
    let db = database(
        dir.path(),
        &elsewhere,
        misnamed.port(),
        SqlEncryption::Strict,
    );
    let e = sql::secret_server(&db).await.unwrap_err();
    assert_eq!(e.kind, SqlErrorKind::Tls, "{e}");
    assert!(misnamed.connections().is_empty(), "no login was sent");

    // A server that accepts the connection and never answers: connect_timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let mut db = database(dir.path(), &pki, port, SqlEncryption::Mandatory);
    db.connect_timeout = Duration::from_secs(1);
    let e = sql::secret_server(&db).await.unwrap_err();
    assert_eq!(e.kind, SqlErrorKind::Timeout, "{e}");
    assert!(e.message.contains("connect_timeout (1s)"), "{e}");
    held.abort();

    // Nothing listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let db = database(dir.path(), &pki, closed, SqlEncryption::Mandatory);
    let e = sql::secret_server(&db).await.unwrap_err();
    assert_eq!(e.kind, SqlErrorKind::Connect, "{e}");
}

/// `FLEET` with an SSO database for dev on the fake server (strict TLS, its CA in `dir`).
fn fleet_with_sql(dir: &Path, pki: &Pki, port: u16) -> String {
    let db = database(dir, pki, port, SqlEncryption::Strict);
    let SqlAuth::Sql { password_file, .. } = &db.auth else {
        unreachable!()
    };
    let section = format!(
        "backup_dir = 'BACKUPS'\n[environment.sso_database]\nserver = \"localhost\"\nport = {port}\n\
         database = \"SSODB\"\nuser = \"{USER}\"\npassword_file = '{}'\nencrypt = \"strict\"\n\
         ca_file = '{}'\nquery_timeout = \"20s\"\n",
        path_str(password_file).unwrap(),
        path_str(db.ca_file.as_deref().unwrap()).unwrap()
    );
    FLEET.replacen("backup_dir = 'BACKUPS'\n", &section, 1)
}

/// The upgrade fleet with dev's SSO database on a scripted server that records `secret_server` as
/// the master secret server. Fields drop in order: processes, then the server, then its runtime.
struct SqlFleet {
    s: crate::upgrade::Setup,
    fake: FakeSqlServer,
    _dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

fn sql_fleet(secret_server: &str) -> SqlFleet {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pki = pki();
    let fake = rt.block_on(server(&pki, secret_server));
    let dir = tempfile::tempdir().unwrap();
    let s = setup(&fleet_with_sql(dir.path(), &pki, fake.port()), &[], &[]);
    SqlFleet {
        s,
        fake,
        _dir: dir,
        _rt: rt,
    }
}

fn unix_ns(at: std::time::SystemTime) -> u128 {
    at.duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

fn step<'a>(run: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name && s["environment"] == "dev")
        .unwrap_or_else(|| panic!("no dev {name} in {run}"))
}

#[test]
fn an_upgrade_backs_up_the_sso_database_before_anything_is_touched() {
    // The SSO database names the master by its FQDN, in capitals; the inventory says "m1".
    let SqlFleet { s, fake, .. } = &sql_fleet("M1.corp.example");
    let (code, run) = s.json(&["upgrade", "--all"]);
    assert_eq!(code, Some(0), "{run}");
    assert_eq!(run["state"], "succeeded");

    let backup = step(&run, "backup-database");
    assert_eq!(backup["state"], "succeeded", "{backup}");
    let artifact = &backup["artifacts"][0];
    let file = PathBuf::from(artifact["path"].as_str().unwrap());
    assert_eq!(file.parent(), Some(s.fleet.path("backups").as_path()));
    assert_eq!(
        artifact["size"].as_u64().unwrap(),
        std::fs::metadata(&file).unwrap().len()
    );
    // The backup was verified and recorded before the first ESSO tool ran anywhere.
    let log = fake.log();
    let recorded = log
        .iter()
        .find(|l| l.op == Op::History)
        .expect("the msdb row was read");
    let first_tool = tool_log(&s.fleet)[0].at_ns;
    assert!(
        unix_ns(recorded.at) < first_tool,
        "backup-database ran first"
    );
    assert_eq!(
        log.iter()
            .map(|l| l.op)
            .filter(|o| *o != Op::Login)
            .collect::<Vec<_>>(),
        [
            Op::SecretServer,
            Op::LastBackupId,
            Op::Backup,
            Op::Verify,
            Op::History
        ],
        "prod has no SSO database: dev's statements only"
    );
    assert!(
        fake.connections()
            .iter()
            .all(|c| c.mode == ConnMode::Strict)
    );
    // Its progress is kept as the step's log.
    let o = s.ctl(&[
        "logs",
        run["id"].as_str().unwrap(),
        "--step",
        "backup-database",
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("RESTORE VERIFYONLY"), "{o:?}");
    assert!(text.contains("recorded in msdb: backup_set_id"), "{text}");
}

#[test]
fn a_master_secret_server_that_is_not_the_inventorys_master_halts_preflight() {
    let SqlFleet { s, fake, .. } = &sql_fleet("SSO-OTHER-07.corp.example");
    let (code, run) = s.json(&["upgrade", "--all"]);
    assert_eq!(code, Some(1), "{run}");
    assert_eq!(run["state"], "halted");
    let reason = run["reason"].as_str().unwrap();
    assert!(
        reason.contains("records SSO-OTHER-07.corp.example as the master secret server")
            && reason.contains("master of dev is m1"),
        "{reason}"
    );
    assert!(tool_log(&s.fleet).is_empty(), "no tool ran");
    assert!(!ops(fake).contains(&Op::Backup), "no backup was taken");
}

#[test]
fn a_backup_that_fails_stops_the_environment_until_a_retry_succeeds() {
    let SqlFleet { s, fake, .. } = &sql_fleet("m1");
    // The connection drops in the middle of BACKUP DATABASE.
    fake.inject(Op::Backup, Fault::Drop);
    let (code, run) = s.json(&["upgrade", "--all"]);
    assert_eq!(code, Some(1), "{run}");
    assert_eq!(run["state"], "halted");
    let backup = step(&run, "backup-database");
    assert_eq!(backup["state"], "failed", "{backup}");
    assert!(
        backup["message"]
            .as_str()
            .unwrap()
            .contains("dropped while BACKUP DATABASE"),
        "{backup}"
    );
    assert!(backup["artifacts"].as_array().is_none_or(Vec::is_empty));
    assert!(
        tool_log(&s.fleet).is_empty(),
        "no secret backup, no install"
    );

    // The operator retries the coordinator's step (no --node) and the run goes on.
    let id = run["id"].as_str().unwrap();
    let o = s.ctl(&["retry", id, "--step", "backup-database"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let run = wait_final(s, id, PATIENCE * 3);
    assert_eq!(run["state"], "succeeded", "{run}");
    let backup = step(&run, "backup-database");
    assert_eq!(backup["attempts"], 2, "{backup}");
    eventually(PATIENCE, "one recorded backup", || {
        (fake.backups().len() == 1).then_some(())
    });
}

#[test]
fn a_coordinator_killed_during_the_backup_takes_it_again_when_it_resumes() {
    let SqlFleet { s, fake, .. } = &mut sql_fleet("m1");
    fake.inject(Op::Backup, Fault::Delay(Duration::from_secs(2)));
    let id = start_detached(s);
    eventually(PATIENCE, "BACKUP DATABASE in progress", || {
        ops(fake).contains(&Op::LastBackupId).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    restart_coordinator(s);
    let run = wait_final(s, &id, PATIENCE * 3);
    assert_eq!(run["state"], "succeeded", "{run}");
    let backup = step(&run, "backup-database");
    assert_eq!(
        backup["attempts"], 1,
        "the same attempt, taken again: {backup}"
    );
    // Its log goes on after the restart: the stored lines keep their order, none twice.
    let o = s.ctl(&["logs", &id, "--step", "backup-database"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(text.matches("recorded in msdb").count(), 1, "{text}");
    assert!(
        text.find("BACKUP DATABASE").unwrap() < text.find("recorded in msdb").unwrap(),
        "{text}"
    );
    let verified = fake
        .log()
        .iter()
        .filter(|l| l.op == Op::History)
        .map(|l| unix_ns(l.at))
        .max()
        .unwrap();
    assert!(
        verified < tool_log(&s.fleet)[0].at_ns,
        "backed up before any tool ran"
    );
}
