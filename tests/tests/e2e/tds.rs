//! The scripted TDS server (`fleet_tests::tds`) against tiberius directly, below the coordinator's
//! own SQL code: every encryption mode the server allows (and the ones it refuses), result rows and
//! their types, sp_executesql parameters (PLP, BIT, BIGINT, NULL, unsupported types), small packets,
//! the backup / verify / history round trip in its parameterised and literal forms, each fault the
//! server plays and how tiberius reports it. `tds_crosscheck` checks the same server with FreeTDS.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use fleet_tests::tds::{
    ConnMode, FakeDatabase, FakeSqlConfig, FakeSqlServer, Fault, Op, ServerEncryption, TlsIdentity,
};
use fleet_tests::{PATIENCE, path_str};
use tiberius::error::{Error, IoErrorKind};
use tiberius::{AuthMethod, Client, Config, EncryptionLevel, Row, ToSql};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use crate::sql::{Pki, pki};

const USER: &str = "ssofleet";
const PASSWORD: &str = "Corr3ct-h0rse!";
const SECRET: &str = "SSO-DEV-01.corp.example";
/// A database whose name needs `]]` in a bracketed identifier.
const ODD_DB: &str = "SSO DB]x";

const SECRET_SQL: &str = "SELECT gi_SecretServer FROM dbo.SSOX_GlobalInfo";
const LAST_ID_SQL: &str = "SELECT ISNULL(MAX(backup_set_id), 0) AS last_id FROM msdb.dbo.backupset WHERE database_name = @P1";
const BACKUP_SQL: &str = "BACKUP DATABASE @P1 TO DISK = @P2 WITH COPY_ONLY, CHECKSUM, INIT";
const VERIFY_SQL: &str = "RESTORE VERIFYONLY FROM DISK = @P1 WITH CHECKSUM";
const HISTORY_SQL: &str = "SELECT TOP (1) s.backup_set_id, CAST(s.backup_size AS bigint) AS backup_size, \
CONVERT(nvarchar(33), s.backup_finish_date, 126) AS finished, s.is_copy_only, s.has_backup_checksums, \
f.physical_device_name FROM msdb.dbo.backupset AS s JOIN msdb.dbo.backupmediafamily AS f ON f.media_set_id = s.media_set_id \
WHERE s.database_name = @P1 AND s.backup_set_id > @P2 AND s.type = 'D' AND f.physical_device_name = @P3 \
ORDER BY s.backup_set_id DESC";

type Sql = Client<Compat<Tap>>;

/// A client's TCP stream that keeps a copy of everything the server sent, to look at the packets
/// of a plaintext session.
#[derive(Debug)]
struct Tap {
    inner: TcpStream,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Tap {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            let new = &buf.filled()[before..];
            self.seen.lock().unwrap().extend_from_slice(new);
        }
        poll
    }
}

impl AsyncWrite for Tap {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The (type, status, length) of each TDS packet in `bytes`, which must be whole packets.
fn packets(bytes: &[u8]) -> Vec<(u8, u8, usize)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        assert!(rest.len() >= 8, "a partial packet header: {rest:?}");
        let length = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        assert!(
            (8..=rest.len()).contains(&length),
            "a packet of {length} bytes"
        );
        out.push((rest[0], rest[1], length));
        rest = &rest[length..];
    }
    out
}

/// Certificates, and the CA written to a file for tiberius.
struct Fixture {
    pki: Pki,
    dir: tempfile::TempDir,
    ca: PathBuf,
}

fn fixture() -> Fixture {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    Fixture { pki, dir, ca }
}

async fn start(pki: &Pki, tls: bool, encryption: ServerEncryption) -> FakeSqlServer {
    FakeSqlServer::start(FakeSqlConfig {
        tls: tls.then(|| TlsIdentity {
            cert_chain_pem: pki.identity.cert_chain_pem.clone(),
            key_pem: pki.identity.key_pem.clone(),
        }),
        encryption,
        logins: vec![(USER.into(), PASSWORD.into())],
        databases: vec![
            FakeDatabase {
                name: "SSODB".into(),
                global_info: Some(vec![SECRET.into()]),
            },
            FakeDatabase {
                name: ODD_DB.into(),
                global_info: None,
            },
        ],
    })
    .await
    .unwrap()
}

