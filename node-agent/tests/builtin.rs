//! The built-in Windows actions against fixture scripts standing in for the Windows tools
//! (`tests/fixtures/windows/`): the command lines they run, what goes to standard input, the outputs
//! and the failure messages.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_agent::builtin::{self, Context, Tools};
use fleet_agent::catalogue::ActionName;
use fleet_agent::runner::{Outcome, Report};
use tokio::sync::mpsc;

const PASSWORD: &str = "correct-horse-7";

struct Fake {
    dir: tempfile::TempDir,
    tools: Tools,
}

impl Fake {
    /// Wrapper scripts in a fresh directory point every tool at its fixture with this test's state.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/windows");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let wrap = |name: &str, fixture: &str| {
            let path = bin.join(name);
            std::fs::write(
                &path,
                format!(
                    "#!/bin/sh\nFAKE_WIN_DIR='{}' exec '{}' \"$@\"\n",
                    dir.path().display(),
                    fixtures.join(fixture).display()
                ),
            )
            .unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path
        };
        for tool in [
            "sc",
            "reg",
            "ssomanage",
            "ssoconfig",
            "udbkey",
            "hissomig",
            "shutdown",
        ] {
            wrap(tool, tool);
        }
        wrap("Setup.exe", "setup");
        let overrides = builtin::ToolOverrides {
            sc: Some(bin.join("sc")),
            reg: Some(bin.join("reg")),
            msiexec: Some(wrap("msiexec", "msiexec")),
            ssoconfig: Some(bin.join("ssoconfig")),
            ssomanage: Some(bin.join("ssomanage")),
            udbkey: Some(bin.join("udbkey")),
            shutdown: Some(bin.join("shutdown")),
            migration_dir: Some(dir.path().join("hostsec")),
            hissomig: Some(bin.join("hissomig")),
            ..Default::default()
        };
        let tools = Tools::resolve(&overrides, &|_| None, false);
        Self { dir, tools }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn set(&self, name: &str, text: &str) {
        let path = self.path(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn sample(name: &str) -> String {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("src/builtin/samples")
                .join(name),
        )
        .unwrap()
    }

    /// A server with BizTalk (its key in the 32-bit view), ESSO 3.0.7 as the master, ENTSSO running.
    fn biztalk_master(self) -> Self {
        self.set("service.ENTSSO", "running");
        self.set(
            r"reg/native/HKLM_SOFTWARE_Microsoft_ENTSSO",
            &Self::sample("reg-query-entsso-key.txt"),
        );
        self.set(
            r"reg/32/HKLM_SOFTWARE_Microsoft_BizTalk_Server_3.0",
            &Self::sample("reg-query-biztalk-version.txt"),
        );
        self.set("secret_server", "SSO-DEV-01");
        self
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn ctx(&self, params: &[(&str, &str)]) -> Context {
        let mut map: BTreeMap<String, String> = [
            ("node", "sso-dev-01"),
            ("run_id", "r1"),
            ("environment", "dev"),
            ("master", "sso-dev-01.corp.example"),
        ]
        .into_iter()
        .chain(params.iter().copied())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        map.retain(|_, v| !v.is_empty());
        Context {
            params: map,
            stdin_secret: None,
            timeout: Duration::from_secs(30),
            state_dir: self.path("state"),
        }
    }

    async fn run(
        &self,
        action: ActionName,
        ctx: &Context,
    ) -> (Result<Outcome, String>, Vec<Report>) {
        let (tx, mut rx) = mpsc::channel(1024);
        let result = builtin::run(action, &self.tools, ctx, tx).await;
        let mut reports = Vec::new();
        while let Ok(r) = rx.try_recv() {
            reports.push(r);
        }
        (result, reports)
    }
}

fn out<'a>(o: &'a Outcome, key: &str) -> &'a str {
    o.outputs.get(key).map(String::as_str).unwrap_or("<none>")
}

fn last_error(o: &Outcome) -> &str {
    o.stderr_tail.last().map(String::as_str).unwrap_or("<none>")
}

