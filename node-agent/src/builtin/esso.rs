//! The ESSO actions: `facts` (service, registry, products), `verify_sso` (running, version, the SSO
//! system's master secret server and status), `backup_secret` and `install_sso`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::commands::{self, RegView};
use super::parse::{self, RegKey, RegQuery, ServiceState};
use super::session::{Echo, Fail, Session};
use super::tools::{ENTSSO_SERVICE, Tool};
use crate::executor::{InstallExit, install_exit};

pub const ENTSSO_KEY: &str = r"HKLM\SOFTWARE\Microsoft\ENTSSO";
/// Verified: BizTalk's docs say this key lists the version, install path and edition.
pub const BIZTALK_KEY: &str = r"HKLM\SOFTWARE\Microsoft\BizTalk Server\3.0";
/// Its existence marks Host Integration Server (vulnerability scanners test for it); to confirm per
/// HIS version (HIS 2004 also writes `…\Host Integration Server\6.0`).
pub const HIS_KEY: &str = r"HKLM\SOFTWARE\Microsoft\Host Integration Server";
/// Where ESSO keeps its version: to confirm on a real server, so both names are read.
const VERSION_VALUES: [&str; 2] = ["ProductVersion", "Version"];
const INSTALL_PATH_VALUES: [&str; 2] = ["InstallPath", "Path"];
/// ENTSSO can take about 3 minutes to start (ESSO.md).
const ENTSSO_START_WAIT: Duration = Duration::from_secs(300);

/// What the registry says about ESSO and the products on this server.
#[derive(Debug, Clone, Default)]
struct Registry {
    entsso: Option<RegKey>,
    products: Vec<String>,
    biztalk_version: Option<String>,
}

impl Registry {
    fn version(&self) -> Option<String> {
        self.first_of(&VERSION_VALUES)
            .filter(|v| !v.trim().is_empty())
    }

    fn install_path(&self) -> Option<String> {
        self.first_of(&INSTALL_PATH_VALUES)
    }

    /// The first of `names` that ESSO's key has, as text.
    fn first_of(&self, names: &[&str]) -> Option<String> {
        let key = self.entsso.as_ref()?;
        names
            .iter()
            .find_map(|v| key.value(v))
            .map(parse::RegData::text)
    }

    /// Only the master secret server has `ENTSSO\SSOSS` (ESSO docs).
    fn master_secret_server(&self) -> bool {
        self.entsso.as_ref().is_some_and(|k| k.has_subkey("SSOSS"))
    }
}

/// `reg query`, in the native view and then the 32-bit one; `None` when neither has it.
async fn read_key(
    s: &mut Session<'_>,
    key: &str,
    value: Option<&str>,
) -> Result<Option<RegKey>, Fail> {
    let reg = s.tool(Tool::Reg)?;
    for view in [RegView::Native, RegView::Wow32] {
        let ran = s
            .exec(
                &commands::reg_query(&reg, key, value, view),
                None,
                Echo::Forward,
            )
            .await?;
        match parse::parse_reg_query(&ran.stdout_text(), &ran.stderr.join("\n"), ran.exit_code) {
            Ok(RegQuery::Found(k)) => return Ok(Some(k)),
            Ok(RegQuery::Missing) => {}
            Err(e) => return Err(Fail::new(format!("{key}: {e}"))),
        }
    }
    Ok(None)
}

async fn registry(s: &mut Session<'_>) -> Result<Registry, Fail> {
    let mut r = Registry {
        entsso: read_key(s, ENTSSO_KEY, None).await?,
        ..Default::default()
    };
    if let Some(biztalk) = read_key(s, BIZTALK_KEY, Some("ProductVersion")).await? {
        r.products.push("biztalk".into());
        r.biztalk_version = biztalk.value("ProductVersion").map(parse::RegData::text);
    }
    if read_key(s, HIS_KEY, None).await?.is_some() {
        r.products.push("his".into());
    }
    Ok(r)
}

pub async fn facts(s: &mut Session<'_>) -> Result<(), Fail> {
    s.progress(10, "querying the ENTSSO service").await;
    let service = s.service(ENTSSO_SERVICE).await?;
    s.output("service", service.state.as_str()).await;
    s.progress(40, "reading the registry").await;
    let r = registry(s).await?;
    s.output("version", r.version().unwrap_or_default()).await;
    s.output("products", r.products.join(",")).await;
    s.output("master_secret_server", r.master_secret_server().to_string())
        .await;
    if let Some(path) = r.install_path() {
        s.output("install_path", path).await;
    }
    if let Some(v) = r.biztalk_version {
        s.output("biztalk_version", v).await;
    }
    s.progress(100, "facts read").await;
    Ok(())
}