/// tiberius settings for `fake`: our login, database SSODB, the CA in `ca`, bounded waits.
fn config(fake: &FakeSqlServer, encryption: EncryptionLevel, ca: &Path) -> Config {
    let mut config = Config::new();
    config.host("localhost");
    config.port(fake.port());
    config.authentication(AuthMethod::sql_server(USER, PASSWORD));
    config.database("SSODB");
    config.encryption(encryption);
    config.trust_cert_ca(path_str(ca).unwrap());
    config.handshake_timeout(Some(PATIENCE));
    config.command_timeout(Some(PATIENCE));
    config
}

async fn connect(config: Config, fake: &FakeSqlServer) -> tiberius::Result<Sql> {
    Ok(connect_tapped(config, fake).await?.0)
}

/// A client, and what the server sent it.
async fn connect_tapped(
    config: Config,
    fake: &FakeSqlServer,
) -> tiberius::Result<(Sql, Arc<Mutex<Vec<u8>>>)> {
    let inner = TcpStream::connect(fake.addr()).await?;
    inner.set_nodelay(true)?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let tap = Tap {
        inner,
        seen: seen.clone(),
    };
    Ok((Client::connect(config, tap.compat_write()).await?, seen))
}

async fn rows(client: &mut Sql, sql: &str, params: &[&dyn ToSql]) -> tiberius::Result<Vec<Row>> {
    client.query(sql, params).await?.into_first_result().await
}

/// The server error tiberius reported, or a panic naming what it got instead.
fn server_error<T: std::fmt::Debug>(result: tiberius::Result<T>) -> tiberius::error::TokenError {
    match result {
        Err(Error::Server(e)) => e,
        other => panic!("expected a SQL Server error, got {other:?}"),
    }
}

