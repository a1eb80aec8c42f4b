//! `install_sso` and `configure_sso`, unattended, only where Microsoft documents a silent install
//! (`fleet_proto::install`, the rule the planner uses too): a fresh install with BizTalk's setup, and
//! Host Integration Server 2020 (`msiexec /i … /quiet`) where the agent has a command that applies its
//! configuration. A BizTalk setup upgrade and ESSO's own setup are refused with the documents' words:
//! they are attended steps. After a fresh install or the HIS upgrade, ESSO is configured (`configure_sso`): the
//! install reports `configure_needed=true` and the executor runs that action next (configured or
//! built-in), so that a customer may override either.
//!
//! `configure_sso` writes the product's configuration file (BizTalk `Configuration.exe /S`, HIS
//! `ConfigurationWizard.exe /APPLY`) with `IsSecretServer` answered Create or Join and the service
//! account's password read from `[sso] service_password_file`; the file is readable only by the agent's
//! account, lives in `<state_dir>/secret-files/`, is deleted when the program ends, and whatever is left
//! there after a crash is deleted when the agent starts again ([`remove_leftover_secret_files`]).

use std::path::{Path, PathBuf};

use super::commands;
use super::inspect;
use super::session::{Echo, Fail, Session};
use super::tools::{Tool, join};
use crate::esso::{self, InstallExit, InstallerKind, SsoConfigure};

mod configuration;

/// How many lines of the installer's log a failed install carries.
const INSTALL_LOG_TAIL: usize = 12;

