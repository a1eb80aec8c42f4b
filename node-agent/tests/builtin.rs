//! The built-in Windows actions against fixture scripts standing in for the Windows tools
//! (`tests/fixtures/windows/`; `sc` and `reg` stand in for the service controller's and the registry's
//! APIs, which the Windows agent calls itself): the command lines they run, what goes to standard
//! input, the outputs and the failure messages.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_agent::builtin::{self, Context, Tools};
use fleet_agent::catalogue::ActionName;
use fleet_agent::config::SsoSettings;
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
            "powershell",
            "wevtutil",
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
            powershell: Some(bin.join("powershell")),
            wevtutil: Some(bin.join("wevtutil")),
            ssomanage: Some(bin.join("ssomanage")),
            biztalk_configuration: Some(wrap("Configuration.exe", "configuration")),
            esso_dir: Some(dir.path().join("esso")),
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

    /// A server with BizTalk and ESSO 3.0.7.0 in the 32-bit view (KB 2908466's `Server` value), the
    /// master secret server (`ENTSSO\SSOSS`), ENTSSO and MSDTC running.
    fn biztalk_master(self) -> Self {
        self.set("service.ENTSSO", "running");
        self.set("service.MSDTC", "running");
        self.set(
            "reg/32/HKLM_SOFTWARE_Microsoft_ENTSSO",
            &Self::sample("reg-query-entsso-key.txt"),
        );
        self.set(
            "reg/32/HKLM_SOFTWARE_Microsoft_ENTSSO_SSOSS",
            "\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\WOW6432Node\\Microsoft\\ENTSSO\\SSOSS\r\n",
        );
        self.set(
            "reg/32/HKLM_SOFTWARE_Microsoft_BizTalk_Server_3.0",
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

    /// The calls of one tool.
    fn calls_of(&self, tool: &str) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.starts_with(&format!("{tool} ")))
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
        self.set("entsso-password", "svc-pw-1\r\n");
        Context {
            params: map,
            stdin_secret: None,
            timeout: Duration::from_secs(30),
            state_dir: self.path("state"),
            entsso_start_budget: Duration::from_secs(8),
            sso: SsoSettings {
                service_account: Some(r"CORP\svc-entsso".into()),
                service_password_file: Some(self.path("entsso-password")),
                database_server: Some("sqldev01".into()),
                database: "SSODB".into(),
                admin_group: "SSO Administrators".into(),
                affiliate_admin_group: "SSO Affiliate Administrators".into(),
            },
            configure_overridden: false,
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

/// What verification judges of a verify action's outputs (the executor's judgement, for built-in and
/// configured verify commands alike); empty when verified.
fn judged(o: &Outcome, ctx: &Context) -> String {
    fleet_agent::esso::verify_problem(&o.outputs, &ctx.params).unwrap_or_default()
}

fn last_error(o: &Outcome) -> &str {
    o.stderr_tail.last().map(String::as_str).unwrap_or("<none>")
}

#[tokio::test]
async fn facts_read_the_service_the_registry_the_products_and_the_fitness() {
    let f = Fake::new().biztalk_master();
    let (result, reports) = f.run(ActionName::Facts, &f.ctx(&[])).await;
    let o = result.unwrap();
    assert!(o.succeeded(), "{o:?}");
    assert_eq!(out(&o, "service"), "running");
    // KB 2908466: `Server` under the 32-bit view.
    assert_eq!(out(&o, "version"), "3.0.7.0");
    assert_eq!(out(&o, "products"), "biztalk");
    assert_eq!(out(&o, "biztalk_version"), "3.13.717.0");
    assert_eq!(out(&o, "master_secret_server"), "true");
    assert_eq!(out(&o, "check.msdtc"), "ok running");
    assert_eq!(out(&o, "check.reboot_pending"), "ok");
    assert_eq!(out(&o, "check.entsso"), "ok running");
    // The identity checks come from the agent's fitness script; the SSO Administrators group is the
    // one ssomanage -displaydb names.
    assert_eq!(
        out(&o, "check.local_admin"),
        "ok simulated (SSO Administrators)"
    );
    assert_eq!(
        out(&o, "check.sso_admin"),
        "ok simulated (SSO Administrators)"
    );
    assert_eq!(
        out(&o, "check.backup_space"),
        "ok simulated (SSO Administrators)"
    );
    let fitness = f.calls_of("powershell");
    assert!(
        fitness[0].contains("fitness.ps1] [-BackupFolder]")
            && fitness[0].ends_with("[-SsoAdminGroup] [SSO Administrators]"),
        "{fitness:?}"
    );
    let reg = f.calls_of("reg");
    assert_eq!(
        reg[0],
        r"reg [query] [HKLM\SOFTWARE\Microsoft\ENTSSO] [/v] [Server] [/reg:32]"
    );
    assert!(reg.contains(
        &r"reg [query] [HKLM\SOFTWARE\Microsoft\BizTalk Server\3.0] [/v] [ProductVersion] [/reg:32]".to_string()
    ));
    // The registry reads are the agent's own queries: none of them is a log line or a failure's tail.
    let shown = format!("{reports:?}");
    assert!(
        !shown.contains("reg [query]") && !shown.contains("unable to find"),
        "{shown}"
    );
    assert!(
        reports
            .iter()
            .any(|r| matches!(r, Report::Progress { percent: 100, .. }))
    );
    let facts = fleet_agent::facts::from_outputs(&o.outputs);
    assert_eq!(facts.esso_version.as_deref(), Some("3.0.7.0"));
    assert_eq!(facts.products, ["biztalk"]);
    assert!(facts.master_secret_server);
    assert_eq!(facts.checks.len(), 6);
    assert!(facts.checks.iter().all(|c| c.passed), "{:?}", facts.checks);

    // A pending restart and a stopped MSDTC fail their checks, with what to do.
    f.set(
        r"reg/native/HKLM_SOFTWARE_Microsoft_Windows_CurrentVersion_WindowsUpdate_Auto_Update_RebootRequired",
        "\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\WindowsUpdate\\Auto Update\\RebootRequired\r\n",
    );
    f.set("service.MSDTC", "stopped");
    f.set(
        "fitness.sso_admin",
        "CORP\\svc is not in SSO Administrators; add it",
    );
    // With the installer preflight reads: BizTalk's setup fits a BizTalk server; HIS's package too.
    let o = f
        .run(
            ActionName::Facts,
            &f.ctx(&[("installer", r"D:\m\BizTalk\Setup.exe")]),
        )
        .await
        .0
        .unwrap();
    assert_eq!(
        out(&o, "check.sso_admin"),
        "failed: CORP\\svc is not in SSO Administrators; add it"
    );
    assert!(out(&o, "check.products").starts_with("ok "), "{o:?}");
    assert_eq!(
        out(&o, "check.reboot_pending"),
        "failed: a restart is pending (Windows Update: RebootRequired); restart the server before the upgrade"
    );
    assert!(
        out(&o, "check.msdtc").starts_with("failed: MSDTC is stopped"),
        "{o:?}"
    );
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
    assert_eq!(
        out(&o, "check.entsso"),
        "ok not installed (a fresh install)"
    );
    assert!(
        out(&o, "check.sso_admin").starts_with("ok not applicable"),
        "{o:?}"
    );
}

/// Where ENTSSO runs but the SSO system cannot be read (the agent's account is not an SSO
/// administrator, among other causes), the SSO administrator check fails: it is never "ok" unchecked.
#[tokio::test]
async fn an_unreadable_sso_system_fails_the_sso_admin_check() {
    let f = Fake::new().biztalk_master();
    f.set("fail.ssomanage", "");
    let o = f.run(ActionName::Facts, &f.ctx(&[])).await.0.unwrap();
    assert!(
        out(&o, "check.sso_admin").starts_with("failed: ssomanage -displaydb: 0xC0002A0F"),
        "{o:?}"
    );
    // A fitness script that cannot run is its own failed check, not another check's.
    std::fs::remove_file(f.path("fail.ssomanage")).unwrap();
    std::fs::write(f.path("bin/powershell"), "#!/bin/sh\nexit 0\n").unwrap();
    let o = f.run(ActionName::Facts, &f.ctx(&[])).await.0.unwrap();
    assert!(
        out(&o, "check.fitness_script").starts_with("failed: the fitness script could not run"),
        "{o:?}"
    );
    assert_eq!(out(&o, "check.local_admin"), "<none>");
}

/// A standalone master secret server (ESSO without BizTalk) cannot be upgraded by BizTalk's setup.
#[tokio::test]
async fn the_products_must_fit_the_installer() {
    let f = Fake::new().biztalk_master();
    std::fs::remove_file(f.path("reg/32/HKLM_SOFTWARE_Microsoft_BizTalk_Server_3.0")).unwrap();
    let ctx = f.ctx(&[("installer", r"D:\m\BizTalk\Setup.exe")]);
    let o = f.run(ActionName::Facts, &ctx).await.0.unwrap();
    assert!(
        out(&o, "check.products")
            .starts_with("failed: ESSO is installed without BizTalk Server here"),
        "{o:?}"
    );
    let ctx = f.ctx(&[("installer", r"D:\m\Platform\SSO\Setup.exe")]);
    let o = f.run(ActionName::Facts, &ctx).await.0.unwrap();
    assert!(out(&o, "check.products").starts_with("ok "), "{o:?}");
}

#[tokio::test]
async fn the_native_view_and_the_administration_value_are_read_when_the_32_bit_server_is_not_there()
{
    let f = Fake::new();
    f.set("service.ENTSSO", "running");
    f.set(
        "reg/native/HKLM_SOFTWARE_Microsoft_ENTSSO",
        "\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\ENTSSO\r\n    Administration    REG_SZ    9.0.1865.0\r\n",
    );
    let o = f.run(ActionName::Facts, &f.ctx(&[])).await.0.unwrap();
    assert_eq!(out(&o, "version"), "9.0.1865.0");
    assert_eq!(out(&o, "master_secret_server"), "false");
}

#[tokio::test]
async fn verify_checks_service_version_master_status_and_events() {
    let f = Fake::new().biztalk_master();
    // 3.0.7.0 is 3.0.7.
    let ok = f.ctx(&[("target_version", "3.0.7")]);
    let (result, _) = f.run(ActionName::VerifySso, &ok).await;
    let o = result.unwrap();
    assert!(o.succeeded(), "{o:?}");
    assert_eq!(out(&o, "secret_server"), "SSO-DEV-01");
    assert_eq!(out(&o, "sso_enabled"), "yes");
    assert_eq!(out(&o, "sql_server"), "dsiteamsrv");
    assert!(f.calls().contains(&"ssomanage [-displaydb]".to_string()));
    assert_eq!(f.calls_of("wevtutil").len(), 1);

    assert_eq!(judged(&o, &ok), "");
    let ctx = f.ctx(&[("target_version", "3.0.8")]);
    let o = f.run(ActionName::VerifySso, &ctx).await.0.unwrap();
    assert_eq!(
        judged(&o, &ctx),
        "ESSO reports version 3.0.7.0, expected 3.0.8"
    );
    // A server newer than the target passes only where the coordinator says so.
    let ctx = f.ctx(&[("target_version", "3.0.6")]);
    let o = f.run(ActionName::VerifySso, &ctx).await.0.unwrap();
    assert_eq!(
        judged(&o, &ctx),
        "ESSO reports version 3.0.7.0, newer than the target 3.0.6"
    );
    let ctx = f.ctx(&[("target_version", "3.0.6"), ("newer_ok", "true")]);
    let o = f.run(ActionName::VerifySso, &ctx).await.0.unwrap();
    assert!(o.succeeded(), "{o:?}");
    assert_eq!(judged(&o, &ctx), "");

    // ESSO's own events: the newest with a verdict decides.
    f.set("events.xml", &Fake::sample("wevtutil-entsso-events.xml"));
    let o = f.run(ActionName::VerifySso, &ok).await.0.unwrap();
    assert!(
        last_error(&o).starts_with(
            "ESSO logged event 10536 at 2026-11-29T07:12:03.4567890Z: ESSO cannot decrypt"
        ),
        "{o:?}"
    );
    f.set(
        "events.xml",
        &Fake::sample("wevtutil-entsso-events.xml")
            .lines()
            .skip(1)
            .collect::<String>(),
    );
    let o = f.run(ActionName::VerifySso, &ok).await.0.unwrap();
    assert!(o.succeeded(), "{o:?}");
    assert_eq!(
        out(&o, "esso_health_event"),
        "10534 at 2026-11-29T07:10:41.1234560Z",
        "{o:?}"
    );

    f.set("secret_server", "SSO-DEV-02");
    let o = f.run(ActionName::VerifySso, &ok).await.0.unwrap();
    assert_eq!(
        judged(&o, &ok),
        "the SSO database names SSO-DEV-02 as the master secret server, but the inventory's master is sso-dev-01.corp.example"
    );

    f.set("secret_server", "sso-dev-01");
    f.set("sso_enabled", "No");
    let o = f.run(ActionName::VerifySso, &ok).await.0.unwrap();
    assert_eq!(
        judged(&o, &ok),
        "SSO is not enabled (ssomanage -displaydb: no)"
    );

    f.set("sso_enabled", "Yes");
    f.set("fail.ssomanage", "");
    let o = f.run(ActionName::VerifySso, &ok).await.0.unwrap();
    assert!(
        last_error(&o)
            .starts_with("ssomanage -displaydb: 0xC0002A0F: could not contact the SSO server"),
        "{o:?}"
    );
}

/// A failure's message comes from the call that failed: a warning an earlier tool wrote to standard
/// error (and succeeded) does not end the message of a later tool's timeout.
#[tokio::test]
async fn a_timeout_is_not_explained_by_an_earlier_tools_warning() {
    let f = Fake::new().biztalk_master();
    f.set(
        "stderr.ssomanage",
        "warning: the SSO cache is being refreshed\n",
    );
    f.set("hang.wevtutil", "");
    let mut ctx = f.ctx(&[("target_version", "3.0.7")]);
    ctx.timeout = Duration::from_secs(3);
    let o = f.run(ActionName::VerifySso, &ctx).await.0.unwrap();
    assert!(o.timed_out, "{o:?}");
    assert_eq!(f.calls_of("ssomanage"), ["ssomanage [-displaydb]"]);
    let message = o.failure("verify_sso");
    assert_eq!(
        message,
        "verify_sso did not finish within 3s; it was stopped"
    );
}

#[tokio::test]
async fn verify_waits_for_entsso_within_its_start_budget() {
    let f = Fake::new().biztalk_master();
    f.set("service.ENTSSO", "start-pending");
    let o = f.run(ActionName::VerifySso, &f.ctx(&[])).await.0.unwrap();
    assert!(o.succeeded(), "{o:?}");
    assert_eq!(out(&o, "service"), "running");

    // Automatic (Delayed Start) after an install: STOPPED at first, then it starts.
    f.set("service.ENTSSO", "delayed");
    let o = f.run(ActionName::VerifySso, &f.ctx(&[])).await.0.unwrap();
    assert!(o.succeeded(), "{o:?}");

    // Still stopped when the budget is spent.
    f.set("service.ENTSSO", "stopped");
    let mut ctx = f.ctx(&[]);
    ctx.entsso_start_budget = Duration::from_secs(3);
    let o = f.run(ActionName::VerifySso, &ctx).await.0.unwrap();
    assert_eq!(
        last_error(&o),
        "the ENTSSO service is stopped after 3s, not running"
    );
}

#[tokio::test]
async fn the_backup_goes_through_issoconfigss_with_the_password_only_on_standard_input() {
    let f = Fake::new().biztalk_master();
    let file = f.path("backup/secret.bak");
    let mut ctx = f.ctx(&[
        ("backup_file", file.to_str().unwrap()),
        (
            "backup_reminder",
            "ssofleet backup dev sso-dev-01 2026-11-29",
        ),
    ]);
    ctx.stdin_secret = Some(PASSWORD.into());
    let (result, reports) = f.run(ActionName::BackupSecret, &ctx).await;
    let o = result.unwrap();
    assert!(o.succeeded(), "{o:?}");
    assert_eq!(out(&o, "backup_file"), file.to_str().unwrap());
    let (size, sha256) = fleet_agent::hashing::sha256_file(&file).await.unwrap();
    assert_eq!(out(&o, "backup_size"), size.to_string());
    assert_eq!(out(&o, "backup_sha256"), sha256);
    assert_eq!(
        out(&o, "backup_reminder"),
        "ssofleet backup dev sso-dev-01 2026-11-29"
    );
    // Written locally by ESSO, then copied; the local file is gone once the copy is verified.
    let local = f.path("state/secret-backups/secret.bak");
    let script = f.path("state/scripts/backup-secret.ps1");
    assert_eq!(
        f.calls_of("powershell"),
        [format!(
            "powershell [-NoProfile] [-NonInteractive] [-ExecutionPolicy] [Bypass] [-File] [{}] [-BackupFile] [{}] [-InteropDll] [{}]",
            script.display(),
            local.display(),
            f.path("esso/Microsoft.EnterpriseSingleSignOn.Interop.dll")
                .display()
        )]
    );
    assert!(!local.exists());
    let stdin = std::fs::read_to_string(f.path("stdin.powershell")).unwrap();
    assert_eq!(
        stdin,
        format!("{PASSWORD}\nssofleet backup dev sso-dev-01 2026-11-29\n")
    );
    let shown = format!("{reports:?}{o:?}");
    assert!(!shown.contains(PASSWORD), "the password leaked: {shown}");

    f.set("fail.powershell", "");
    let o = f.run(ActionName::BackupSecret, &ctx).await.0.unwrap();
    assert_eq!(
        last_error(&o),
        "ISSOConfigSS.BackupSecret: 0xC0002A0E: this must be run on the master secret server, and this server is not it"
    );

    ctx.stdin_secret = Some("pw-6ch".into());
    let o = f.run(ActionName::BackupSecret, &ctx).await.0.unwrap();
    assert_eq!(
        last_error(&o),
        "the backup password is shorter than the 7 characters ESSO requires (0xC0002A54)"
    );
}

#[tokio::test]
async fn a_biztalk_upgrade_is_never_run_silently() {
    let f = Fake::new().biztalk_master();
    let setup = f.path("bin/Setup.exe");
    let o = f
        .run(
            ActionName::InstallSso,
            &f.ctx(&[("installer", setup.to_str().unwrap())]),
        )
        .await
        .0
        .unwrap();
    assert_eq!(o.exit_code, Some(1));
    assert!(
        last_error(&o).contains("\"The Quiet flag cannot be specified for an upgrade\""),
        "{o:?}"
    );
    assert_eq!(out(&o, "install_kind"), "upgrade");
    assert!(f.calls_of("setup").is_empty(), "setup ran: {:?}", f.calls());
}

#[tokio::test]
async fn a_fresh_install_is_silent_and_asks_for_configuration() {
    let f = Fake::new();
    let setup = f.path("bin/Setup.exe");
    let ctx = f.ctx(&[("installer", setup.to_str().unwrap())]);
    let log = f.path("state/logs/install-r1-sso-dev-01.log");

    // What the configuration after it needs is there before anything is installed.
    let mut unready = ctx.clone();
    unready.sso.database_server = None;
    let o = f.run(ActionName::InstallSso, &unready).await.0.unwrap();
    assert!(
        last_error(&o).contains("[sso] in agent.toml lacks database_server"),
        "{o:?}"
    );
    assert!(f.calls_of("setup").is_empty());

    let o = f.run(ActionName::InstallSso, &ctx).await.0.unwrap();
    assert_eq!(o.exit_code, Some(0), "{o:?}");
    assert_eq!(out(&o, "install_kind"), "fresh");
    assert_eq!(out(&o, "esso_feature"), "SSOServer");
    assert_eq!(out(&o, "configure_needed"), "true");
    assert_eq!(
        f.calls_of("setup"),
        [format!(
            "setup [/quiet] [/norestart] [/L] [{}] [/ADDLOCAL] [WMI,BizTalk,AdditionalApps,SSOServer]",
            log.display()
        )]
    );
    assert!(log.is_file());

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
}

/// Seed 000: Host Integration Server installed where BizTalk Server is does not select ESSO; HIS 2020's
/// in-place upgrade is documented as silent (`msiexec /i … /quiet`), then configured.
#[tokio::test]
async fn his_where_biztalk_is_does_not_select_esso_and_upgrades_silently() {
    let f = Fake::new().biztalk_master();
    let mut ctx = f.ctx(&[("installer", "/media/HIS2020_Server_EN.msi")]);
    // Without a command of the agent's own to apply HIS's configuration, nothing is installed.
    let o = f.run(ActionName::InstallSso, &ctx).await.0.unwrap();
    assert_eq!(last_error(&o), fleet_proto::install::NO_HIS_CONFIGURATION);
    assert!(f.calls_of("msiexec").is_empty());
    ctx.configure_overridden = true;
    let log = f.path("state/logs/install-r1-sso-dev-01.log");
    let o = f.run(ActionName::InstallSso, &ctx).await.0.unwrap();
    assert!(o.succeeded(), "{o:?}");
    assert_eq!(out(&o, "esso_feature"), "none");
    assert_eq!(out(&o, "configure_needed"), "true");
    assert_eq!(
        f.calls_of("msiexec"),
        [format!(
            "msiexec [/i] [/media/HIS2020_Server_EN.msi] [/quiet] [/norestart] [/L*v] [{}]",
            log.display()
        )]
    );
}

#[tokio::test]
async fn configuration_answers_join_or_create_and_deletes_its_file() {
    let f = Fake::new();
    let setup = f.path("bin/Setup.exe");
    let ctx = f.ctx(&[
        ("installer", setup.to_str().unwrap()),
        ("sso_configure", "join"),
    ]);
    let (result, reports) = f.run(ActionName::ConfigureSso, &ctx).await;
    let o = result.unwrap();
    assert!(o.succeeded(), "{o:?}");
    let file = f.path("state/secret-files/configure-r1-sso-dev-01.xml");
    let log = f.path("state/logs/install-r1-sso-dev-01.configure.log");
    assert_eq!(
        f.calls_of("configuration"),
        [format!(
            "configuration [/S] [{}] [/L] [{}]",
            file.display(),
            log.display()
        )]
    );
    assert!(!file.exists(), "the file with the password must be deleted");
    let given = std::fs::read_to_string(f.path("configured.xml")).unwrap();
    assert!(
        given.contains("<Answer Value=\"Join\" Selected=\"Yes\" />"),
        "{given}"
    );
    assert!(given.contains("<Password>svc-pw-1</Password>"), "{given}");
    assert!(given.contains("<Server>sqldev01</Server>"), "{given}");
    assert!(!format!("{reports:?}{o:?}").contains("svc-pw-1"));

    // Create (the migrate workflow's first master) backs up the new secret with the backup password,
    // and the backup lands in the backup directory like backup_secret's.
    let backups = f.path("backups");
    let mut ctx = f.ctx(&[
        ("installer", setup.to_str().unwrap()),
        ("sso_configure", "create"),
        ("backup_dir", backups.to_str().unwrap()),
    ]);
    let o = f.run(ActionName::ConfigureSso, &ctx).await.0.unwrap();
    assert!(last_error(&o).contains("backup_password_file"), "{o:?}");
    ctx.stdin_secret = Some(PASSWORD.into());
    f.set("configuration.writes-backup", "");
    let o = f.run(ActionName::ConfigureSso, &ctx).await.0.unwrap();
    assert!(o.succeeded(), "{o:?}");
    let given = std::fs::read_to_string(f.path("configured.xml")).unwrap();
    assert!(
        given.contains("<Answer Value=\"Create\" Selected=\"Yes\">"),
        "{given}"
    );
    assert!(
        given.contains(&format!("<Value>{PASSWORD}</Value>")),
        "{given}"
    );
    let copy = PathBuf::from(out(&o, "backup_file"));
    assert!(copy.starts_with(&backups) && copy.is_file(), "{o:?}");
    assert!(out(&o, "backup_reminder").starts_with("ssofleet backup dev sso-dev-01 "));
    assert!(
        std::fs::read_dir(f.path("state/secret-backups"))
            .unwrap()
            .next()
            .is_none()
    );

    // A failed configuration still deletes the file, and names its log.
    f.set("exit.configuration", "5");
    let o = f.run(ActionName::ConfigureSso, &ctx).await.0.unwrap();
    assert!(!file.exists());
    assert!(
        last_error(&o).contains("exited with code 5; its log is"),
        "{o:?}"
    );

    // Host Integration Server's configuration file has no documented layout: the built-in says so.
    let ctx = f.ctx(&[("installer", "/media/HIS2020_Server_EN.msi")]);
    let o = f.run(ActionName::ConfigureSso, &ctx).await.0.unwrap();
    assert!(
        last_error(&o)
            .starts_with("the built-in configure_sso cannot configure Host Integration Server"),
        "{o:?}"
    );
}

#[tokio::test]
async fn a_crashed_agents_secret_files_are_deleted_at_the_next_start() {
    let f = Fake::new();
    f.set(
        "state/secret-files/configure-r1-n.xml",
        "<Password>x</Password>",
    );
    let removed = builtin::remove_leftover_secret_files(&f.path("state"));
    assert_eq!(removed, [f.path("state/secret-files/configure-r1-n.xml")]);
    assert!(builtin::remove_leftover_secret_files(&f.path("state")).is_empty());
}

#[tokio::test]
async fn the_encryption_key_is_written_to_the_key_file_and_not_logged() {
    let f = Fake::new();
    let ctx = f.ctx(&[
        ("backup_dir", f.path("backup").to_str().unwrap()),
        ("migration_source", "his2000"),
    ]);
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

/// SNA Server 4.0 has no encryption key (ESSO.md, migration step 2): nothing exports one, and the
/// import runs without `-key`. The export and the import may be two steps, the operator's review
/// between them; the export is kept for the import.
#[tokio::test]
async fn an_sna_migration_has_no_key_and_runs_in_two_phases() {
    let f = Fake::new();
    f.set("service.SnaDatabase", "running");
    let params = [
        ("backup_dir", f.path("backup").to_str().unwrap().to_string()),
        ("migration_source", "sna4".to_string()),
        (
            "host_security_dbfile",
            r"Y:\SNA\hostsec\dbfile.dbs".to_string(),
        ),
    ];
    let with = |extra: &[(&str, &str)]| {
        let mut all: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend_from_slice(extra);
        f.ctx(&all)
    };
    let o = f
        .run(ActionName::ExportEncryptionKey, &with(&[]))
        .await
        .0
        .unwrap();
    assert!(
        last_error(&o).starts_with("SNA Server 4.0 has no encryption key"),
        "{o:?}"
    );
    assert!(f.calls_of("udbkey").is_empty());

    let xml = f.path("hostsec/ssofleet-hostsecdb-dev-r1.xml");
    let o = f
        .run(
            ActionName::RunMigration,
            &with(&[("migration_phase", "export")]),
        )
        .await
        .0
        .unwrap();
    assert!(o.succeeded(), "{o:?}");
    assert!(xml.is_file(), "kept for the review and the import");
    assert!(out(&o, "exported_size").parse::<u64>().unwrap() > 0);
    assert!(f.calls_of("hissomig [-import]").is_empty());
    let o = f
        .run(
            ActionName::RunMigration,
            &with(&[("migration_phase", "import")]),
        )
        .await
        .0
        .unwrap();
    assert!(o.succeeded(), "{o:?}");
    assert_eq!(
        f.calls_of("hissomig"),
        [
            format!(
                r"hissomig [-export] [-dbfile] [Y:\SNA\hostsec\dbfile.dbs] [-output] [{}]",
                xml.display()
            ),
            format!("hissomig [-import] [-input] [{}]", xml.display()),
        ]
    );
    assert!(!xml.exists());
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
    assert_eq!(
        last_error(&err),
        "run_migration: migration_source None is not his2000 or sna4 ([environment.migration] source in fleet.toml)"
    );

    let (tx, _rx) = mpsc::channel(8);
    let err = builtin::run(ActionName::VerifySso, &Tools::default(), &f.ctx(&[]), tx)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        "the built-in verify_sso drives ssomanage.exe, which this platform does not have: set [tools] ssomanage in agent.toml or configure [actions.verify_sso]"
    );
    let (tx, _rx) = mpsc::channel(8);
    let err = builtin::run(ActionName::InstallSso, &f.tools, &f.ctx(&[]), tx)
        .await
        .unwrap_err();
    assert_eq!(err, "the coordinator sent no installer for install_sso");
}