#[tokio::test]
async fn facts_read_the_service_the_registry_and_the_products() {
    let f = Fake::new().biztalk_master();
    let (result, reports) = f.run(ActionName::Facts, &f.ctx(&[])).await;
    let o = result.unwrap();
    assert!(o.succeeded(), "{o:?}");
    assert_eq!(out(&o, "service"), "running");
    assert_eq!(out(&o, "version"), "3.0.7");
    assert_eq!(out(&o, "products"), "biztalk");
    assert_eq!(out(&o, "biztalk_version"), "3.13.717.0");
    assert_eq!(out(&o, "master_secret_server"), "true");
    let calls = f.calls();
    assert_eq!(calls[0], "sc [query] [ENTSSO]");
    assert_eq!(calls[1], r"reg [query] [HKLM\SOFTWARE\Microsoft\ENTSSO]");
    // BizTalk is found in the 32-bit view after the native one.
    assert!(calls.contains(
        &r"reg [query] [HKLM\SOFTWARE\Microsoft\BizTalk Server\3.0] [/v] [ProductVersion] [/reg:32]".to_string()
    ));
    assert!(
        reports
            .iter()
            .any(|r| matches!(r, Report::Progress { percent: 100, .. }))
    );

    let facts = builtin::facts(&f.tools, &f.path("state")).await;
    assert_eq!(facts.esso_version.as_deref(), Some("3.0.7"));
    assert_eq!(facts.products, ["biztalk"]);
    assert!(facts.master_secret_server);
    assert_eq!(facts.error, "");
}

#[tokio::test]
async fn a_server_without_esso_reports_nothing_installed() {
    let f = Fake::new();
    let (result, _) = f.run(ActionName::Facts, &f.ctx(&[])).await;
    let o = result.unwrap();
    assert!(o.succeeded(), "{o:?}");
    assert_eq!(out(&o, "service"), "not-installed");
    assert_eq!(out(&o, "version"), "");
    assert_eq!(out(&o, "products"), "");
    assert_eq!(out(&o, "master_secret_server"), "false");
}

#[tokio::test]
async fn verify_checks_service_version_master_and_status() {
    let f = Fake::new().biztalk_master();
    let ok = f.ctx(&[("target_version", "3.0.7")]);
    let (result, _) = f.run(ActionName::VerifySso, &ok).await;
    let o = result.unwrap();
    assert!(o.succeeded(), "{o:?}");
    assert_eq!(out(&o, "secret_server"), "SSO-DEV-01");
    assert_eq!(out(&o, "sso_enabled"), "yes");
    assert_eq!(out(&o, "sql_server"), "dsiteamsrv");
    assert!(f.calls().contains(&"ssomanage [-displaydb]".to_string()));

    let (result, _) = f
        .run(
            ActionName::VerifySso,
            &f.ctx(&[("target_version", "3.0.8")]),
        )
        .await;
    assert_eq!(
        last_error(&result.unwrap()),
        "ESSO reports version 3.0.7, expected 3.0.8"
    );

    f.set("secret_server", "SSO-DEV-02");
    let o = f.run(ActionName::VerifySso, &ok).await.0.unwrap();
    assert_eq!(o.exit_code, Some(1));
    assert_eq!(
        last_error(&o),
        "the SSO system names SSO-DEV-02 as its master secret server, but the inventory's master is sso-dev-01.corp.example"
    );

    f.set("secret_server", "sso-dev-01");
    f.set("sso_enabled", "No");
    let o = f.run(ActionName::VerifySso, &ok).await.0.unwrap();
    assert_eq!(
        last_error(&o),
        "SSO is not enabled (ssomanage -displaydb shows \"SSO enabled : no\")"
    );

    f.set("sso_enabled", "Yes");
    f.set("fail.ssomanage", "");
    let o = f.run(ActionName::VerifySso, &ok).await.0.unwrap();
    assert!(
        last_error(&o)
            .starts_with("ssomanage -displaydb: 0xC0002A0F: could not contact the SSO server"),
        "{o:?}"
    );

    f.set("service.ENTSSO", "stopped");
    let o = f.run(ActionName::VerifySso, &ok).await.0.unwrap();
    assert_eq!(out(&o, "service"), "stopped");
    assert_eq!(
        last_error(&o),
        "the ENTSSO service is stopped (WIN32_EXIT_CODE 1077), not running"
    );
}

