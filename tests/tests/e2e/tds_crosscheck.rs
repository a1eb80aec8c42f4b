//! The scripted TDS server (`fleet_tests::tds`) against clients that are not ours: FreeTDS `tsql`
//! (Debian's freetds-bin; TDS 7.4, GnuTLS) for pre-login, TLS inside pre-login packets, login, SQL
//! batches, rows, info and error tokens; `openssl s_client` for the TDS 8.0 strict TLS layer (FreeTDS
//! 1.3 has no strict mode). So the server is not only consistent with tiberius, our own client.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use fleet_tests::path_str;
use fleet_tests::tds::{
    ConnMode, FakeDatabase, FakeSqlConfig, FakeSqlServer, Fault, Op, ServerEncryption, TlsIdentity,
};

use crate::sql::pki;

/// Whether `program` runs here; when it does not, a test that needs it fails if `required` names an
/// environment variable that is set (CI sets FLEET_REQUIRE_TSQL), and is skipped with a note otherwise.
fn available(program: &str, required: Option<&str>, package: &str) -> bool {
    let found = Command::new(program)
        .arg("-C")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        if let Some(var) = required
            && std::env::var_os(var).is_some()
        {
            panic!("{program} is not installed, and {var} is set: install Debian's {package}");
        }
        println!("skipped: {program} ({package}) not found");
    }
    found
}

/// A scripted server with its CA written to a temporary directory.
struct Bench {
    dir: tempfile::TempDir,
    ca: PathBuf,
    fake: FakeSqlServer,
}

async fn start(encryption: ServerEncryption) -> Bench {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let fake = FakeSqlServer::start(FakeSqlConfig {
        tls: Some(TlsIdentity {
            cert_chain_pem: pki.identity.cert_chain_pem.clone(),
            key_pem: pki.identity.key_pem.clone(),
        }),
        encryption,
        logins: vec![("ssofleet".into(), "Corr3ct-h0rse!".into())],
        databases: vec![FakeDatabase {
            name: "SSODB".into(),
            global_info: Some(vec!["SSO-DEV-01.corp.example".into()]),
        }],
    })
    .await
    .unwrap();
    Bench { dir, ca, fake }
}

impl Bench {
    /// Runs `tsql -S fake` (off the runtime's threads) with `sql` on its standard input, under a
    /// freetds.conf of its own that trusts `ca`.
    async fn tsql(&self, encryption: &str, ca: &Path, password: &str, sql: &str) -> Output {
        let conf = self.dir.path().join("freetds.conf");
        std::fs::write(
            &conf,
            format!(
                "[fake]\n\thost = localhost\n\tport = {}\n\ttds version = 7.4\n\tencryption = {encryption}\n\
                 \tca file = {}\n\tcheck certificate hostname = yes\n",
                self.fake.port(),
                path_str(ca).unwrap()
            ),
        )
        .unwrap();
        let (password, input) = (password.to_string(), format!("{sql}\nexit\n"));
        tokio::task::spawn_blocking(move || {
            let mut child = Command::new("tsql")
                .args([
                    "-S", "fake", "-U", "ssofleet", "-P", &password, "-D", "SSODB",
                ])
                .env("FREETDSCONF", &conf)
                .env_remove("TDSVER")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap()
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freetds_tsql_logs_in_queries_and_sees_info_and_errors() {
    if !available("tsql", Some("FLEET_REQUIRE_TSQL"), "freetds-bin") {
        return;
    }
    let b = start(ServerEncryption::Required).await;
    let fake = &b.fake;
    let backup = b.dir.path().join("it's.bak");
    let backup_sql = format!(
        "BACKUP DATABASE [SSODB] TO DISK = N'{}' WITH COPY_ONLY, CHECKSUM, INIT",
        path_str(&backup).unwrap().replace('\'', "''")
    );

    // TLS with the right CA and a host name check; rows, info messages.
    let sql = format!(
        "SELECT gi_SecretServer FROM dbo.SSOX_GlobalInfo\ngo\nSELECT @@VERSION\ngo\n{backup_sql}\ngo\n\
         RESTORE VERIFYONLY FROM DISK = N'{}' WITH CHECKSUM\ngo",
        path_str(&backup).unwrap().replace('\'', "''")
    );
    let o = b.tsql("require", &b.ca, "Corr3ct-h0rse!", &sql).await;
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("SSO-DEV-01.corp.example"), "the row: {out}");
    assert!(out.contains("Microsoft SQL Server 2022 (fake"), "{out}");
    assert!(
        out.contains("BACKUP DATABASE successfully processed"),
        "the 3014 info message: {out}"
    );
    assert!(out.contains("The backup set on file 1 is valid."), "{out}");
    assert!(backup.exists(), "the literal path, its quote unescaped");
    let conns = fake.connections();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].mode, ConnMode::Tls);
    assert!(conns[0].logged_in && conns[0].user == "ssofleet" && conns[0].database == "SSODB");
    assert_eq!(conns[0].tds_version, 0x7400_0004);
    let log = fake.log();
    let backed_up = log.iter().find(|l| l.op == Op::Backup).unwrap();
    assert_eq!(backed_up.outcome, "ok");

    // An error the server plays: tsql prints its number and text.
    fake.inject(Op::Backup, Fault::Error(3201));
    let o = b
        .tsql(
            "require",
            &b.ca,
            "Corr3ct-h0rse!",
            &format!("{backup_sql}\ngo"),
        )
        .await;
    let out = text(&o);
    assert!(
        out.contains("Msg 3201") && out.contains("Cannot open backup device"),
        "{out}"
    );
    assert!(out.contains("Msg 3013"), "{out}");

    // A wrong password: login failed, tsql gives up.
    let o = b.tsql("require", &b.ca, "wrong", "SELECT 1\ngo").await;
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("Login failed for user 'ssofleet'"), "{out}");

