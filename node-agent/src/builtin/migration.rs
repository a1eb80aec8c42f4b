//! The host security migration (HIS 2000 / SNA Server 4.0 → ESSO, SPEC §1): export the encryption
//! key (`udbkey /showkey` into a file the agent writes itself), copy `hissomig.exe` from the media, run
//! it on the master secret server with the Host Account Cache service stopped for the export and
//! restarted afterwards (also after a failed export), and delete the exported XML in every case: it
//! holds security data.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::commands::{self, ExportSource};
use super::install::write_private;
use super::session::{Echo, Fail, Session};
use super::system::ServiceState;
use super::tools::{Tool, join};

const SERVICE_WAIT: Duration = Duration::from_secs(180);

/// The key file both export_encryption_key and run_migration use: `key_file`, or a file named after
/// the environment and run in the backup directory (else the state directory).
fn key_file(s: &Session<'_>) -> String {
    if let Some(file) = s.param("key_file") {
        return file.to_string();
    }
    let dir = s
        .param("backup_dir")
        .map(str::to_string)
        .unwrap_or_else(|| s.ctx.state_dir.display().to_string());
    commands::run_file(
        &dir,
        "hostseckey",
        s.param("environment").unwrap_or("env"),
        s.param("run_id").unwrap_or("run"),
        "bak",
    )
}

fn migration_dir(s: &Session<'_>) -> Result<PathBuf, Fail> {
    s.tools.migration_dir.clone().ok_or_else(|| {
        Fail::new(format!(
            "the built-in {} needs the migration folder (C:\\hostsec on Windows): set [tools] migration_dir in agent.toml or configure [actions.{}]",
            s.action, s.action
        ))
    })
}

pub(super) async fn export_key(s: &mut Session<'_>) -> Result<(), Fail> {
    if source_kind(s)? == Source::Sna4 {
        return Err(Fail::new(
            "SNA Server 4.0 has no encryption key to export: udbkey /showkey is Host Integration Server 2000's (ESSO.md, migration step 2)",
        ));
    }
    let udbkey = s.tool(Tool::Udbkey)?;
    let file = key_file(s);
    s.progress(20, "exporting the host security encryption key")
        .await;
    let ran = s
        .exec(&commands::udbkey_showkey(&udbkey), None, Echo::Withhold)
        .await?;
    if !ran.ok() {
        return Err(Fail::new(format!(
            "udbkey /showkey exited with code {}",
            commands::code_text(ran.exit_code)
        )));
    }
    if ran.stdout.iter().all(|l| l.trim().is_empty()) {
        return Err(Fail::new(
            "udbkey /showkey printed nothing: there is no key to export",
        ));
    }
    // As `udbkey /showkey > file` would have written it from cmd.exe.
    let text: String = ran.stdout.iter().map(|l| format!("{l}\r\n")).collect();
    write_private(Path::new(&file), text.as_bytes())
        .map_err(|e| Fail::new(format!("cannot write the key file {file}: {e}")))?;
    match std::fs::metadata(&file) {
        Ok(m) if m.len() > 0 => s.output("key_file_size", m.len().to_string()).await,
        _ => {
            return Err(Fail::new(format!(
                "the key file {file} is empty after writing it"
            )));
        }
    }
    s.output("key_file", file).await;
    s.progress(100, "encryption key exported; protect the key file")
        .await;
    Ok(())
}

pub(super) async fn copy_utility(s: &mut Session<'_>) -> Result<(), Fail> {
    let media = match s.param("media_root") {
        Some(m) => m.to_string(),
        None => {
            let installer = s.require_param("installer")?;
            commands::media_root(&installer).ok_or_else(|| {
                Fail::new(format!(
                    "cannot tell the installer media's folder from {installer}"
                ))
            })?
        }
    };
    let dest_dir = migration_dir(s)?;
    // The docs spell the tool both ways.
    let candidates: Vec<String> = ["hissomig.exe", "hisssomig.exe"]
        .iter()
        .map(|name| commands::migration_utility_on_media(&media, name))
        .collect();
    let Some(source) = candidates.iter().find(|c| Path::new(c).is_file()) else {
        return Err(Fail::new(format!(
            "the migration utility is not on the media: looked for {}",
            candidates.join(" and ")
        )));
    };
    let dest = join(&dest_dir, "hissomig.exe");
    s.progress(30, format!("copying {source} to {}", dest.display()))
        .await;
    std::fs::create_dir_all(&dest_dir)
        .map_err(|e| Fail::new(format!("cannot create {}: {e}", dest_dir.display())))?;
    std::fs::copy(source, &dest)
        .map_err(|e| Fail::new(format!("cannot copy {source} to {}: {e}", dest.display())))?;
    let (size, sha256) = crate::hashing::sha256_file(&dest)
        .await
        .map_err(|e| Fail::new(format!("cannot read the copy {}: {e}", dest.display())))?;
    s.output("source", source.clone()).await;
    s.output("copied_to", dest.display().to_string()).await;
    s.output("size", size.to_string()).await;
    s.output("sha256", sha256).await;
    s.progress(100, "migration utility copied").await;
    Ok(())
}

