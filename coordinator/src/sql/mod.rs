//! The SSO database on SQL Server, over tiberius: which server the SSO system records as its master
//! secret server (preflight), and a verified copy-only backup of the database (`backup-database`).
//!
//! Every statement takes its identifiers and paths as parameters (`sp_executesql`), never spliced into
//! the text. tiberius does not surface informational messages (such as 3014, "BACKUP DATABASE
//! successfully processed"), so a backup counts only when the statements raised no error *and*
//! `msdb.dbo.backupset` holds the row of this very backup: copy-only, with checksums, to this file.
//!
//! This file holds the statements and the preflight's [`secret_server`]; `session.rs` connects and
//! runs them, `backup.rs` takes the backup, and `error.rs` words what went wrong.

mod backup;
mod error;
mod session;

pub use backup::{BackupDone, backup, backup_path, quote_ident, quote_literal};
use error::place;
pub use error::{Failure, SqlError, SqlErrorKind, Stage, describe};
pub use session::connect;
use session::{Returns, column, run};

use crate::inventory::SsoDatabase;

/// The master secret server, as the SSO system records it (one row; ESSO's own schema).
pub const SECRET_SERVER_SQL: &str = "SELECT gi_SecretServer FROM dbo.SSOX_GlobalInfo";
/// The newest backup set of the database before ours: ours must come after it.
pub const LAST_BACKUP_ID_SQL: &str = "SELECT ISNULL(MAX(backup_set_id), 0) AS last_id FROM msdb.dbo.backupset WHERE database_name = @P1";
/// COPY_ONLY leaves the customer's own backup chain (the BizTalk backup job) as it is.
pub const BACKUP_SQL: &str = "BACKUP DATABASE @P1 TO DISK = @P2 WITH COPY_ONLY, CHECKSUM, INIT";
pub const VERIFY_SQL: &str = "RESTORE VERIFYONLY FROM DISK = @P1 WITH CHECKSUM";
/// The row of the backup just taken: after `@P2`, of this database, to this file.
pub const HISTORY_SQL: &str = "SELECT TOP (1) s.backup_set_id, CAST(s.backup_size AS bigint) AS backup_size, \
CONVERT(nvarchar(33), s.backup_finish_date, 126) AS finished, s.is_copy_only, s.has_backup_checksums, \
f.physical_device_name FROM msdb.dbo.backupset AS s JOIN msdb.dbo.backupmediafamily AS f ON f.media_set_id = s.media_set_id \
WHERE s.database_name = @P1 AND s.backup_set_id > @P2 AND s.type = 'D' AND f.physical_device_name = @P3 \
ORDER BY s.backup_set_id DESC";

/// How often a statement chosen as a deadlock victim (1205) is tried in all.
const DEADLOCK_TRIES: u32 = 3;

/// The master secret server recorded in the SSO database (`gi_SecretServer`).
pub async fn secret_server(db: &SsoDatabase) -> Result<String, SqlError> {
    let mut client = connect(db).await?;
    let rows = run(
        &mut client,
        db,
        Stage::SecretServer,
        SECRET_SERVER_SQL,
        &[],
        None,
        Returns::Rows,
    )
    .await?;
    match rows.as_slice() {
        [row] => match column::<&str>(row, 0, Stage::SecretServer, db)? {
            Some(name) if !name.trim().is_empty() => Ok(name.trim().to_string()),
            _ => Err(SqlError::new(
                SqlErrorKind::NotSsoDatabase,
                format!(
                    "dbo.SSOX_GlobalInfo in {} names no master secret server: the SSO system is not configured",
                    place(db)
                ),
            )),
        },
        [] => Err(SqlError::new(
            SqlErrorKind::NotSsoDatabase,
            format!(
                "dbo.SSOX_GlobalInfo in {} is empty: the SSO system was never configured",
                place(db)
            ),
        )),
        more => Err(SqlError::new(
            SqlErrorKind::NotSsoDatabase,
            format!(
                "dbo.SSOX_GlobalInfo in {} has {} rows, but ESSO keeps exactly one: inspect the database before upgrading",
                place(db),
                more.len()
            ),
        )),
    }
}

/// Whether the name recorded in the SSO database and the inventory's name are the same server.
pub use fleet_proto::names::same_server;

#[cfg(test)]
mod tests;
