//! The PowerShell scripts the agent ships (`scripts/*.ps1`, compiled in): written to
//! `<state_dir>/scripts/` (the agent's own folder, readable only by its account) before each run, so
//! that what runs is always this build's.

use std::path::{Path, PathBuf};

use super::session::Fail;
use super::tools::join;

/// `ISSOConfigSS.BackupSecret`; the password and reminder on standard input.
pub(super) const BACKUP_SECRET: (&str, &str) = (
    "backup-secret.ps1",
    include_str!("scripts/backup-secret.ps1"),
);

/// The fitness checks that need the caller's identity or a drive.
pub(super) const FITNESS: (&str, &str) = ("fitness.ps1", include_str!("scripts/fitness.ps1"));

/// Writes the script and returns its path.
pub(super) fn ship(state_dir: &Path, (name, text): (&str, &str)) -> Result<PathBuf, Fail> {
    let dir = join(state_dir, "scripts");
    let path = join(&dir, name);
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&path, text))
        .map_err(|e| Fail::new(format!("cannot write {}: {e}", path.display())))?;
    Ok(path)
}