fn text(row: &Row, i: usize) -> String {
    row.try_get::<&str, _>(i).unwrap().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiberius_connects_in_every_mode_the_server_allows_and_no_other() {
    let f = fixture();
    let forced = start(&f.pki, true, ServerEncryption::Required).await;
    let optional = start(&f.pki, true, ServerEncryption::Optional).await;
    let no_tls = start(&f.pki, false, ServerEncryption::Optional).await;
    use EncryptionLevel::*;
    for (fake, level, mode) in [
        (&forced, Strict, ConnMode::Strict),
        (&forced, Required, ConnMode::Tls),
        // Forced encryption turns a login-only client into a fully encrypted one.
        (&forced, Off, ConnMode::Tls),
        (&optional, On, ConnMode::Tls),
        (&optional, Off, ConnMode::LoginOnly),
        (&optional, NotSupported, ConnMode::Plain),
        (&no_tls, NotSupported, ConnMode::Plain),
    ] {
        let mut client = connect(config(fake, level, &f.ca), fake)
            .await
            .unwrap_or_else(|e| panic!("{level:?} → {mode:?}: {e:?}"));
        // Two statements after the login: after login-only TLS they travel on the bare socket.
        for _ in 0..2 {
            let got = rows(&mut client, SECRET_SQL, &[]).await.unwrap();
            assert_eq!(got.len(), 1, "{level:?}");
            assert_eq!(text(&got[0], 0), SECRET, "{level:?}");
        }
        let conn = fake.connections().pop().unwrap();
        assert_eq!(conn.mode, mode, "{level:?}");
        assert!(conn.logged_in, "{level:?}");
        assert_eq!(
            (conn.user.as_str(), conn.database.as_str()),
            (USER, "SSODB")
        );
        assert_eq!(conn.tds_version, 0x7400_0004, "tiberius speaks TDS 7.4");
    }

    // A server that forces encryption answers ENCRYPT_REQ to a client that cannot encrypt, and
    // hangs up: the password is never sent.
    let before = forced.connections().len();
    let e = connect(config(&forced, NotSupported, &f.ca), &forced)
        .await
        .unwrap_err();
    assert!(!matches!(e, Error::Server(_)), "{e:?}");
    assert_eq!(forced.connections().len(), before, "no login: {e:?}");

    // A server without a certificate cannot encrypt: tiberius refuses to go on in plaintext.
    for level in [Required, On] {
        let e = connect(config(&no_tls, level, &f.ca), &no_tls)
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("does not allow the requested encryption level"),
            "{level:?}: {e:?}"
        );
    }
    // And a strict client's ClientHello gets no answer but a closed connection.
    let e = connect(config(&no_tls, Strict, &f.ca), &no_tls)
        .await
        .unwrap_err();
    assert!(!matches!(e, Error::Server(_)), "{e:?}");
    assert_eq!(
        no_tls.connections().len(),
        1,
        "only the plaintext login above"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_and_parameters_of_every_supported_type_over_small_packets() {
    let f = fixture();
    let fake = start(&f.pki, true, ServerEncryption::Optional).await;
    // In plaintext, to see the packets; 512 bytes: long parameters and answers span several
    // packets both ways.
    let mut config = config(&fake, EncryptionLevel::NotSupported, &f.ca);
    config.packet_size(512);
    let (mut client, seen) = connect_tapped(config, &fake).await.unwrap();

    let one = rows(&mut client, "select  1 ;", &[]).await.unwrap();
    assert_eq!(one[0].try_get::<i32, _>(0).unwrap(), Some(1));
    let version = rows(&mut client, "SELECT @@VERSION", &[]).await.unwrap();
    assert!(
        text(&version[0], 0).starts_with("Microsoft SQL Server 2022 (fake"),
        "{version:?}"
    );

    // Several rows, non-ASCII text, and enough of it to need more than one 512-byte packet.
    let long = "ü".repeat(300);
    fake.set_global_info(
        "ssodb",
        Some(vec!["A".into(), "Ünïcödé ☃".into(), long.clone()]),
    );
    let got = rows(&mut client, SECRET_SQL, &[]).await.unwrap();
    assert_eq!(
        got.iter().map(|r| text(r, 0)).collect::<Vec<_>>(),
        ["A", "Ünïcödé ☃", long.as_str()]
    );
    assert_eq!(got[0].columns()[0].name(), "gi_SecretServer");
    fake.set_global_info("SSODB", Some(vec![]));
    assert!(rows(&mut client, SECRET_SQL, &[]).await.unwrap().is_empty());
    fake.set_global_info("SSODB", None);
    let e = server_error(rows(&mut client, SECRET_SQL, &[]).await);
    assert_eq!(
        (e.code(), e.class(), e.message()),
        (208, 16, "Invalid object name 'dbo.SSOX_GlobalInfo'.")
    );

    // sp_executesql parameters: NVARCHAR, and PLP NVARCHAR(max) for a long one (over 4000 bytes).
    let got = rows(&mut client, LAST_ID_SQL, &[&"SSODB"]).await.unwrap();
    assert_eq!(got[0].try_get::<i32, _>("last_id").unwrap(), Some(0));
    let long_name = "x".repeat(5000);
    let got = rows(&mut client, LAST_ID_SQL, &[&long_name.as_str()])
        .await
        .unwrap();
    assert_eq!(got[0].try_get::<i32, _>(0).unwrap(), Some(0));
    let log = fake.log();
    let [.., first, second] = log.as_slice() else {
        panic!("{log:?}")
    };
    assert_eq!(
        (first.op, first.text.as_str(), first.outcome.as_str()),
        (Op::LastBackupId, LAST_ID_SQL, "ok")
    );
    assert_eq!(first.params, ["SSODB"]);
    assert_eq!(second.params, [long_name.as_str()], "the PLP value, whole");

    // BIT, BIGINT, INT and a NULL: decoded and logged even for a statement that ignores them.
    let got = rows(
        &mut client,
        "SELECT 1",
        &[&true, &-7_000_000_000i64, &42i32, &Option::<i32>::None],
    )
    .await
    .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        fake.log().last().unwrap().params,
        ["1", "-7000000000", "42", "NULL"]
    );

    // A parameter type the server does not decode: an error that says so, and the connection
    // stays usable.
    let e = server_error(rows(&mut client, "SELECT 1", &[&1.5f64]).await);
    assert!(
        e.message().contains("parameter type 0x6d not supported"),
        "{e:?}"
    );

    // A statement without a script: an error naming it, never silence.
    let e = server_error(rows(&mut client, "DELETE FROM dbo.SSOX_GlobalInfo", &[]).await);
    assert_eq!(e.code(), 2812);
    assert!(
        e.message()
            .contains("no script for this statement: DELETE FROM dbo.SSOX_GlobalInfo"),
        "{e:?}"
    );
    let outcome = fake.log().last().unwrap().clone();
    assert_eq!(
        (outcome.op, outcome.outcome.as_str()),
        (Op::Other, "error 2812")
    );

    // An attention when nothing runs is acknowledged with DONE (attention bit); the session goes on.
    client.cancel_query().await.unwrap();
    let one = rows(&mut client, "SELECT 1", &[]).await.unwrap();
    assert_eq!(one[0].try_get::<i32, _>(0).unwrap(), Some(1));

    // Every answer came as TDS reply packets of at most the 512 bytes the login asked for, some of
    // them split over several; one message per request (pre-login, login, 11 statements, the
    // attention).
    let packets = packets(&seen.lock().unwrap());
    assert!(
        packets
            .iter()
            .all(|&(kind, _, len)| kind == 0x04 && len <= 512),
        "{packets:?}"
    );
    assert!(packets.iter().any(|&(_, status, _)| status & 0x01 == 0));
    let messages = packets.iter().filter(|&&(_, status, _)| status & 0x01 != 0);
    assert_eq!(messages.count(), 14, "{packets:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_verify_and_history_with_parameters_and_as_literal_batches() {
    let f = fixture();
    let fake = start(&f.pki, true, ServerEncryption::Required).await;
    let mut client = connect(config(&fake, EncryptionLevel::Strict, &f.ca), &fake)
        .await
        .unwrap();
    let dir = f.dir.path().join("it's [odd]");
    std::fs::create_dir_all(&dir).unwrap();
    let path = path_str(&dir.join("SSODB.bak")).unwrap().to_string();

    let last = rows(&mut client, LAST_ID_SQL, &[&"SSODB"]).await.unwrap()[0]
        .try_get::<i32, _>(0)
        .unwrap()
        .unwrap();
    let results = client
        .query(BACKUP_SQL, &[&"ssodb", &path.as_str()])
        .await
        .unwrap()
        .into_results()
        .await
        .unwrap();
    assert!(results.iter().all(Vec::is_empty), "no rows: {results:?}");
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size > 0);
    rows(&mut client, VERIFY_SQL, &[&path.as_str()])
        .await
        .unwrap();

    let got = rows(&mut client, HISTORY_SQL, &[&"SSODB", &last, &path.as_str()])
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    let row = &got[0];
    let names: Vec<&str> = row.columns().iter().map(|c| c.name()).collect();
    assert_eq!(
        names,
        [
            "backup_set_id",
            "backup_size",
            "finished",
            "is_copy_only",
            "has_backup_checksums",
            "physical_device_name"
        ]
    );
    let id = row.try_get::<i32, _>(0).unwrap().unwrap();
    assert!(id > last, "{id} after {last}");
    assert_eq!(
        row.try_get::<i64, _>(1).unwrap(),
        Some(i64::try_from(size).unwrap())
    );
    let finished = text(row, 2);
    let shape: String = finished
        .chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect();
    assert_eq!(shape, "9999-99-99T99:99:99.999", "{finished}");
    assert_eq!(row.try_get::<bool, _>(3).unwrap(), Some(true));
    assert_eq!(row.try_get::<bool, _>(4).unwrap(), Some(true));
    assert_eq!(text(row, 5), path);
    let recorded = fake.backups().pop().unwrap();
    assert_eq!(
        (
            recorded.backup_set_id,
            recorded.database_name.as_str(),
            recorded.physical_device_name.as_str()
        ),
        (id, "SSODB", path.as_str()),
        "the canonical database name"
    );
    assert_eq!(
        rows(&mut client, LAST_ID_SQL, &[&"SSODB"]).await.unwrap()[0]
            .try_get::<i32, _>(0)
            .unwrap(),
        Some(id)
    );
    // History matches on the set id and the file.
    for (after, file) in [(id, path.as_str()), (last, "/elsewhere.bak")] {
        let got = rows(&mut client, HISTORY_SQL, &[&"SSODB", &after, &file]).await;
        assert!(got.unwrap().is_empty(), "after {after}, {file}");
    }
    let ops: Vec<Op> = fake.log().iter().map(|l| l.op).collect();
    assert_eq!(
        ops,
        [
            Op::LastBackupId,
            Op::Backup,
            Op::Verify,
            Op::History,
            Op::LastBackupId,
            Op::History,
            Op::History
        ]
    );

    // The literal forms tsql would send: `]]` in a bracketed name, `''` in N'…', and only the WITH
    // options given are recorded.
    let literal = path_str(&dir.join("odd 'name'.bak")).unwrap().to_string();
    let quoted = literal.replace('\'', "''");
    client
        .simple_query(format!(
            "BACKUP DATABASE [SSO DB]]x] TO DISK = N'{quoted}' WITH CHECKSUM, INIT"
        ))
        .await
        .unwrap()
        .into_results()
        .await
        .unwrap();
    assert!(Path::new(&literal).exists(), "{literal}");
    let recorded = fake.backups().pop().unwrap();
    assert_eq!(
        (
            recorded.database_name.as_str(),
            recorded.physical_device_name.as_str()
        ),
        (ODD_DB, literal.as_str())
    );
    assert!(!recorded.is_copy_only && recorded.has_backup_checksums);
    assert!(recorded.backup_set_id > id);
    client
        .simple_query(format!(
            "restore  verifyonly FROM DISK = N'{quoted}'\n WITH CHECKSUM;"
        ))
        .await
        .unwrap()
        .into_results()
        .await
        .unwrap();
    assert_eq!(fake.log().last().unwrap().params, Vec::<String>::new());

    // What goes wrong without any injected fault.
    let e = server_error(rows(&mut client, BACKUP_SQL, &[&"NOPE", &path.as_str()]).await);
    assert_eq!((e.code(), e.class()), (911, 16));
    assert_eq!(
        e.message(),
        "Database 'NOPE' does not exist. Make sure that the name is entered correctly."
    );
    let missing = path_str(&f.dir.path().join("no such dir").join("x.bak"))
        .unwrap()
        .to_string();
    let e = server_error(rows(&mut client, BACKUP_SQL, &[&"SSODB", &missing.as_str()]).await);
    assert_eq!(e.code(), 3201);
    assert_eq!(
        e.message(),
        format!(
            "Cannot open backup device '{missing}'. Operating system error 3(The system cannot find the path specified.)."
        )
    );
    assert!(!Path::new(&missing).exists());
    let e = server_error(rows(&mut client, VERIFY_SQL, &[&missing.as_str()]).await);
    assert_eq!(e.code(), 3201);
    assert_eq!(fake.log().last().unwrap().outcome, "error 3201");

    // A damaged file fails verification; a backup without history leaves msdb as it was.
    fake.inject(Op::Backup, Fault::Corrupt);
    rows(&mut client, BACKUP_SQL, &[&"SSODB", &path.as_str()])
        .await
        .unwrap();
    let e = server_error(rows(&mut client, VERIFY_SQL, &[&path.as_str()]).await);
    assert_eq!(
        (e.code(), e.class(), e.message()),
        (3189, 16, "Damage to the backup set was detected.")
    );
    let count = fake.backups().len();
    let last = fake.backups().last().unwrap().backup_set_id;
    fake.inject(Op::Backup, Fault::NoHistory);
    rows(&mut client, BACKUP_SQL, &[&"SSODB", &path.as_str()])
        .await
        .unwrap();
    rows(&mut client, VERIFY_SQL, &[&path.as_str()])
        .await
        .unwrap();
    assert_eq!(fake.backups().len(), count);
    let got = rows(&mut client, HISTORY_SQL, &[&"SSODB", &last, &path.as_str()]).await;
    assert!(got.unwrap().is_empty(), "no row after {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_errors_and_failed_logins_are_server_errors_to_tiberius() {
    let f = fixture();
    let fake = start(&f.pki, true, ServerEncryption::Required).await;
    let mut client = connect(config(&fake, EncryptionLevel::Required, &f.ca), &fake)
        .await
        .unwrap();
    let path = path_str(&f.dir.path().join("SSODB.bak"))
        .unwrap()
        .to_string();
    let p = path.as_str();
    // (statement, error number, its class, the SQL, its parameters)
    type Case<'a> = (Op, i32, u8, &'a str, Vec<&'a dyn ToSql>);
    let cases: [Case; 9] = [
        (Op::SecretServer, 229, 14, SECRET_SQL, vec![]),
        (Op::SecretServer, 1205, 13, SECRET_SQL, vec![]),
        (Op::LastBackupId, 1205, 13, LAST_ID_SQL, vec![&"SSODB"]),
        (Op::Backup, 3201, 16, BACKUP_SQL, vec![&"SSODB", &p]),
        (Op::Backup, 262, 14, BACKUP_SQL, vec![&"SSODB", &p]),
        (Op::Backup, 911, 16, BACKUP_SQL, vec![&"SSODB", &p]),
        (Op::Verify, 3201, 16, VERIFY_SQL, vec![&p]),
        (Op::Verify, 3189, 16, VERIFY_SQL, vec![&p]),
        (Op::History, 229, 14, HISTORY_SQL, vec![&"SSODB", &0i32, &p]),
    ];
    for (op, number, class, sql, params) in cases {
        fake.inject(op, Fault::Error(number));
        let e = server_error(rows(&mut client, sql, &params).await);
        assert_eq!((e.code(), e.class()), (number as u32, class), "{op:?}");
        if number == 3201 {
            assert!(e.message().contains(p), "names the device: {e:?}");
        }
        let logged = fake.log().last().unwrap().clone();
        assert_eq!((logged.op, logged.outcome), (op, format!("error {number}")));
        // One-shot: the same statement then succeeds, on the same connection.
        rows(&mut client, sql, &params)
            .await
            .unwrap_or_else(|e| panic!("{op:?} after the fault: {e:?}"));
    }
    assert_eq!(
        fake.backups().len(),
        3,
        "one per backup that was not failed"
    );

    // n times, then not; and Any takes whatever statement comes next.
    fake.inject_times(Op::SecretServer, Fault::Error(1205), 2);
    for _ in 0..2 {
        let e = server_error(rows(&mut client, SECRET_SQL, &[]).await);
        assert_eq!(e.code(), 1205);
    }
    rows(&mut client, SECRET_SQL, &[]).await.unwrap();
    fake.inject(Op::Any, Fault::Error(1205));
    let e = server_error(rows(&mut client, "SELECT 1", &[]).await);
    assert_eq!(e.code(), 1205);
    rows(&mut client, "SELECT 1", &[]).await.unwrap();

    // Logins: an injected error instead of LOGINACK, a wrong password, an unknown login, an
    // unknown database.
    fake.inject(Op::Login, Fault::Error(18456));
    let e = server_error(connect(config(&fake, EncryptionLevel::Required, &f.ca), &fake).await);
    assert_eq!((e.code(), e.class()), (18456, 14));
    for (user, password, state) in [(USER, "wrong", 8), ("nobody", PASSWORD, 5)] {
        let mut c = config(&fake, EncryptionLevel::Required, &f.ca);
        c.authentication(AuthMethod::sql_server(user, password));
        let e = server_error(connect(c, &fake).await);
        assert_eq!((e.code(), e.class(), e.state()), (18456, 14, state));
        assert_eq!(e.message(), format!("Login failed for user '{user}'."));
    }
    let mut c = config(&fake, EncryptionLevel::Required, &f.ca);
    c.database("NOPE");
    let e = server_error(connect(c, &fake).await);
    assert_eq!((e.code(), e.class()), (4060, 11));
    assert_eq!(
        e.message(),
        "Cannot open database \"NOPE\" requested by the login. The login failed."
    );
    let conns = fake.connections();
    assert_eq!(conns.len(), 5);
    assert!(conns[0].logged_in && conns[1..].iter().all(|c| !c.logged_in));
    assert_eq!(conns[4].database, "NOPE");
    // The database name is matched case-insensitively, as with SQL Server's default collation.
    let mut c = config(&fake, EncryptionLevel::Required, &f.ca);
    c.database("ssodb");
    connect(c, &fake).await.unwrap();

    // A CA that did not sign the server's certificate: TLS fails, in both kinds of TLS.
    let other = f.dir.path().join("other-ca.pem");
    std::fs::write(&other, pki().ca_pem).unwrap();
    for level in [EncryptionLevel::Required, EncryptionLevel::Strict] {
        let before = fake.connections().len();
        match connect(config(&fake, level, &other), &fake).await {
            Err(Error::Tls(message)) => {
                assert!(message.contains("certificate"), "{message}")
            }
            other => panic!("{level:?}: expected a TLS error, got {other:?}"),
        }
        assert_eq!(fake.connections().len(), before, "no login was sent");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangs_drops_and_delays_as_tiberius_sees_them() {
    let f = fixture();
    let fake = start(&f.pki, true, ServerEncryption::Required).await;
    let mut short = config(&fake, EncryptionLevel::Strict, &f.ca);
    short.command_timeout(Some(Duration::from_secs(1)));
    let mut client = connect(short.clone(), &fake).await.unwrap();
    let path = path_str(&f.dir.path().join("SSODB.bak"))
        .unwrap()
        .to_string();

    // A hang mid-answer: tiberius's command timeout fires, and the connection is done for.
    fake.inject(Op::Backup, Fault::Hang);
    let started = Instant::now();
    let e = rows(&mut client, BACKUP_SQL, &[&"SSODB", &path.as_str()])
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Io {
                kind: IoErrorKind::TimedOut,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(fake.log().last().unwrap().outcome, "hang");
    let e = rows(&mut client, "SELECT 1", &[]).await.unwrap_err();
    assert!(e.to_string().contains("out of sync"), "{e:?}");

    // A dropped connection mid-answer: an I/O error.
    let mut client = connect(short.clone(), &fake).await.unwrap();
    fake.inject(Op::Verify, Fault::Drop);
    let e = rows(&mut client, VERIFY_SQL, &[&path.as_str()])
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert_eq!(fake.log().last().unwrap().outcome, "drop");

    // A slow answer is still an answer.
    let mut client = connect(short.clone(), &fake).await.unwrap();
    fake.inject(Op::SecretServer, Fault::Delay(Duration::from_millis(400)));
    let started = Instant::now();
    let got = rows(&mut client, SECRET_SQL, &[]).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(text(&got[0], 0), SECRET);

    // Logins: dropped at pre-login, hung (the handshake timeout fires), delayed.
    fake.inject(Op::Login, Fault::Drop);
    let e = connect(short.clone(), &fake).await.unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    let mut hasty = short.clone();
    hasty.handshake_timeout(Some(Duration::from_secs(1)));
    fake.inject(Op::Login, Fault::Hang);
    let e = connect(hasty, &fake).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Io {
                kind: IoErrorKind::TimedOut,
                ..
            }
        ),
        "{e:?}"
    );
    fake.inject(Op::Login, Fault::Delay(Duration::from_millis(400)));
    let started = Instant::now();
    connect(short, &fake).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(400));
}
