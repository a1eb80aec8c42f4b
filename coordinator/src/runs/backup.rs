//! `backup-database`, the coordinator's own step: a verified copy-only backup of the SSO database.

use tokio::sync::mpsc;
use tracing::Instrument;

use super::{Request, now_ms};
use crate::engine::Millis;
use crate::inventory::SsoDatabase;
use crate::sql;

/// One attempt of `backup-database`.
pub(super) struct BackupJob {
    pub run_id: String,
    pub env: String,
    pub step: usize,
    pub attempt: u32,
    pub attempt_id: String,
    pub db: SsoDatabase,
    pub path: String,
    /// The sequence number of its first event (after those stored by an earlier coordinator).
    pub first_seq: u64,
}

/// Runs the backup off the manager's task; its progress and result go back as requests, in order.
pub(super) async fn backup_database(job: BackupJob, requests: mpsc::Sender<Request>) {
    let span = tracing::info_span!("backup-database", run = %job.run_id, env = %job.env, database = %job.db.database, server = %job.db.server);
    let (lines, mut rx) = mpsc::unbounded_channel::<(Millis, u32, String)>();
    let forward = {
        let requests = requests.clone();
        let (run_id, attempt_id, step) = (job.run_id.clone(), job.attempt_id.clone(), job.step);
        let mut seq = job.first_seq;
        tokio::spawn(async move {
            while let Some((at, percent, message)) = rx.recv().await {
                let _ = requests
                    .send(Request::CoordinatorProgress {
                        run_id: run_id.clone(),
                        attempt_id: attempt_id.clone(),
                        step,
                        seq,
                        at,
                        percent,
                        message,
                    })
                    .await;
                seq += 1;
            }
        })
    };
    let mut stage = 0u32;
    let mut progress = |message: String| {
        // BACKUP started → VERIFYONLY started → recorded in msdb
        stage += 1;
        let percent = match stage {
            1 => 5,
            2 => 60,
            _ => 100,
        };
        tracing::info!(parent: &span, "{message}");
        let _ = lines.send((now_ms(), percent, message));
    };
    let result = sql::backup(&job.db, &job.path, &mut progress)
        .instrument(span.clone())
        .await;
    drop(lines);
    let _ = forward.await;
    match &result {
        Ok(done) => {
            tracing::info!(parent: &span, backup_set_id = done.backup_set_id, size_bytes = done.size_bytes, path = %done.path, "SSO database backed up and verified")
        }
        Err(e) => tracing::warn!(parent: &span, kind = ?e.kind, "backup-database failed: {e}"),
    }
    let _ = requests
        .send(Request::BackupDone {
            run_id: job.run_id,
            step: job.step,
            attempt: job.attempt,
            attempt_id: job.attempt_id,
            result: result.map_err(|e| e.message),
        })
        .await;
}
