//! `backup-database`: a verified copy-only backup of the SSO database. The file's name
//! ([`backup_path`]), `BACKUP DATABASE`, `RESTORE VERIFYONLY`, and the msdb row that proves it
//! ([`BackupDone`]).

use super::session::{Returns, column, run};
use super::{
    BACKUP_SQL, HISTORY_SQL, LAST_BACKUP_ID_SQL, SqlError, SqlErrorKind, Stage, VERIFY_SQL, connect,
};
use crate::inventory::SsoDatabase;

/// A backup that SQL Server took, verified, and recorded in msdb.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupDone {
    pub path: String,
    pub backup_set_id: i32,
    pub size_bytes: u64,
    /// `backup_finish_date`, ISO 8601 in the SQL Server's local time.
    pub finished: String,
}

/// `[name]` as T-SQL quotes an identifier (for messages; statements take parameters).
pub fn quote_ident(name: &str) -> String {
    format!("[{}]", name.replace(']', "]]"))
}

/// `N'text'` as T-SQL quotes a Unicode literal (for messages; statements take parameters).
pub fn quote_literal(text: &str) -> String {
    format!("N'{}'", text.replace('\'', "''"))
}

/// The backup file of one attempt, in `backup_dir` as the SQL Server sees it: a Windows path or UNC
/// share takes `\`, anything else `/`. The same attempt always gets the same name, so a coordinator
/// restart that runs it again overwrites (INIT) instead of leaving a second file.
pub fn backup_path(
    backup_dir: &str,
    database: &str,
    env: &str,
    run_id: &str,
    attempt: u32,
) -> String {
    let safe = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let windows = backup_dir.contains('\\')
        || backup_dir.as_bytes().get(1) == Some(&b':')
            && backup_dir.as_bytes()[0].is_ascii_alphabetic();
    let sep = if windows { '\\' } else { '/' };
    let dir = backup_dir.trim_end_matches(['\\', '/']);
    let run: String = run_id.chars().take(8).collect();
    format!(
        "{dir}{sep}{}_{}_{}_{attempt}.bak",
        safe(database),
        safe(env),
        safe(&run)
    )
}

/// `BACKUP DATABASE … WITH COPY_ONLY, CHECKSUM, INIT` to `path`, `RESTORE VERIFYONLY … WITH CHECKSUM`,
/// then the msdb row that proves it. `progress` hears each stage as it starts and ends.
pub async fn backup(
    db: &SsoDatabase,
    path: &str,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<BackupDone, SqlError> {
    let mut client = connect(db).await?;
    let database = db.database.as_str();
    let last = run(
        &mut client,
        db,
        Stage::LastBackupId,
        LAST_BACKUP_ID_SQL,
        &[&database],
        Some(path),
        Returns::Rows,
    )
    .await?;
    let last_id: i32 = match last.first() {
        Some(row) => column::<i32>(row, 0, Stage::LastBackupId, db)?.unwrap_or(0),
        None => 0,
    };
    progress(format!(
        "BACKUP DATABASE {} TO DISK = {} WITH COPY_ONLY, CHECKSUM, INIT",
        quote_ident(database),
        quote_literal(path)
    ));
    run(
        &mut client,
        db,
        Stage::Backup,
        BACKUP_SQL,
        &[&database, &path],
        Some(path),
        Returns::Nothing,
    )
    .await?;
    progress(format!(
        "RESTORE VERIFYONLY FROM DISK = {} WITH CHECKSUM",
        quote_literal(path)
    ));
    run(
        &mut client,
        db,
        Stage::Verify,
        VERIFY_SQL,
        &[&path],
        Some(path),
        Returns::Nothing,
    )
    .await?;
    let history = run(
        &mut client,
        db,
        Stage::History,
        HISTORY_SQL,
        &[&database, &last_id, &path],
        Some(path),
        Returns::Rows,
    )
    .await?;
    let Some(row) = history.first() else {
        return Err(SqlError::new(
            SqlErrorKind::NotRecorded,
            format!(
                "SQL Server raised no error, but msdb.dbo.backupset has no backup of {} to {path} after backup_set_id {last_id}: the backup is not counted",
                quote_ident(database)
            ),
        ));
    };
    let id = column::<i32>(row, 0, Stage::History, db)?.unwrap_or(0);
    let size = column::<i64>(row, 1, Stage::History, db)?.unwrap_or(0);
    let finished = column::<&str>(row, 2, Stage::History, db)?
        .unwrap_or_default()
        .to_string();
    let copy_only = column::<bool>(row, 3, Stage::History, db)?.unwrap_or(false);
    let checksums = column::<bool>(row, 4, Stage::History, db)?.unwrap_or(false);
    if !copy_only || !checksums {
        return Err(SqlError::new(
            SqlErrorKind::NotRecorded,
            format!(
                "msdb records backup_set_id {id} of {} to {path}{}{}: not the backup this step takes, so it is not counted",
                quote_ident(database),
                if copy_only { "" } else { " as not copy-only" },
                if checksums { "" } else { " without checksums" }
            ),
        ));
    }
    let _ = client.close().await;
    let done = BackupDone {
        path: path.to_string(),
        backup_set_id: id,
        size_bytes: u64::try_from(size).unwrap_or(0),
        finished,
    };
    progress(format!(
        "verified, and recorded in msdb: backup_set_id {}, {} bytes, finished {}",
        done.backup_set_id, done.size_bytes, done.finished
    ));
    Ok(done)
}
