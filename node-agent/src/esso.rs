//! ESSO's rules as Microsoft documents them (`../shared/ESSO.md`), pure and in one place: which
//! installs may be silent, which ESSO feature an install selects, what an installer's exit code
//! means, what a verification must find, what ESSO's events say, how a backup is named and what a
//! backup password must be. The built-in actions and the executor both ask here; nothing else decides.

use std::collections::BTreeMap;
use std::time::SystemTime;

use fleet_proto::names::same_server;
use fleet_proto::version::{Standing, Version};

// ---------------------------------------------------------------------------------------------------
// Installing

/// Which installs may be silent is one rule shared with the planner.
pub use fleet_proto::install::{InstallerKind, Overrides};

/// The ESSO server feature to select, or none (seed 000, ESSO.md "BizTalk and HIS on one machine"):
/// installing Host Integration Server where BizTalk Server is already installed must not select the
/// ESSO feature (BizTalk's ESSO is there); installing BizTalk on a machine with Host Integration
/// Server's ESSO follows the same upgrade procedure, ESSO selected. `products` are the facts'
/// `products=` values.
pub fn esso_feature(installing: InstallerKind, products: &[String]) -> Option<&'static str> {
    let biztalk_present = products.iter().any(|p| p.eq_ignore_ascii_case("biztalk"));
    match installing {
        InstallerKind::Msi if biztalk_present => None,
        _ => Some("SSOServer"),
    }
}

/// Whether the products on a server agree with the installer its role installs (a preflight fitness
/// check): where ESSO is installed, a BizTalk Server setup needs BizTalk Server there (a standalone
/// master secret server upgrades from ESSO's own setup instead, `[upgrade] master_installer`), and Host
/// Integration Server's package needs HIS or BizTalk Server (seed 000). A fresh install fits any server.
pub fn installer_fits(
    installer: &str,
    products: &[String],
    esso_present: bool,
) -> Result<(), String> {
    let has = |p: &str| products.iter().any(|x| x.eq_ignore_ascii_case(p));
    if !esso_present {
        return Ok(());
    }
    match InstallerKind::of(installer) {
        InstallerKind::Setup if !has("biztalk") => Err(format!(
            "ESSO is installed without BizTalk Server here (a standalone master secret server?), but the installer is BizTalk's setup {installer}: set [upgrade] master_installer to ESSO's own \\Platform\\SSO\\Setup.exe"
        )),
        InstallerKind::Msi if !has("his") && !has("biztalk") => Err(format!(
            "ESSO is installed without Host Integration Server or BizTalk Server here, but the installer is Host Integration Server's package {installer}: check the inventory's installer for this role"
        )),
        _ => Ok(()),
    }
}

/// How ESSO joins the SSO system when it is configured (Configuration.exe's `IsSecretServer`, the HIS
/// configuration's ESSO page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SsoConfigure {
    /// The first master secret server of a new SSO system (the migrate workflow).
    Create,
    /// Every other server: an SSO system already exists.
    Join,
}

impl SsoConfigure {
    /// The coordinator's `sso_configure` parameter; anything but "create" is Join (the safe answer:
    /// Create on a server of an existing system would make a second master secret).
    pub fn from_param(value: Option<&str>) -> Self {
        match value.map(str::trim) {
            Some(v) if v.eq_ignore_ascii_case("create") => SsoConfigure::Create,
            _ => SsoConfigure::Join,
        }
    }

    pub fn answer(self) -> &'static str {
        match self {
            SsoConfigure::Create => "Create",
            SsoConfigure::Join => "Join",
        }
    }
}

