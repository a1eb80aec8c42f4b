//! Reading the server: `facts` (ENTSSO's state, ESSO's version, the products, whether this is the
//! master secret server, the preflight fitness checks) and `verify_sso` (ENTSSO running within its
//! start budget, the version, the SSO system as `ssomanage -displaydb` shows it, and ESSO's own events
//! since the install), the way an administrator would check them (ESSO.md, "Verifying").

use std::path::Path;
use std::time::{Duration, SystemTime};

use fleet_proto::names::same_server;

use super::commands;
use super::parse;
use super::session::{Echo, Fail, Session};
use super::system::ServiceState;
use super::tools::{ENTSSO_SERVICE, Tool, join};
use crate::esso::{self, EventVerdict};

/// ESSO's key. KB 2908466: its version is in the values `Server` and `Administration` under
/// `HKLM\SOFTWARE\Wow6432Node\Microsoft\ENTSSO`, the 32-bit view of this key (read first, then the
/// native view). Only the master secret server has the subkey `SSOSS` (event 10520's text).
pub(super) const ENTSSO_KEY: &str = r"HKLM\SOFTWARE\Microsoft\ENTSSO";
const VERSION_VALUES: [&str; 2] = ["Server", "Administration"];
/// Verified: BizTalk's docs say this key lists the version, install path and edition.
pub(super) const BIZTALK_KEY: &str = r"HKLM\SOFTWARE\Microsoft\BizTalk Server\3.0";
/// Its existence marks Host Integration Server (to confirm per HIS version).
pub(super) const HIS_KEY: &str = r"HKLM\SOFTWARE\Microsoft\Host Integration Server";
/// Where Windows records a pending restart (the three places Cluster-Aware Updating and the Windows
/// Update agent look at; to confirm on a real server that an ESSO install sets one of them).
const REBOOT_PENDING_KEYS: [(&str, &str); 2] = [
    (
        r"HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Component Based Servicing\RebootPending",
        "Component Based Servicing: RebootPending",
    ),
    (
        r"HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\WindowsUpdate\Auto Update\RebootRequired",
        "Windows Update: RebootRequired",
    ),
];
const SESSION_MANAGER_KEY: &str = r"HKLM\SYSTEM\CurrentControlSet\Control\Session Manager";
/// The Distributed Transaction Coordinator, which ESSO needs when SQL Server is remote (0x800706BA).
const MSDTC_SERVICE: &str = "MSDTC";
/// How many of ESSO's newest events verification reads.
const EVENTS_READ: u32 = 50;
/// Without the install's time, events of the last day are read.
const EVENTS_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// ESSO's version: `Server`, then `Administration`, in the 32-bit view, then the native one.
async fn esso_version(s: &mut Session<'_>) -> Result<Option<String>, Fail> {
    for name in VERSION_VALUES {
        if let Some(v) = s.reg_value_any_view(ENTSSO_KEY, name).await?
            && !v.trim().is_empty()
        {
            return Ok(Some(v.trim().to_string()));
        }
    }
    Ok(None)
}

/// The products present: `biztalk` (its key's `ProductVersion`), `his` (its key).
async fn products(s: &mut Session<'_>) -> Result<(Vec<String>, Option<String>), Fail> {
    let mut products = Vec::new();
    let biztalk = s.reg_value_any_view(BIZTALK_KEY, "ProductVersion").await?;
    if biztalk.is_some() {
        products.push("biztalk".to_string());
    }
    if s.reg_key_exists_any_view(HIS_KEY).await? {
        products.push("his".to_string());
    }
    Ok((products, biztalk))
}

pub(super) async fn master_secret_server(s: &mut Session<'_>) -> Result<bool, Fail> {
    s.reg_key_exists_any_view(&format!(r"{ENTSSO_KEY}\SSOSS"))
        .await
}

/// Whether ESSO is installed here, and the products, as the install needs them.
pub(super) async fn esso_present(s: &mut Session<'_>) -> Result<(bool, Vec<String>), Fail> {
    let version = esso_version(s).await?;
    let service = s.service(ENTSSO_SERVICE).await?;
    let (products, _) = products(s).await?;
    Ok((
        version.is_some() || service.state != ServiceState::NotInstalled,
        products,
    ))
}