pub async fn verify(s: &mut Session<'_>) -> Result<(), Fail> {
    let master = s.require_param("master")?;
    s.progress(10, "querying the ENTSSO service").await;
    let mut service = s.service(ENTSSO_SERVICE).await?;
    if service.state == ServiceState::StartPending {
        s.progress(20, "waiting for ENTSSO to start").await;
        service = s
            .wait_for(ENTSSO_SERVICE, ServiceState::Running, ENTSSO_START_WAIT)
            .await?;
    }
    s.output("service", service.state.as_str()).await;
    if service.state != ServiceState::Running {
        let exit = service
            .win32_exit_code
            .filter(|c| *c != 0)
            .map(|c| format!(" (WIN32_EXIT_CODE {c})"))
            .unwrap_or_default();
        return Err(Fail::new(format!(
            "the ENTSSO service is {}{exit}, not running",
            service.state.as_str()
        )));
    }
    s.progress(40, "reading the ESSO version").await;
    let r = registry(s).await?;
    let version = r.version().unwrap_or_default();
    s.output("version", version.clone()).await;
    s.output("master_secret_server", r.master_secret_server().to_string())
        .await;
    if let Some(target) = s.param("target_version").map(str::to_string)
        && version.trim() != target.trim()
    {
        return Err(Fail::new(if version.is_empty() {
            format!("the registry shows no ESSO version under {ENTSSO_KEY}, expected {target}")
        } else {
            format!("ESSO reports version {version}, expected {target}")
        }));
    }
    s.progress(70, "reading the SSO system (ssomanage -displaydb)")
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
    if !parse::same_server(&info.secret_server, &master) {
        return Err(Fail::new(format!(
            "the SSO system names {} as its master secret server, but the inventory's master is {master}",
            info.secret_server
        )));
    }
    if info.enabled != Some(true) {
        return Err(Fail::new(format!(
            "SSO is not enabled (ssomanage -displaydb shows \"SSO enabled : {enabled}\")"
        )));
    }
    s.progress(100, "ESSO verified").await;
    Ok(())
}

pub async fn backup_secret(s: &mut Session<'_>) -> Result<(), Fail> {
    let password = s
        .ctx
        .stdin_secret
        .clone()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            Fail::new("backup_secret needs the backup password ([secrets] backup_password_file)")
        })?;
    if password.chars().count() < 7 {
        return Err(Fail::new(
            "the backup password is shorter than the 7 characters ESSO requires (0xC0002A54)",
        ));
    }
    let environment = s.param("environment").unwrap_or("").to_string();
    let node = s.param("node").unwrap_or("").to_string();
    let file = match s.param("backup_file") {
        Some(file) => file.to_string(),
        None => {
            let dir = s.require_param("backup_dir")?;
            crate::executor::backup_file(
                &dir,
                &environment,
                &node,
                s.param("run_id").unwrap_or(""),
                SystemTime::now(),
            )
        }
    };
    let reminder = commands::backup_reminder(
        &environment,
        &node,
        &super::date_of(SystemTime::now()),
        &password,
    );
    s.output("backup_file", file.clone()).await;
    s.progress(20, "backing up the master secret").await;
    let ssoconfig = s.tool(Tool::Ssoconfig)?;
    let stdin = commands::backup_secret_stdin(&password, &reminder);
    let ran = s
        .exec(
            &commands::ssoconfig_backup_secret(&ssoconfig, &file),
            Some(stdin),
            Echo::Forward,
        )
        .await?;
    if let Some(e) = parse::esso_error(&ran.all_text()) {
        return Err(Fail::new(format!(
            "ssoconfig -backupSecret: {}",
            e.describe()
        )));
    }
    if !ran.ok() {
        return Err(Fail::new(format!(
            "ssoconfig -backupSecret exited with code {}",
            ran.exit_code.map_or("none".into(), |c| c.to_string())
        )));
    }
    match std::fs::metadata(Path::new(&file)) {
        Ok(m) if m.len() > 0 => s.output("backup_size", m.len().to_string()).await,
        Ok(_) => {
            return Err(Fail::new(format!(
                "ssoconfig reported success, but the backup file {file} is empty"
            )));
        }
        Err(e) => {
            return Err(Fail::new(format!(
                "ssoconfig reported success, but the backup file {file} cannot be read: {e}"
            )));
        }
    }
    s.progress(100, "master secret backed up").await;
    Ok(())
}