#[tokio::test]
async fn verify_waits_for_a_starting_entsso() {
    let f = Fake::new().biztalk_master();
    f.set("service.ENTSSO", "start-pending");
    let o = f.run(ActionName::VerifySso, &f.ctx(&[])).await.0.unwrap();
    assert!(o.succeeded(), "{o:?}");
    assert_eq!(out(&o, "service"), "running");
}

#[tokio::test]
async fn the_backup_password_goes_only_to_standard_input() {
    let f = Fake::new().biztalk_master();
    let file = f.path("backup/secret.bak");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let mut ctx = f.ctx(&[("backup_file", file.to_str().unwrap())]);
    ctx.stdin_secret = Some(PASSWORD.into());
    let (result, reports) = f.run(ActionName::BackupSecret, &ctx).await;
    let o = result.unwrap();
    assert!(o.succeeded(), "{o:?}");
    assert_eq!(out(&o, "backup_file"), file.to_str().unwrap());
    assert!(std::fs::metadata(&file).unwrap().len() > 0);
    let calls = f.calls();
    assert_eq!(
        calls,
        [format!("ssoconfig [-backupSecret] [{}]", file.display())]
    );
    let stdin = std::fs::read_to_string(f.path("stdin.ssoconfig")).unwrap();
    let lines: Vec<&str> = stdin.lines().collect();
    assert_eq!(lines[..2], [PASSWORD, PASSWORD]);
    assert!(
        lines[2].starts_with("ssofleet backup dev sso-dev-01 "),
        "{stdin}"
    );
    assert!(!lines[2].contains(PASSWORD));
    let shown = format!("{reports:?}{o:?}");
    assert!(!shown.contains(PASSWORD), "the password leaked: {shown}");

    f.set("fail.ssoconfig", "");
    let o = f.run(ActionName::BackupSecret, &ctx).await.0.unwrap();
    assert_eq!(
        last_error(&o),
        "ssoconfig -backupSecret: 0xC0002A0E: this must be run on the master secret server, and this server is not it"
    );

    ctx.stdin_secret = Some("pw-6ch".into());
    let o = f.run(ActionName::BackupSecret, &ctx).await.0.unwrap();
    assert!(
        last_error(&o).contains("shorter than the 7 characters"),
        "{o:?}"
    );
}

#[tokio::test]
async fn install_selects_esso_only_when_no_other_product_provides_it() {
    let f = Fake::new().biztalk_master();
    let setup = f.path("bin/Setup.exe");
    let ctx = f.ctx(&[("installer", setup.to_str().unwrap())]);
    let log = f.path("state/logs/install-r1-sso-dev-01.log");

    let o = f.run(ActionName::InstallSso, &ctx).await.0.unwrap();
    assert_eq!(o.exit_code, Some(0), "{o:?}");
    assert_eq!(out(&o, "esso_feature"), "SSOServer");
    let install = f
        .calls()
        .into_iter()
        .find(|c| c.starts_with("setup"))
        .unwrap();
    assert_eq!(
        install,
        format!(
            "setup [/quiet] [/norestart] [/L] [{}] [/ADDLOCAL] [WMI,BizTalk,AdditionalApps,SSOServer]",
            log.display()
        )
    );
    assert!(log.is_file());

    // HIS is there: ESSO comes with it, the feature is not selected. (A POSIX exit status cannot
    // carry 3010 or 1603: installer_outcome's unit test covers those codes.)
    f.set(
        "reg/native/HKLM_SOFTWARE_Microsoft_Host_Integration_Server",
        "\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Host Integration Server\n\n",
    );
    std::fs::remove_file(f.path("calls.log")).unwrap();
    let o = f.run(ActionName::InstallSso, &ctx).await.0.unwrap();
    assert_eq!(o.exit_code, Some(0));
    assert_eq!(out(&o, "products"), "biztalk,his");
    assert_eq!(out(&o, "esso_feature"), "none");
    let install = f
        .calls()
        .into_iter()
        .find(|c| c.starts_with("setup"))
        .unwrap();
    assert!(
        install.ends_with("[/ADDLOCAL] [WMI,BizTalk,AdditionalApps]"),
        "{install}"
    );

    f.set("exit.setup", "67");
    let o = f.run(ActionName::InstallSso, &ctx).await.0.unwrap();
    assert_eq!(o.exit_code, Some(67));
    assert_eq!(
        last_error(&o),
        format!(
            "the installer exited with code 67; its log is {}",
            log.display()
        )
    );
    // The log's tail comes with the failure, before the reason.
    let n = o.stderr_tail.len();
    assert!(n >= 2, "{o:?}");
    assert_eq!(
        o.stderr_tail[n - 2],
        "installer log: simulated installer log"
    );

    // An MSI goes through msiexec.
    f.set("exit.setup", "0");
    let ctx = f.ctx(&[("installer", "/media/HIS2020_Server_EN.msi")]);
    let o = f.run(ActionName::InstallSso, &ctx).await.0.unwrap();
    assert!(o.succeeded(), "{o:?}");
    let install = f
        .calls()
        .into_iter()
        .rev()
        .find(|c| c.starts_with("msiexec"))
        .unwrap();
    assert_eq!(
        install,
        format!(
            "msiexec [/i] [/media/HIS2020_Server_EN.msi] [/quiet] [/norestart] [/L*v] [{}]",
            log.display()
        )
    );
}