/// The old product (`migration_source`): HIS 2000 (`his2000`) or SNA Server 4.0 (`sna4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    His2000,
    Sna4,
}

fn source_kind(s: &Session<'_>) -> Result<Source, Fail> {
    match s
        .param("migration_source")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("his2000") => Ok(Source::His2000),
        Some("sna4") => Ok(Source::Sna4),
        // The source follows from which of the two the inventory names.
        None if s.param("host_security_dbfile").is_some() => Ok(Source::Sna4),
        None if s.param("host_security_server").is_some() => Ok(Source::His2000),
        other => Err(Fail::new(format!(
            "{}: migration_source {other:?} is not his2000 or sna4 ([environment.migration] source in fleet.toml)",
            s.action
        ))),
    }
}

/// Which part of the migration a step runs (`migration_phase`): the export, the import after the
/// operator reviewed the export, or both in one step (no review).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Export,
    Import,
    Both,
}

pub(super) async fn run(s: &mut Session<'_>) -> Result<(), Fail> {
    let phase = match s.param("migration_phase") {
        Some("export") => Phase::Export,
        Some("import") => Phase::Import,
        None => Phase::Both,
        Some(other) => {
            return Err(Fail::new(format!(
                "migration_phase {other:?} is not export or import"
            )));
        }
    };
    let hissomig = s.tool(Tool::Hissomig)?;
    let source = source_kind(s)?;
    let export_from = match (
        source,
        s.param("host_security_server"),
        s.param("host_security_dbfile"),
    ) {
        (Source::His2000, Some(server), _) => ExportSource::Server(server.to_string()),
        (Source::Sna4, _, Some(file)) => ExportSource::DbFile(file.to_string()),
        (Source::His2000, None, _) => {
            return Err(Fail::new(
                "run_migration from HIS 2000 needs host_security_server (the primary domain controller holding the host security data)",
            ));
        }
        (Source::Sna4, _, None) => {
            return Err(Fail::new(
                "run_migration from SNA Server 4.0 needs host_security_dbfile (the host security .dbs file)",
            ));
        }
    };
    // Only HIS 2000 has a key (ESSO.md, migration step 2).
    let key = match source {
        Source::His2000 => {
            let key = key_file(s);
            if phase != Phase::Export && !Path::new(&key).is_file() {
                return Err(Fail::new(format!(
                    "the encryption key file {key} does not exist: run export_encryption_key first"
                )));
            }
            Some(key)
        }
        Source::Sna4 => None,
    };
    let dir = migration_dir(s)?;
    let xml = commands::run_file(
        &dir.display().to_string(),
        "hostsecdb",
        s.param("environment").unwrap_or("env"),
        s.param("run_id").unwrap_or("run"),
        "xml",
    );
    std::fs::create_dir_all(&dir)
        .map_err(|e| Fail::new(format!("cannot create {}: {e}", dir.display())))?;
    let log_dir = s.param("migration_log_dir").map(str::to_string);
    if phase != Phase::Import {
        s.output("exported_file", xml.clone()).await;
    }

    let export = if phase == Phase::Import {
        if Path::new(&xml).is_file() {
            Ok(())
        } else {
            Err(Fail::new(format!(
                "the exported host security data {xml} is not there: run the export again"
            )))
        }
    } else {
        export(s, &hissomig, &export_from, &xml, log_dir.as_deref()).await
    };
    if phase == Phase::Export {
        // Kept for the import: the operator reviews it first, as the docs describe.
        return export;
    }
    let import = if export.is_ok() {
        s.progress(70, "importing into the SSO database").await;
        let ran = s
            .exec(
                &commands::hissomig_import(&hissomig, key.as_deref(), &xml, log_dir.as_deref()),
                None,
                Echo::Forward,
            )
            .await;
        let import = tool_result("hissomig -import", ran);
        s.output("imported", import.is_ok().to_string()).await;
        import
    } else {
        Ok(())
    };
    let deleted = delete_export(&xml);
    s.output("xml_deleted", deleted.is_ok().to_string()).await;
    export?;
    import?;
    deleted?;
    s.progress(100, "host security data migrated").await;
    Ok(())
}