    // Another CA: the TLS handshake fails before any login.
    let other = b.dir.path().join("other-ca.pem");
    std::fs::write(&other, pki().ca_pem).unwrap();
    let before = fake.connections().len();
    let o = b
        .tsql("require", &other, "Corr3ct-h0rse!", "SELECT 1\ngo")
        .await;
    assert!(!o.status.success(), "{}", text(&o));
    assert_eq!(
        fake.connections().len(),
        before,
        "no login reached the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freetds_tsql_in_plaintext_and_login_only_modes() {
    if !available("tsql", Some("FLEET_REQUIRE_TSQL"), "freetds-bin") {
        return;
    }
    let b = start(ServerEncryption::Optional).await;
    for (encryption, mode) in [
        ("off", ConnMode::Plain),
        ("request", ConnMode::LoginOnly),
        ("require", ConnMode::Tls),
    ] {
        let sql = "SELECT gi_SecretServer FROM dbo.SSOX_GlobalInfo\ngo";
        let o = b.tsql(encryption, &b.ca, "Corr3ct-h0rse!", sql).await;
        let out = text(&o);
        assert!(
            out.contains("SSO-DEV-01.corp.example"),
            "{encryption}: {out}"
        );
        assert_eq!(
            b.fake.connections().last().unwrap().mode,
            mode,
            "{encryption}: {out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_forces_encryption_refuses_a_plaintext_tsql() {
    if !available("tsql", Some("FLEET_REQUIRE_TSQL"), "freetds-bin") {
        return;
    }
    let b = start(ServerEncryption::Required).await;
    let o = b.tsql("off", &b.ca, "Corr3ct-h0rse!", "SELECT 1\ngo").await;
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        b.fake.connections().is_empty(),
        "the password never reached it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_sees_strict_tls_with_the_tds_8_alpn() {
    let found = Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    if !found {
        println!("skipped: openssl not found");
        return;
    }
    let b = start(ServerEncryption::Required).await;
    let (port, ca) = (b.fake.port(), b.ca.clone());
    let o = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-servername",
                "localhost",
                "-verify_hostname",
                "localhost",
                "-alpn",
                "tds/8.0",
                "-CAfile",
                path_str(&ca).unwrap(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let out = text(&o);
    assert!(out.contains("ALPN protocol: tds/8.0"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(out.contains("TLSv1.3"), "strict mode offers TLS 1.3: {out}");
}