#[tokio::test]
async fn the_encryption_key_is_written_to_the_key_file_and_not_logged() {
    let f = Fake::new();
    let ctx = f.ctx(&[("backup_dir", f.path("backup").to_str().unwrap())]);
    let (result, reports) = f.run(ActionName::ExportEncryptionKey, &ctx).await;
    let o = result.unwrap();
    assert!(o.succeeded(), "{o:?}");
    let key_file = f.path("backup/ssofleet-hostseckey-dev-r1.bak");
    assert_eq!(out(&o, "key_file"), key_file.to_str().unwrap());
    let key = std::fs::read_to_string(&key_file).unwrap();
    assert_eq!(
        key,
        "SIMULATED-HOSTSEC-KEY 00112233445566778899AABBCCDDEEFF\r\n"
    );
    assert!(!format!("{reports:?}").contains("SIMULATED-HOSTSEC-KEY"));
    assert_eq!(f.calls(), ["udbkey [/showkey]"]);

    f.set("fail.udbkey", "");
    let o = f
        .run(ActionName::ExportEncryptionKey, &ctx)
        .await
        .0
        .unwrap();
    assert_eq!(
        last_error(&o),
        "udbkey /showkey printed nothing: there is no key to export"
    );
}

#[tokio::test]
async fn the_migration_utility_is_copied_from_the_media() {
    let f = Fake::new();
    f.set("media/support/utilities/hissomig.exe", "simulated hissomig");
    let installer = f.path("media/setup.exe");
    let o = f
        .run(
            ActionName::CopyMigrationUtility,
            &f.ctx(&[("installer", installer.to_str().unwrap())]),
        )
        .await
        .0
        .unwrap();
    assert!(o.succeeded(), "{o:?}");
    let copy = f.path("hostsec/hissomig.exe");
    assert_eq!(
        std::fs::read_to_string(&copy).unwrap(),
        "simulated hissomig"
    );
    assert_eq!(out(&o, "copied_to"), copy.to_str().unwrap());

    let o = f
        .run(
            ActionName::CopyMigrationUtility,
            &f.ctx(&[("installer", "/nowhere/setup.exe")]),
        )
        .await
        .0
        .unwrap();
    assert_eq!(
        last_error(&o),
        "the migration utility is not on the media: looked for /nowhere/support/utilities/hissomig.exe and /nowhere/support/utilities/hisssomig.exe"
    );
}

fn migration(f: &Fake) -> Context {
    f.set("service.SnaDatabase", "running");
    f.set("backup/ssofleet-hostseckey-dev-r1.bak", "KEY\r\n");
    f.ctx(&[
        ("backup_dir", f.path("backup").to_str().unwrap()),
        ("host_security_server", "PDC1"),
    ])
}