pub(super) async fn facts(s: &mut Session<'_>) -> Result<(), Fail> {
    s.progress(10, "querying the ENTSSO service").await;
    let service = s.service(ENTSSO_SERVICE).await?;
    s.output("service", service.state.as_str()).await;
    s.progress(40, "reading the registry").await;
    let version = esso_version(s).await?;
    let version_known = version.is_some();
    s.output("version", version.unwrap_or_default()).await;
    let (products, biztalk_version) = products(s).await?;
    s.output("products", products.join(",")).await;
    let master = master_secret_server(s).await?;
    s.output("master_secret_server", master.to_string()).await;
    if let Some(v) = biztalk_version {
        s.output("biztalk_version", v).await;
    }
    s.progress(70, "checking the server's fitness").await;
    fitness(s, service.state).await?;
    if let Some(installer) = s.param("installer").map(str::to_string) {
        let esso_present = version_known || service.state != ServiceState::NotInstalled;
        let fits = match esso::installer_fits(&installer, &products, esso_present) {
            Ok(()) => format!("ok {installer} fits {}", products_text(&products)),
            Err(problem) => format!("failed: {problem}"),
        };
        s.output("check.products", fits).await;
    }
    identity_checks(s, service.state).await?;
    s.progress(100, "facts read").await;
    Ok(())
}

/// The preflight fitness checks this agent can read through the registry and the service controller
/// (SPEC §5; ESSO.md: MSDTC, ENTSSO healthy, no pending restart).
async fn fitness(s: &mut Session<'_>, entsso: ServiceState) -> Result<(), Fail> {
    let mut pending = Vec::new();
    for (key, what) in REBOOT_PENDING_KEYS {
        if s.reg_key_exists(super::system::RegView::Native, key)
            .await?
        {
            pending.push(what);
        }
    }
    if s.reg_value(
        super::system::RegView::Native,
        SESSION_MANAGER_KEY,
        "PendingFileRenameOperations",
    )
    .await?
    .is_some_and(|v| !v.trim().is_empty())
    {
        pending.push("Session Manager: PendingFileRenameOperations");
    }
    let reboot = if pending.is_empty() {
        "ok".to_string()
    } else {
        format!(
            "failed: a restart is pending ({}); restart the server before the upgrade",
            pending.join(", ")
        )
    };
    s.output("check.reboot_pending", reboot).await;
    let msdtc = s.service(MSDTC_SERVICE).await?;
    let msdtc = match msdtc.state {
        ServiceState::Running => "ok running".to_string(),
        ServiceState::NotInstalled => "failed: the Distributed Transaction Coordinator (MSDTC) is not installed; ESSO needs it when SQL Server is remote".to_string(),
        other => format!(
            "failed: MSDTC is {}; start the Distributed Transaction Coordinator (ESSO needs it when SQL Server is remote)",
            other.as_str()
        ),
    };
    s.output("check.msdtc", msdtc).await;
    let entsso = match entsso {
        ServiceState::Running => "ok running".to_string(),
        ServiceState::NotInstalled => "ok not installed (a fresh install)".to_string(),
        other => format!(
            "failed: ENTSSO is {}; start it and read its events before upgrading",
            other.as_str()
        ),
    };
    s.output("check.entsso", entsso).await;
    Ok(())
}

fn products_text(products: &[String]) -> String {
    if products.is_empty() {
        "(no product)".into()
    } else {
        products.join(",")
    }
}

/// How much room the master secret backup needs where it is written first (it is small; installers'
/// logs and ESSO's own files share the drive).
const MIN_FREE_BYTES: u64 = 100 * 1024 * 1024;