/// The instruction an attended install waits with: what to run, where, which options (ESSO.md,
/// "Upgrading an SSO server"), and how to say it is done.
pub fn attended_instruction(
    node: &str,
    step: &str,
    run_id: &str,
    params: &BTreeMap<String, String>,
) -> String {
    let installer = params
        .get("installer")
        .map_or("the product's setup", String::as_str);
    let target = params
        .get("target_version")
        .map_or("the target version", String::as_str);
    let role = if step == "upgrade-master" || step == "install-sso" {
        "the master secret server, upgraded first"
    } else {
        "a member of the SSO system, upgraded after the master"
    };
    let system = match SsoConfigure::from_param(params.get("sso_configure").map(String::as_str)) {
        SsoConfigure::Create => "\"Create a new SSO system\"",
        SsoConfigure::Join => "\"Join an existing SSO system\"",
    };
    format!(
        "on {node}, {role}, as a local administrator who is an SSO administrator, run {installer}. \
         Where ESSO is installed, setup upgrades it: choose Upgrade on the Summary page (a standalone \
         master secret server: Microsoft Enterprise Single Sign-On, then Upgrade); ESSO is upgraded with \
         the product. Where it is not: Custom installation, feature Enterprise Single Sign-On (not when \
         installing Host Integration Server where BizTalk Server already provides ESSO), then configure \
         \"Enable Enterprise Single Sign-On on this computer\", {system}. Reboot if setup asks. When it \
         is done: `fleetctl approve {run_id} --node {node}`; the agent then verifies ESSO {target} \
         before the step counts"
    )
}

/// What an installer's exit code means (Windows Installer's conventions; BizTalk setup.exe's own codes
/// are not documented).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallExit {
    Success,
    /// 3010 (reboot required) or 1641 (reboot started): installed, the reboot policy decides.
    RebootPending,
    Failed,
}

pub fn install_exit(code: Option<i32>) -> InstallExit {
    match code {
        Some(0) => InstallExit::Success,
        Some(3010 | 1641) => InstallExit::RebootPending,
        _ => InstallExit::Failed,
    }
}

/// What an install asks of the server afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootRequest {
    /// 3010: installed; the server must restart to finish (the reboot policy decides).
    Required,
    /// 1641: the installer itself restarts the server.
    Started,
}

/// Whether an install that ran asks for a reboot: by its exit code (3010, 1641), or, for a configured
/// command that exits 0 (a wrapper, or a platform whose exit codes are 8 bits), by reporting
/// `::output:: reboot=required` or `reboot=started`.
pub fn reboot_request(
    exit_code: Option<i32>,
    outputs: &BTreeMap<String, String>,
) -> Option<RebootRequest> {
    match exit_code {
        Some(3010) => Some(RebootRequest::Required),
        Some(1641) => Some(RebootRequest::Started),
        Some(0) => match outputs.get("reboot").map(|r| r.trim().to_ascii_lowercase()) {
            Some(r) if r == "required" => Some(RebootRequest::Required),
            Some(r) if r == "started" => Some(RebootRequest::Started),
            _ => None,
        },
        _ => None,
    }
}