/// The installer's own exit code is the outcome's (3010 and 1641 keep their meaning for the
/// executor's reboot policy).
pub(super) async fn install(s: &mut Session<'_>) -> Result<i32, Fail> {
    let installer = s.require_param("installer")?;
    let run_id = s.require_param("run_id")?;
    let node = s.require_param("node")?;
    s.progress(5, "finding ESSO and the products on this server")
        .await;
    let (esso_present, products) = inspect::esso_present(s).await?;
    let kind = InstallerKind::of(&installer);
    s.output("products", products.join(",")).await;
    s.output(
        "install_kind",
        if esso_present { "upgrade" } else { "fresh" },
    )
    .await;
    let overrides = esso::Overrides {
        install: false,
        configure: s.ctx.configure_overridden,
    };
    fleet_proto::install::unattended(&installer, esso_present, overrides).map_err(Fail::new)?;
    if !esso_present && !s.ctx.configure_overridden {
        // A fresh install is configured right after it: what that needs is checked before anything
        // is installed.
        configuration::Settings::check(&s.ctx.sso).map_err(Fail::new)?;
    }
    let feature = esso::esso_feature(kind, &products);
    s.output("esso_feature", feature.unwrap_or("none")).await;
    if feature.is_none() {
        s.note(
            "BizTalk Server already provides ESSO on this server: the ESSO feature is not selected",
            false,
        )
        .await;
    }
    let log = commands::install_log(&s.ctx.state_dir, &run_id, &node);
    create_parent(&log)?;
    let log = log.display().to_string();
    s.output("install_log", log.clone()).await;
    let msiexec = match kind {
        InstallerKind::Msi => Some(s.tool(Tool::Msiexec)?),
        InstallerKind::Setup | InstallerKind::EssoSetup => None,
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
    s.output("installer_exit", commands::code_text(code)).await;
    let result = installer_outcome(code, &log);
    match result {
        Err(_) => {
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
        Ok(c) => {
            // Fresh installs and the HIS upgrade leave ESSO to be configured (ESSO.md).
            if !esso_present || kind == InstallerKind::Msi {
                s.output("configure_needed", "true").await;
            }
            if esso::install_exit(Some(c)) == InstallExit::RebootPending {
                s.output("reboot_pending", "true").await;
                s.progress(100, "installed; a reboot is pending").await;
            } else {
                s.progress(100, "installed").await;
            }
        }
    }
    result
}

pub(super) async fn configure(s: &mut Session<'_>) -> Result<(), Fail> {
    let installer = s.require_param("installer")?;
    let run_id = s.require_param("run_id")?;
    let node = s.require_param("node")?;
    if InstallerKind::of(&installer) == InstallerKind::Msi {
        return Err(Fail::new(
            "the built-in configure_sso cannot configure Host Integration Server: the layout of \
             ConfigurationWizard.exe's file is not documented. Create the file with the wizard \
             (ConfigurationWizard.exe without parameters; its ESSO page answers Create or Join) and \
             configure [actions.configure_sso] to apply it (ConfigurationWizard.exe /APPLY <file>)",
        ));
    }
    let answer = SsoConfigure::from_param(s.param("sso_configure"));
    s.output("sso_configure", answer.answer().to_ascii_lowercase())
        .await;
    let new_secret = match (answer, s.ctx.stdin_secret.clone()) {
        (SsoConfigure::Create, Some(password)) => Some(new_secret_backup(s, password)?),
        _ => None,
    };
    // Create makes a new master secret: its backup belongs with the environment's backups.
    let backup_dir = match &new_secret {
        Some(_) => Some(s.require_param("backup_dir")?),
        None => None,
    };
    let backup_copy = new_secret
        .as_ref()
        .map(|b| (b.file.clone(), b.reminder.clone()));
    let settings =
        configuration::Settings::read(&s.ctx.sso, answer, new_secret).map_err(Fail::new)?;
    let program = configuration_program(s).await?;
    let file = join(
        &join(&s.ctx.state_dir, SECRET_FILES),
        &format!(
            "configure-{}-{}.xml",
            commands::file_safe(&run_id),
            commands::file_safe(&node)
        ),
    );
    let log =
        commands::install_log(&s.ctx.state_dir, &run_id, &node).with_extension("configure.log");
    create_parent(&log)?;
    write_private(&file, configuration::biztalk(&settings).as_bytes())
        .map_err(|e| Fail::new(format!("cannot write {}: {e}", file.display())))?;
    let invocation = commands::biztalk_configure(
        &program,
        &file.display().to_string(),
        &log.display().to_string(),
    );
    s.progress(
        20,
        format!(
            "configuring ESSO: {} the SSO system",
            answer.answer().to_ascii_lowercase()
        ),
    )
    .await;
    let ran = s.exec(&invocation, None, Echo::Forward).await;
    let removed = std::fs::remove_file(&file);
    let ran = ran?;
    if let Err(e) = removed
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Err(Fail::new(format!(
            "could not delete {}, which holds the ENTSSO service account's password: {e}; delete it by hand",
            file.display()
        )));
    }
    if !ran.ok() {
        return Err(Fail::new(format!(
            "{} exited with code {}; its log is {}",
            program.display(),
            commands::code_text(ran.exit_code),
            log.display()
        )));
    }
    s.output("configure_log", log.display().to_string()).await;
    if let (Some((local, reminder)), Some(dir)) = (backup_copy, backup_dir) {
        // The new master secret's backup, kept like backup_secret's: in the backup directory; the
        // executor records it as the attempt's artifact with its reminder.
        let name = Path::new(&local)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let copy = join(Path::new(&dir), &name);
        let (size, sha256) = super::backup::copy_verified(Path::new(&local), &copy).await?;
        let _ = std::fs::remove_file(&local);
        s.output("backup_file", copy.display().to_string()).await;
        s.output("backup_size", size.to_string()).await;
        s.output("backup_sha256", sha256).await;
        s.output("backup_reminder", reminder).await;
    }
    s.progress(100, "ESSO configured").await;
    Ok(())
}

/// Create backs up the new master secret: locally first (ESSO writes to NTFS), with the agent's
/// backup password and a reminder that names the backup.
fn new_secret_backup(
    s: &Session<'_>,
    password: String,
) -> Result<configuration::NewSecretBackup, Fail> {
    if let Some(problem) = esso::password_problem(&password) {
        return Err(Fail::new(problem));
    }
    let environment = s.param("environment").unwrap_or_default();
    let node = s.param("node").unwrap_or_default();
    let now = std::time::SystemTime::now();
    let dir = join(&s.ctx.state_dir, "secret-backups");
    std::fs::create_dir_all(&dir)
        .map_err(|e| Fail::new(format!("cannot create {}: {e}", dir.display())))?;
    let file = esso::backup_file(
        &dir.display().to_string(),
        environment,
        node,
        s.param("run_id").unwrap_or_default(),
        now,
    );
    Ok(configuration::NewSecretBackup {
        file,
        reminder: esso::backup_reminder(environment, node, now, &password),
        password,
    })
}

/// BizTalk's `Configuration.exe`: `[tools] biztalk_configuration`, else in BizTalk's install folder
/// (its key's `InstallPath`; the docs list it in `\Program Files (x86)\Microsoft BizTalk Server
/// <version>`), else ESSO's own (a standalone ESSO: "the configuration tool is located at
/// …\Common Files\Enterprise Single Sign-On\Configuration.exe", how-to-move-the-master-secret-server).
async fn configuration_program(s: &mut Session<'_>) -> Result<PathBuf, Fail> {
    let tool = Tool::BiztalkConfiguration;
    if let Some(path) = s.tools.get(tool) {
        return Ok(path.to_path_buf());
    }
    if let Some(dir) = s
        .reg_value_any_view(inspect::BIZTALK_KEY, "InstallPath")
        .await?
        .filter(|d| !d.trim().is_empty())
    {
        return Ok(join(Path::new(dir.trim()), &tool.exe()));
    }
    s.tools
        .esso_interop
        .as_deref()
        .and_then(Path::parent)
        .map(|esso| join(esso, &tool.exe()))
        .ok_or_else(|| {
            Fail::new(format!(
                "cannot find {}: {} has no InstallPath; set [tools] {} in agent.toml or configure [actions.configure_sso]",
                tool.exe(),
                inspect::BIZTALK_KEY,
                tool.key()
            ))
        })
}

/// The folder of files that hold a secret while a program reads them.
pub(super) const SECRET_FILES: &str = "secret-files";

/// Deletes what a crashed agent left in `<state_dir>/secret-files/` (a configuration file holds the
/// service account's password). Returns what it deleted, for the log.
pub fn remove_leftover_secret_files(state_dir: &Path) -> Vec<PathBuf> {
    let dir = join(state_dir, SECRET_FILES);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && std::fs::remove_file(p).is_ok())
        .collect()
}

