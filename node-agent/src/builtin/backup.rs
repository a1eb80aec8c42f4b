//! `backup_secret`: the master secret through `ISSOConfigSS.BackupSecret` (ESSO.md, "Backing up the
//! master secret"), from a PowerShell script that ships inside the agent, with the password and the
//! reminder on the script's standard input. ESSO writes the file to a local folder first (it must be
//! on NTFS, 0xC0002A07; whether a UNC path works is to confirm), then the agent copies it to the
//! environment's backup directory and checks that the copy's SHA-256 is the original's. The local file
//! is deleted once the copy is verified: one backup, where the run records it.

use std::path::Path;

use super::commands;
use super::parse;
use super::scripts;
use super::session::{Echo, Fail, Session};
use super::tools::{Tool, join};
use crate::esso;

pub(super) async fn backup_secret(s: &mut Session<'_>) -> Result<(), Fail> {
    let password = s
        .ctx
        .stdin_secret
        .clone()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            Fail::new("backup_secret needs the backup password ([secrets] backup_password_file)")
        })?;
    if let Some(problem) = esso::password_problem(&password) {
        return Err(Fail::new(problem));
    }
    let file = s.require_param("backup_file")?;
    let reminder = s.require_param("backup_reminder")?;
    let interop = s.tools.esso_interop.clone().ok_or_else(|| {
        Fail::new(format!(
            "the built-in backup_secret needs ESSO's folder (its {}): set [tools] esso_dir in agent.toml or configure [actions.backup_secret]",
            super::tools::ESSO_INTEROP_DLL
        ))
    })?;
    let powershell = s.tool(Tool::Powershell)?;
    let script = scripts::ship(&s.ctx.state_dir, scripts::BACKUP_SECRET)?;
    let name = Path::new(&file.replace('\\', "/"))
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Fail::new(format!("the backup file {file} has no file name")))?;
    let local_dir = join(&s.ctx.state_dir, "secret-backups");
    std::fs::create_dir_all(&local_dir)
        .map_err(|e| Fail::new(format!("cannot create {}: {e}", local_dir.display())))?;
    let local = join(&local_dir, &name);
    s.output("backup_file", file.clone()).await;
    s.output("backup_reminder", reminder.clone()).await;
    s.progress(
        20,
        "backing up the master secret (ISSOConfigSS.BackupSecret)",
    )
    .await;
    let invocation = commands::powershell_script(
        &powershell,
        &script,
        &[
            ("-BackupFile", &local.display().to_string()),
            ("-InteropDll", &interop.display().to_string()),
        ],
    );
    let ran = s
        .exec(
            &invocation,
            Some(format!("{password}\n{reminder}")),
            Echo::Forward,
        )
        .await
        .inspect_err(|_| {
            // Stopped at the step's deadline: nothing half-written stays behind.
            let _ = std::fs::remove_file(&local);
        })?;
    if !ran.ok() {
        let _ = std::fs::remove_file(&local);
        return Err(Fail::new(match parse::esso_error(&ran.all_text()) {
            Some(e) => format!("ISSOConfigSS.BackupSecret: {}", e.describe()),
            None => format!(
                "the backup script exited with code {}",
                commands::code_text(ran.exit_code)
            ),
        }));
    }
    let copied = copy_verified(&local, Path::new(&file)).await;
    if copied.is_ok() {
        let _ = std::fs::remove_file(&local);
    }
    let (size, sha256) = copied?;
    s.output("backup_size", size.to_string()).await;
    s.output("backup_sha256", sha256).await;
    s.progress(100, "master secret backed up").await;
    Ok(())
}

/// Copies the local backup to `to`; the copy must have the original's SHA-256. Its size and hash.
pub(super) async fn copy_verified(from: &Path, to: &Path) -> Result<(u64, String), Fail> {
    let (size, original) = crate::hashing::sha256_file(from).await.map_err(|e| {
        Fail::new(format!(
            "ESSO reported success, but its backup {} cannot be read: {e}",
            from.display()
        ))
    })?;
    if size == 0 {
        return Err(Fail::new(format!(
            "ESSO reported success, but its backup {} is empty",
            from.display()
        )));
    }
    if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Fail::new(format!("cannot create {}: {e}", dir.display())))?;
    }
    std::fs::copy(from, to).map_err(|e| {
        Fail::new(format!(
            "cannot copy the backup to {}: {e}; it stays in {}",
            to.display(),
            from.display()
        ))
    })?;
    let (_, copy) = crate::hashing::sha256_file(to)
        .await
        .map_err(|e| Fail::new(format!("cannot read the copy {}: {e}", to.display())))?;
    if copy != original {
        let _ = std::fs::remove_file(to);
        return Err(Fail::new(format!(
            "the copy {} had SHA-256 {copy}, the backup {original}: the damaged copy was deleted; the backup stays in {}",
            to.display(),
            from.display()
        )));
    }
    Ok((size, original))
}