/// The checks that need the agent's own Windows identity or a drive (local administrator, SSO
/// administrator, free space where the backup is written first), from the PowerShell script the agent
/// ships. The SSO Administrators group is the one `ssomanage -displaydb` names, where ESSO runs.
/// Where this platform has no PowerShell (and `[tools]` names no stand-in) they are not reported.
async fn identity_checks(s: &mut Session<'_>, entsso: ServiceState) -> Result<(), Fail> {
    let Some(powershell) = s.tools.get(Tool::Powershell).map(Path::to_path_buf) else {
        return Ok(());
    };
    // The SSO Administrators group is the one the SSO system names; where ESSO does not run yet (a
    // fresh install) there is none to be in.
    let group = match (entsso, s.tools.get(Tool::Ssomanage).map(Path::to_path_buf)) {
        (ServiceState::Running, Some(ssomanage)) => {
            let ran = s
                .exec(
                    &commands::ssomanage_displaydb(&ssomanage),
                    None,
                    Echo::Quiet,
                )
                .await?;
            match parse::parse_displaydb(&ran.all_text()).map(|info| info.admin_account) {
                Ok(Some(group)) => Some(group),
                Ok(None) => {
                    s.output(
                        "check.sso_admin",
                        "failed: ssomanage -displaydb names no SSO Administrators account",
                    )
                    .await;
                    None
                }
                // Among the causes: the agent's account is not an SSO administrator.
                Err(e) => {
                    s.output(
                        "check.sso_admin",
                        format!("failed: ssomanage -displaydb: {e}"),
                    )
                    .await;
                    None
                }
            }
        }
        (ServiceState::NotInstalled, _) => {
            s.output(
                "check.sso_admin",
                "ok not applicable: ESSO is not installed here (a fresh install joins the SSO system)",
            )
            .await;
            None
        }
        // ENTSSO installed but not running fails `check.entsso`; this one cannot be told: not reported.
        _ => None,
    };
    let script = super::scripts::ship(&s.ctx.state_dir, super::scripts::FITNESS)?;
    let backup_folder = join(&s.ctx.state_dir, "secret-backups");
    let min_free = MIN_FREE_BYTES.to_string();
    let mut args = vec![
        ("-BackupFolder", backup_folder.display().to_string()),
        ("-MinFreeBytes", min_free),
    ];
    if let Some(group) = group {
        args.push(("-SsoAdminGroup", group));
    }
    let args: Vec<(&str, &str)> = args.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let ran = s
        .exec(
            &commands::powershell_script(&powershell, &script, &args),
            None,
            Echo::Quiet,
        )
        .await?;
    let mut reported = 0;
    for line in &ran.stdout {
        if let Some((key, value)) = line
            .strip_prefix("::output:: ")
            .and_then(|kv| kv.split_once('='))
            .filter(|(key, _)| key.starts_with("check."))
        {
            s.output(key, value.to_string()).await;
            reported += 1;
        }
    }
    if !ran.ok() || reported == 0 {
        let why = if ran.ok() {
            format!("{} ran but reported no check", powershell.display())
        } else {
            format!(
                "exit code {}: {}",
                commands::code_text(ran.exit_code),
                ran.stderr.last().map(String::as_str).unwrap_or("")
            )
        };
        s.output(
            "check.fitness_script",
            format!("failed: the fitness script could not run ({why})"),
        )
        .await;
    }
    Ok(())
}

/// Reads what verification judges (`esso::verify_problem`, in the executor, for built-in and
/// configured verify commands alike): ENTSSO's state once it had its start budget, the version, the
/// SSO system as `ssomanage -displaydb` shows it. ESSO's events are judged here, by `esso::event_verdict`.
pub(super) async fn verify(s: &mut Session<'_>) -> Result<(), Fail> {
    let master = s.require_param("master")?;
    s.progress(10, "querying the ENTSSO service").await;
    let service = wait_for_entsso(s).await?;
    s.output("service", service.as_str()).await;
    if service != ServiceState::Running {
        // Nothing more can be read from a stopped ESSO; the judgement says it is not running.
        return Ok(());
    }
    s.progress(40, "reading the ESSO version").await;
    let version = esso_version(s).await?.unwrap_or_default();
    s.output("version", version).await;
    let is_master = master_secret_server(s).await?;
    s.output("master_secret_server", is_master.to_string())
        .await;
    s.progress(60, "reading the SSO system (ssomanage -displaydb)")
        .await;
    let ssomanage = s.tool(Tool::Ssomanage)?;
    let ran = s
        .exec(
            &commands::ssomanage_displaydb(&ssomanage),
            None,
            Echo::Forward,
        )
        .await?;
    let info = parse::parse_displaydb(&ran.all_text())
        .map_err(|e| Fail::new(format!("ssomanage -displaydb: {e}")))?;
    s.output("secret_server", info.secret_server.clone()).await;
    if let Some(v) = &info.sql_server {
        s.output("sql_server", v.clone()).await;
    }
    if let Some(v) = &info.database {
        s.output("sso_database", v.clone()).await;
    }
    let enabled = match info.enabled {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    };
    s.output("sso_enabled", enabled).await;
    s.progress(80, "reading ESSO's events").await;
    let node = s.param("node").unwrap_or_default().to_string();
    events(s, same_server(&node, &master)).await?;
    s.progress(100, "ESSO read").await;
    Ok(())
}