/// Windows Installer's common failure codes (ESSO.md).
pub fn installer_error(code: i32) -> Option<&'static str> {
    Some(match code {
        1602 => "the installation was cancelled",
        1603 => "fatal error during installation",
        1618 => "another installation is in progress",
        1619 => "the installation package could not be opened",
        1633 => "this platform is not supported by the package",
        1638 => "another version of this product is already installed",
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------------
// Verifying

/// What a verification's results show wrong, if anything: the SSO database must name the
/// environment's master secret server (`master`) and SSO be enabled where reported; the version must
/// be the target (`target_version`; above it only with `newer_ok`, for a master already newer); the
/// ENTSSO service running.
pub fn verify_problem(
    outputs: &BTreeMap<String, String>,
    params: &BTreeMap<String, String>,
) -> Option<String> {
    if let (Some(found), Some(master)) = (outputs.get("secret_server"), params.get("master"))
        && !same_server(found, master)
    {
        return Some(format!(
            "the SSO database names {found} as the master secret server, but the inventory's master is {master}"
        ));
    }
    if let Some(enabled) = outputs.get("sso_enabled")
        && !matches!(
            enabled.trim().to_ascii_lowercase().as_str(),
            "yes" | "true" | "enabled" | "1"
        )
    {
        return Some(format!(
            "SSO is not enabled (ssomanage -displaydb: {enabled})"
        ));
    }
    let target = params.get("target_version");
    if let (Some(found), Some(target)) = (outputs.get("version"), target)
        && let Some(problem) = version_problem(found, target, params.get("newer_ok"))
    {
        return Some(problem);
    }
    if let Some(service) = outputs.get("service")
        && !service.trim().eq_ignore_ascii_case("running")
    {
        return Some(format!("the ENTSSO service is {service}, not running"));
    }
    if !outputs.contains_key("service") {
        return Some(
            "the verify command reported no `::output:: service=`: ENTSSO cannot be checked".into(),
        );
    }
    if target.is_some() && !outputs.contains_key("version") {
        return Some(
            "the verify command reported no `::output:: version=`: the version cannot be checked"
                .into(),
        );
    }
    None
}

/// The version found against the target, as numbers (`3.0.7.0` is `3.0.7`).
pub fn version_problem(found: &str, target: &str, newer_ok: Option<&String>) -> Option<String> {
    if found.trim().is_empty() {
        return Some(format!("no ESSO version is installed, expected {target}"));
    }
    let target_v = match target.parse::<Version>() {
        Ok(v) => v,
        Err(e) => return Some(format!("the run's target_version: {e}")),
    };
    let found_v = match found.parse::<Version>() {
        Ok(v) => v,
        Err(e) => return Some(format!("ESSO reports a version that is not one: {e}")),
    };
    let newer_ok = newer_ok.is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    match target_v.compare(&found_v) {
        Standing::Current => None,
        Standing::Newer if newer_ok => None,
        Standing::Newer => Some(format!(
            "ESSO reports version {found}, newer than the target {target}"
        )),
        Standing::Older => Some(format!("ESSO reports version {found}, expected {target}")),
    }
}

/// What an ESSO event (source ENTSSO) says about the server's health (ESSO.md, "Verifying").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventVerdict {
    /// 10534 on the master secret server.
    MasterHealthy,
    /// 10529 on a member.
    MemberHealthy,
    /// An event that fails verification, with its meaning and what to do.
    Bad(&'static str),
}

pub fn event_verdict(id: u32) -> Option<EventVerdict> {
    Some(match id {
        10534 => EventVerdict::MasterHealthy,
        10529 => EventVerdict::MemberHealthy,
        10520 | 10521 | 10565 => EventVerdict::Bad(
            "the master secret is missing or corrupt on this server: restore it from the backup (ssoconfig -restoreSecret)",
        ),
        10532 => EventVerdict::Bad(
            "ESSO could not retrieve the master secret from the master secret server: check it runs, is on the newest ESSO build (KB 2954101), and is reachable (TCP 135, 49152-65535)",
        ),
        10536 => EventVerdict::Bad(
            "ESSO cannot decrypt with the master secret (0x80090005 after a restore during an upgrade, KB 3000847)",
        ),
        10550 => EventVerdict::Bad(
            "the ENTSSO service account is not an SSO administrator: add it to the SSO Administrators group",
        ),
        10515 => EventVerdict::Bad("ESSO lost its connection to the SSO database"),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------------
// Backing up the master secret

/// ESSO refuses a backup password shorter than 7 characters (0xC0002A54); said before anything runs.
pub const MIN_PASSWORD_CHARS: usize = 7;

pub fn password_problem(password: &str) -> Option<String> {
    (password.chars().count() < MIN_PASSWORD_CHARS).then(|| {
        format!(
            "the backup password is shorter than the {MIN_PASSWORD_CHARS} characters ESSO requires (0xC0002A54)"
        )
    })
}

/// The backup file's name: environment, node, run and time, under `dir` (a Windows directory keeps
/// its backslashes).
pub fn backup_file(
    dir: &str,
    environment: &str,
    node: &str,
    run_id: &str,
    at: SystemTime,
) -> String {
    let stamp = humantime::format_rfc3339_seconds(at)
        .to_string()
        .replace([':', '-'], "");
    let name = format!("ssofleet-secret-{environment}-{node}-{run_id}-{stamp}.bak");
    let separator = if dir.contains('\\') && !dir.contains('/') {
        '\\'
    } else {
        '/'
    };
    if dir.ends_with(separator) {
        format!("{dir}{name}")
    } else {
        format!("{dir}{separator}{name}")
    }
}

/// The password reminder stored in the backup file and recorded with the artifact: which backup this
/// is, never the password. Should the password appear in it (a password such as the environment's
/// name), a fixed text is used instead.
pub fn backup_reminder(environment: &str, node: &str, at: SystemTime, password: &str) -> String {
    let date: String = humantime::format_rfc3339_seconds(at)
        .to_string()
        .chars()
        .take(10)
        .collect();
    let reminder = format!("ssofleet backup {environment} {node} {date}");
    if password.is_empty() || !reminder.contains(password) {
        reminder
    } else {
        "ssofleet master secret backup: the password is in the agent's backup_password_file".into()
    }
}

#[cfg(test)]
mod tests;