/// Writes a file only its owner can read where the platform allows saying so (on Windows the folder's
/// ACL decides: the agent's state directory is its account's alone).
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn create_parent(path: &Path) -> Result<(), Fail> {
    match path.parent() {
        Some(dir) => std::fs::create_dir_all(dir)
            .map_err(|e| Fail::new(format!("cannot create the folder {}: {e}", dir.display()))),
        None => Ok(()),
    }
}

/// The installer's exit code judged by ESSO's rules (`esso::install_exit`): success and
/// reboot-pending keep their code (0, 3010, 1641); anything else fails with the code and the log.
pub(super) fn installer_outcome(code: Option<i32>, log: &str) -> Result<i32, Fail> {
    match (esso::install_exit(code), code) {
        (InstallExit::Success | InstallExit::RebootPending, Some(c)) => Ok(c),
        (_, code) => Err(Fail {
            message: format!(
                "the installer exited with code {}{}; its log is {log}",
                commands::code_text(code),
                code.and_then(esso::installer_error)
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            ),
            exit_code: code.or(Some(1)),
            timed_out: false,
        }),
    }
}

/// The last `n` non-empty lines of an installer log. Windows Installer and setup.exe often write
/// UTF-16LE with a byte order mark; otherwise the text is read as UTF-8 (lossily).
pub(super) fn log_tail(bytes: &[u8], n: usize) -> Vec<String> {
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