/// `hissomig -export` with the Host Account Cache service stopped where it runs on this server, and
/// restarted afterwards whatever the export did. The export's size and line count are reported for
/// the operator's review.
async fn export(
    s: &mut Session<'_>,
    hissomig: &Path,
    from: &ExportSource,
    xml: &str,
    log_dir: Option<&str>,
) -> Result<(), Fail> {
    let hac = s.tools.host_account_cache_service.clone();
    s.progress(
        10,
        format!("stopping the Host Account Cache service ({hac})"),
    )
    .await;
    let stopped_by_us = match stop_service(s, &hac).await {
        Ok(stopped) => stopped,
        Err(fail) => {
            // A stop that half-happened: bring the service back before giving up.
            let _ = start_service(s, &hac).await;
            return Err(fail);
        }
    };
    s.progress(30, "exporting the host security data").await;
    let ran = s
        .exec(
            &commands::hissomig_export(hissomig, from, xml, log_dir),
            None,
            Echo::Forward,
        )
        .await;
    let export = tool_result("hissomig -export", ran).and_then(|()| {
        std::fs::metadata(xml).map_err(|_| {
            Fail::new(format!(
                "hissomig -export reported success but wrote no {xml}"
            ))
        })
    });
    s.output("exported", export.is_ok().to_string()).await;
    if let Ok(meta) = &export {
        s.output("exported_size", meta.len().to_string()).await;
        if let Ok(text) = std::fs::read_to_string(xml) {
            s.output("exported_lines", text.lines().count().to_string())
                .await;
        }
    }
    // Restarted whatever the export did.
    let restart = if stopped_by_us {
        s.progress(
            50,
            format!("restarting the Host Account Cache service ({hac})"),
        )
        .await;
        start_service(s, &hac).await
    } else {
        Ok(())
    };
    if let Ok(state) = s.service(&hac).await {
        s.output("host_account_cache", state.state.as_str()).await;
    }
    if export.is_err() {
        // Nothing half-written is left holding security data.
        let _ = delete_export(xml);
    }
    export?;
    restart
}

fn tool_result(what: &str, ran: Result<super::session::Ran, Fail>) -> Result<(), Fail> {
    let ran = ran?;
    if ran.ok() {
        return Ok(());
    }
    let last = ran
        .stderr
        .iter()
        .chain(&ran.stdout)
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| format!(": {}", l.trim()))
        .unwrap_or_default();
    Err(Fail::new(format!(
        "{what} exited with code {}{last}",
        commands::code_text(ran.exit_code)
    )))
}

/// The exported XML holds security data (the HIS docs: delete it as soon as migration is finished).
fn delete_export(xml: &str) -> Result<(), Fail> {
    match std::fs::remove_file(xml) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Fail::new(format!(
            "could not delete the exported host security data {xml}: {e}; it holds credentials: delete it by hand"
        ))),
    }
}

/// Stops the service; `false` when it is not installed on this server or already stopped (nothing
/// for us to restart).
async fn stop_service(s: &mut Session<'_>, service: &str) -> Result<bool, Fail> {
    let status = s.service(service).await?;
    match status.state {
        ServiceState::NotInstalled => {
            s.note(
                format!("the {service} service is not installed on this server: the export runs without stopping it"),
                false,
            )
            .await;
            Ok(false)
        }
        ServiceState::Stopped => {
            // Not ours to start afterwards.
            s.note(format!("the {service} service is already stopped"), false)
                .await;
            Ok(false)
        }
        _ => {
            s.stop_service(service).await?;
            let status = s
                .wait_for(service, ServiceState::Stopped, SERVICE_WAIT)
                .await?;
            if status.state != ServiceState::Stopped {
                return Err(Fail::new(format!(
                    "the {service} service could not be stopped"
                )));
            }
            Ok(true)
        }
    }
}

async fn start_service(s: &mut Session<'_>, service: &str) -> Result<(), Fail> {
    s.start_service(service)
        .await
        .map_err(|f| Fail::new(format!("{}: start it by hand", f.message)))?;
    s.wait_for(service, ServiceState::Running, SERVICE_WAIT)
        .await?;
    Ok(())
}