/// Unattended install: the installer's own exit code is the outcome's (3010 and 1641 keep their
/// meaning for the executor's reboot policy).
pub async fn install(s: &mut Session<'_>) -> Result<i32, Fail> {
    let installer = s.require_param("installer")?;
    let run_id = s.require_param("run_id")?;
    let node = s.require_param("node")?;
    s.progress(5, "finding the products on this server").await;
    let r = registry(s).await?;
    let kind = commands::installer_kind(&installer);
    let feature = commands::esso_feature(commands::installer_product(kind), &r.products);
    s.output("products", r.products.join(",")).await;
    s.output("esso_feature", feature.unwrap_or("none")).await;
    if feature.is_none() {
        s.note(
            "ESSO is already provided by the other product on this server: the ESSO feature is not selected",
            false,
        )
        .await;
    }
    let log = commands::install_log(&s.ctx.state_dir, &run_id, &node);
    if let Some(dir) = log.parent()
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        return Err(Fail::new(format!(
            "cannot create the installer log folder {}: {e}",
            dir.display()
        )));
    }
    let log = log.display().to_string();
    s.output("install_log", log.clone()).await;
    let msiexec = match kind {
        commands::InstallerKind::Msi => Some(s.tool(Tool::Msiexec)?),
        commands::InstallerKind::Setup => None,
    };
    let base = s
        .param("install_features")
        .unwrap_or(commands::BIZTALK_FEATURES)
        .to_string();
    let invocation = commands::install(msiexec.as_deref(), &installer, &log, &base, feature)
        .map_err(Fail::new)?;
    s.progress(10, "running the installer").await;
    let ran = s.exec(&invocation, None, Echo::Forward).await?;
    let code = ran.exit_code;
    s.output(
        "installer_exit",
        code.map_or("none".into(), |c| c.to_string()),
    )
    .await;
    let result = installer_outcome(code, &log);
    if result.is_err() {
        // The installer's own account of what went wrong, before our one-line reason.
        match std::fs::read(&log) {
            Ok(bytes) => {
                for line in log_tail(&bytes, INSTALL_LOG_TAIL) {
                    s.note(format!("installer log: {line}"), true).await;
                }
            }
            Err(e) => {
                s.note(format!("the installer log {log} cannot be read: {e}"), true)
                    .await
            }
        }
    }
    if let Ok(c) = result {
        if install_exit(Some(c)) == InstallExit::RebootPending {
            s.output("reboot_pending", "true").await;
            s.progress(100, "installed; a reboot is pending").await;
        } else {
            s.progress(100, "installed").await;
        }
    }
    result
}

/// The installer's exit code judged by the executor's rules (`install_exit`): success and
/// reboot-pending keep their code (0, 3010, 1641); anything else fails with the code and the log.
pub fn installer_outcome(code: Option<i32>, log: &str) -> Result<i32, Fail> {
    match (install_exit(code), code) {
        (InstallExit::Success | InstallExit::RebootPending, Some(c)) => Ok(c),
        (_, code) => Err(Fail {
            message: format!(
                "the installer exited with code {}{}; its log is {log}",
                code.map_or("none".into(), |c| c.to_string()),
                code.and_then(installer_error)
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            ),
            exit_code: code.or(Some(1)),
            timed_out: false,
        }),
    }
}

/// How many lines of the installer's log a failed install carries.
const INSTALL_LOG_TAIL: usize = 12;

/// The last `n` non-empty lines of an installer log. Windows Installer and setup.exe often write
/// UTF-16LE with a byte order mark; otherwise the text is read as UTF-8 (lossily).
pub fn log_tail(bytes: &[u8], n: usize) -> Vec<String> {
    let text = match bytes {
        [0xFF, 0xFE, rest @ ..] => {
            let units: Vec<u16> = rest
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        [0xEF, 0xBB, 0xBF, rest @ ..] => String::from_utf8_lossy(rest).into_owned(),
        _ => String::from_utf8_lossy(bytes).into_owned(),
    };
    let lines: Vec<String> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// Windows Installer's common failure codes.
fn installer_error(code: i32) -> Option<&'static str> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_installer_log_tail_is_read_in_utf16_and_utf8() {
        let text = "MSI (s) (1C:2C) start\r\n\r\nAction ended: InstallFinalize. Return value 3.\r\nProduct: Microsoft Enterprise Single Sign-On -- Installation failed.\r\n";
        let mut utf16 = vec![0xFF, 0xFE];
        utf16.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
        let tail = log_tail(&utf16, 2);
        assert_eq!(
            tail,
            [
                "Action ended: InstallFinalize. Return value 3.",
                "Product: Microsoft Enterprise Single Sign-On -- Installation failed."
            ]
        );
        assert_eq!(
            log_tail(text.as_bytes(), 12).len(),
            3,
            "blank lines dropped"
        );
        assert_eq!(log_tail(b"\xEF\xBB\xBFone\ntwo", 1), ["two"]);
        assert!(log_tail(b"", 5).is_empty());
    }

    #[test]
    fn installer_exit_codes_keep_their_meaning() {
        assert_eq!(installer_outcome(Some(0), "l"), Ok(0));
        assert_eq!(installer_outcome(Some(3010), "l"), Ok(3010));
        assert_eq!(installer_outcome(Some(1641), "l"), Ok(1641));
        let fail = installer_outcome(Some(1603), r"C:\s\i.log").unwrap_err();
        assert_eq!(fail.exit_code, Some(1603));
        assert_eq!(
            fail.message,
            r"the installer exited with code 1603 (fatal error during installation); its log is C:\s\i.log"
        );
        let fail = installer_outcome(None, "l").unwrap_err();
        assert_eq!(
            (fail.exit_code, fail.message.as_str()),
            (Some(1), "the installer exited with code none; its log is l")
        );
    }
}