/// ENTSSO's state once it has had its start budget: right after an install or a reboot it may still be
/// STOPPED (Automatic, Delayed Start) or START_PENDING, and it can take minutes to start (ESSO.md).
async fn wait_for_entsso(s: &mut Session<'_>) -> Result<ServiceState, Fail> {
    let status = s.service(ENTSSO_SERVICE).await?;
    if !matches!(
        status.state,
        ServiceState::Stopped | ServiceState::StartPending
    ) {
        return Ok(status.state);
    }
    let budget = s.ctx.entsso_start_budget;
    s.progress(
        20,
        format!(
            "ENTSSO is {}: waiting up to {} for it to start",
            status.state.as_str(),
            humantime::format_duration(budget)
        ),
    )
    .await;
    let status = s
        .wait_for(ENTSSO_SERVICE, ServiceState::Running, budget)
        .await?;
    Ok(status.state)
}

/// ESSO's events since the install (or the last day): the newest one with a verdict decides. A bad
/// one fails with its meaning; no healthy one (10534 on the master, 10529 on a member) is reported
/// but does not fail: when ESSO writes them after an upgrade is to confirm on a real server.
async fn events(s: &mut Session<'_>, on_master: bool) -> Result<(), Fail> {
    let since = s
        .param("installed_at_unix_ms")
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
        .unwrap_or_else(|| SystemTime::now() - EVENTS_WINDOW);
    let since = humantime::format_rfc3339_millis(since).to_string();
    let wevtutil = s.tool(Tool::Wevtutil)?;
    let ran = s
        .exec(
            &commands::wevtutil_esso_events(&wevtutil, &since, EVENTS_READ),
            None,
            Echo::Quiet,
        )
        .await?;
    if !ran.ok() {
        return Err(Fail::new(format!(
            "wevtutil could not read ESSO's events (exit code {}): {}",
            commands::code_text(ran.exit_code),
            ran.stderr.last().map(String::as_str).unwrap_or("")
        )));
    }
    let events = parse::parse_events(&ran.stdout_text());
    s.output("esso_events", events.len().to_string()).await;
    let newest = events
        .iter()
        .find_map(|e| esso::event_verdict(e.id).map(|v| (e, v)));
    match newest {
        Some((event, EventVerdict::Bad(meaning))) => Err(Fail::new(format!(
            "ESSO logged event {} at {}: {meaning}",
            event.id, event.time
        ))),
        Some((event, healthy)) => {
            s.output(
                "esso_health_event",
                format!("{} at {}", event.id, event.time),
            )
            .await;
            let expected = if on_master {
                EventVerdict::MasterHealthy
            } else {
                EventVerdict::MemberHealthy
            };
            if healthy != expected {
                s.note(
                    format!(
                        "ESSO's newest health event is {}, not the one of its role",
                        event.id
                    ),
                    false,
                )
                .await;
            }
            Ok(())
        }
        None => {
            let want = if on_master { 10534 } else { 10529 };
            s.note(
                format!("ESSO logged no health event ({want}) since {since}; its service runs"),
                false,
            )
            .await;
            Ok(())
        }
    }
}