#[tokio::test]
async fn the_migration_stops_the_host_account_cache_for_the_export_only() {
    let f = Fake::new();
    let ctx = migration(&f);
    let o = f.run(ActionName::RunMigration, &ctx).await.0.unwrap();
    assert!(o.succeeded(), "{o:?}");
    let xml = f.path("hostsec/ssofleet-hostsecdb-dev-r1.xml");
    let key = f.path("backup/ssofleet-hostseckey-dev-r1.bak");
    let calls: Vec<String> = f
        .calls()
        .into_iter()
        .filter(|c| !c.starts_with("sc [query]"))
        .collect();
    assert_eq!(
        calls,
        [
            "sc [stop] [SnaDatabase]".to_string(),
            format!(
                "hissomig [-export] [-servername] [PDC1] [-output] [{}]",
                xml.display()
            ),
            "hac=stopped".to_string(),
            "sc [start] [SnaDatabase]".to_string(),
            format!(
                "hissomig [-import] [-key] [{}] [-input] [{}]",
                key.display(),
                xml.display()
            ),
        ]
    );
    assert!(!xml.exists(), "the exported security data must be deleted");
    assert_eq!(out(&o, "xml_deleted"), "true");
    assert_eq!(out(&o, "host_account_cache"), "running");
}

#[tokio::test]
async fn a_failed_import_still_deletes_the_exported_data() {
    let f = Fake::new();
    let ctx = migration(&f);
    f.set("fail.import", "");
    let o = f.run(ActionName::RunMigration, &ctx).await.0.unwrap();
    assert_eq!(o.exit_code, Some(1));
    assert_eq!(
        last_error(&o),
        "hissomig -import exited with code 5: the import failed: 0xC0002A14"
    );
    assert!(!f.path("hostsec/ssofleet-hostsecdb-dev-r1.xml").exists());
    assert_eq!(out(&o, "xml_deleted"), "true");
}

#[tokio::test]
async fn a_failed_export_still_restarts_the_host_account_cache() {
    let f = Fake::new();
    let ctx = migration(&f);
    f.set("fail.export", "");
    let o = f.run(ActionName::RunMigration, &ctx).await.0.unwrap();
    assert_eq!(
        last_error(&o),
        "hissomig -export exited with code 3: cannot read the host security database"
    );
    let calls = f.calls();
    let export = calls
        .iter()
        .position(|c| c.starts_with("hissomig [-export]"))
        .unwrap();
    assert!(
        calls[export..].contains(&"sc [start] [SnaDatabase]".to_string()),
        "{calls:?}"
    );
    assert!(!calls.iter().any(|c| c.starts_with("hissomig [-import]")));
    assert_eq!(
        std::fs::read_to_string(f.path("service.SnaDatabase"))
            .unwrap()
            .trim(),
        "running"
    );
    assert!(!f.path("hostsec/ssofleet-hostsecdb-dev-r1.xml").exists());
}

#[tokio::test]
async fn what_cannot_start_says_why() {
    let f = Fake::new();
    let err = f
        .run(ActionName::BackupSecurityData, &f.ctx(&[]))
        .await
        .0
        .unwrap_err();
    assert!(
        err.contains("configure [actions.backup_security_data]"),
        "{err}"
    );

    let err = f
        .run(ActionName::RunMigration, &f.ctx(&[]))
        .await
        .0
        .unwrap();
    assert!(
        last_error(&err).starts_with("run_migration needs host_security_server"),
        "{err:?}"
    );

    let (tx, _rx) = mpsc::channel(8);
    let err = builtin::run(ActionName::VerifySso, &Tools::default(), &f.ctx(&[]), tx)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        "the built-in verify_sso drives sc.exe, which this platform does not have: set [tools] sc in agent.toml or configure [actions.verify_sso]"
    );
    let (tx, _rx) = mpsc::channel(8);
    let err = builtin::run(ActionName::InstallSso, &f.tools, &f.ctx(&[]), tx)
        .await
        .unwrap_err();
    assert_eq!(err, "the coordinator sent no installer for install_sso");
}
