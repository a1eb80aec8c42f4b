//! Running one step attempt (SPEC §6): the coordinator names an action of the local catalogue and
//! supplies placeholder values; the agent runs its own command for that action, streams what happens
//! as numbered events (1, 2, …, the result last), and checks the result itself:
//! - `backup_secret`: the password goes to standard input only; the backup file is named after the
//!   environment, node, run and time, and must exist afterwards: its size and SHA-256 are reported;
//! - `install_sso`: exit codes 3010 and 1641 are success with a reboot pending;
//! - `verify_sso`: a reported `version` must equal the target and a reported `service` be running.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fleet_proto::pb::step_event::Kind;
use fleet_proto::{pb, unix_ms};
use tokio::sync::mpsc;

use crate::catalogue::{ActionName, expand};
use crate::config::AgentConfig;
use crate::runner::{self, CommandSpec, Report};

/// An assignment, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub attempt_id: String,
    pub epoch: u64,
    pub run_id: String,
    pub environment: String,
    pub step: String,
    pub action: ActionName,
    pub params: BTreeMap<String, String>,
    pub timeout: Duration,
    /// The installer's SHA-256 the run's preflight read; `install_sso` refuses a different file.
    pub expected_installer_sha256: Option<String>,
}

impl Assignment {
    /// Checks a `StepAssignment` from the wire; `Err` is the reason to refuse it.
    pub fn from_proto(a: pb::StepAssignment) -> Result<Self, (pb::AssignmentDecision, String)> {
        let invalid = |why: String| (pb::AssignmentDecision::Invalid, why);
        if a.attempt_id.is_empty() {
            return Err(invalid("no attempt id".into()));
        }
        let action = ActionName::from_proto(a.action()).ok_or_else(|| {
            (
                pb::AssignmentDecision::UnknownAction,
                format!("action {} is not in this agent's catalogue", a.action),
            )
        })?;
        if a.timeout_ms == 0 {
            return Err(invalid("no timeout".into()));
        }
        Ok(Self {
            attempt_id: a.attempt_id,
            epoch: a.epoch,
            run_id: a.run_id,
            environment: a.environment,
            step: a.step,
            action,
            params: a.params.into_iter().collect(),
            timeout: Duration::from_millis(a.timeout_ms),
            expected_installer_sha256: Some(a.expected_installer_sha256).filter(|h| !h.is_empty()),
        })
    }
}

/// Numbers the events of one attempt and sends them on.
struct Events {
    attempt_id: String,
    seq: u64,
    tx: mpsc::Sender<pb::StepEvent>,
}

impl Events {
    async fn send(&mut self, kind: Kind) {
        self.seq += 1;
        let event = pb::StepEvent {
            attempt_id: self.attempt_id.clone(),
            seq: self.seq,
            at_unix_ms: unix_ms(SystemTime::now()),
            kind: Some(kind),
        };
        let _ = self.tx.send(event).await;
    }
}

/// The backup file's name: environment, node, run and time, under the environment's backup directory.
pub fn backup_file(
    backup_dir: &str,
    environment: &str,
    node: &str,
    run_id: &str,
    at: SystemTime,
) -> String {
    let stamp = humantime::format_rfc3339_seconds(at)
        .to_string()
        .replace([':', '-'], "");
    let name = format!("ssofleet-secret-{environment}-{node}-{run_id}-{stamp}.bak");
    // A Windows directory (`\\server\share`, `D:\…`) keeps its separator.
    let separator = if backup_dir.contains('\\') && !backup_dir.contains('/') {
        '\\'
    } else {
        '/'
    };
    if backup_dir.ends_with(separator) {
        format!("{backup_dir}{name}")
    } else {
        format!("{backup_dir}{separator}{name}")
    }
}

/// Runs the attempt; every event goes to `tx`, the result (also sent, last) is returned.
/// `before_result` runs after the action and before the result is sent (the agent refreshes its facts
/// there, so that the coordinator knows a node's new version by the time its step counts as done).
pub async fn execute(
    config: &AgentConfig,
    assignment: &Assignment,
    tx: mpsc::Sender<pb::StepEvent>,
    before_result: impl std::future::Future<Output = ()>,
) -> pb::StepFinished {
    let mut events = Events {
        attempt_id: assignment.attempt_id.clone(),
        seq: 0,
        tx,
    };
    let started = std::time::Instant::now();
    let mut result = run(config, assignment, &mut events).await;
    result.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    before_result.await;
    events.send(Kind::Finished(result.clone())).await;
    result
}

fn failed(error: impl Into<String>) -> pb::StepFinished {
    pb::StepFinished {
        outcome: pb::StepOutcome::Failed as i32,
        error: error.into(),
        ..Default::default()
    }
}

async fn run(config: &AgentConfig, a: &Assignment, events: &mut Events) -> pb::StepFinished {
    let Some(action) = config.actions.get(&a.action) else {
        return failed(built_in_unavailable(a.action));
    };
    let mut params = a.params.clone();
    params.insert("node".into(), config.node.clone());
    params.insert("run_id".into(), a.run_id.clone());
    params.insert("environment".into(), a.environment.clone());
    if a.action == ActionName::InstallSso
        && let (Some(expected), Some(installer)) =
            (&a.expected_installer_sha256, params.get("installer"))
    {
        match crate::hashing::sha256_file(Path::new(installer)).await {
            Ok((_, found)) if &found == expected => {}
            Ok((_, found)) => {
                return failed(format!(
                    "the installer {installer} has SHA-256 {found}, but the run's preflight read {expected}: it changed since; not installed"
                ));
            }
            Err(e) => return failed(format!("cannot read the installer {installer}: {e}")),
        }
    }
    let mut stdin_secret = None;
    let mut backup = None;
    if a.action == ActionName::BackupSecret {
        let Some(dir) = params.get("backup_dir").cloned() else {
            return failed("the coordinator sent no backup_dir for backup_secret");
        };
        let file = backup_file(
            &dir,
            &a.environment,
            &config.node,
            &a.run_id,
            SystemTime::now(),
        );
        params.insert("backup_file".into(), file.clone());
        backup = Some(PathBuf::from(file));
        match read_secret(config).await {
            Ok(secret) => stdin_secret = Some(secret),
            Err(e) => return failed(e),
        }
    }
    let args: Result<Vec<String>, _> = action.args.iter().map(|t| expand(t, &params)).collect();
    let args = match args {
        Ok(args) => args,
        Err(e) => return failed(format!("{}: {e}", a.action)),
    };
    let spec = CommandSpec {
        program: action.program.clone(),
        args,
        env: action.env.clone(),
        timeout: action.timeout.unwrap_or(a.timeout).min(a.timeout),
        stdin_secret,
    };
    let (report_tx, mut reports) = mpsc::channel(256);
    let runner = runner::run(&spec, report_tx);
    tokio::pin!(runner);
    // `Started` carries the process id: the journal keeps it, so that an agent restarted while the
    // step's process runs on waits for that process before it reports the attempt interrupted.
    let command = spec.display();
    let outcome = loop {
        tokio::select! {
            outcome = &mut runner => break outcome,
            Some(report) = reports.recv() => events.send(event_of(report, &command)).await,
        }
    };
    while let Ok(report) = reports.try_recv() {
        events.send(event_of(report, &command)).await;
    }
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => return failed(e.to_string()),
    };
    let mut result = pb::StepFinished {
        outcome: pb::StepOutcome::Succeeded as i32,
        exit_code: outcome.exit_code,
        stderr_tail: outcome.stderr_tail.clone(),
        outputs: outcome.outputs.clone().into_iter().collect(),
        ..Default::default()
    };
    let reboot = a.action == ActionName::InstallSso
        && install_exit(outcome.exit_code) == InstallExit::RebootPending;
    if outcome.timed_out {
        result.outcome = pb::StepOutcome::TimedOut as i32;
        result.error = outcome.failure(a.action.as_str());
        return result;
    }
    if !outcome.succeeded() && !reboot {
        result.outcome = pb::StepOutcome::Failed as i32;
        result.error = outcome.failure(a.action.as_str());
        return result;
    }
    result.reboot_pending = reboot;
    if let Some(file) = backup {
        match artifact(&file).await {
            Ok(artifact) => result.artifacts.push(artifact),
            Err(e) => {
                result.outcome = pb::StepOutcome::Failed as i32;
                result.error = format!(
                    "{} reported success, but the backup file {}: {e}",
                    a.action,
                    file.display()
                );
            }
        }
    }
    if a.action == ActionName::VerifySso
        && let Some(problem) = verify_problem(&outcome.outputs, params.get("target_version"))
    {
        result.outcome = pb::StepOutcome::Failed as i32;
        result.error = problem;
    }
    result
}

/// What an installer's exit code means (Windows Installer conventions).
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

fn event_of(report: Report, command: &str) -> Kind {
    match report {
        Report::Spawned(pid) => Kind::Started(pb::StepStarted {
            pid,
            command: command.to_string(),
        }),
        Report::Progress { percent, message } => {
            Kind::Progress(pb::StepProgress { percent, message })
        }
        Report::Output { key, value } => Kind::Output(pb::StepOutput { key, value }),
        Report::Stdout(line) => Kind::Log(pb::StepLog {
            stream: pb::LogStream::Stdout as i32,
            line,
        }),
        Report::Stderr(line) => Kind::Log(pb::StepLog {
            stream: pb::LogStream::Stderr as i32,
            line,
        }),
    }
}

/// What `verify_sso` found wrong in the results of the verify command, if anything.
pub fn verify_problem(
    outputs: &BTreeMap<String, String>,
    target: Option<&String>,
) -> Option<String> {
    if let (Some(found), Some(target)) = (outputs.get("version"), target)
        && found.trim() != target.trim()
    {
        return Some(format!("ESSO reports version {found}, expected {target}"));
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

async fn read_secret(config: &AgentConfig) -> Result<String, String> {
    let path = config.backup_password_file.as_ref().ok_or_else(|| {
        format!(
            "{}: backup_secret needs [secrets] backup_password_file (the master secret backup password)",
            config.path.display()
        )
    })?;
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| format!("the backup password file {}: {e}", path.display()))?;
    let secret = text.trim_end_matches(['\r', '\n']).to_string();
    if secret.chars().count() < 7 {
        // ssoconfig refuses shorter passwords (0xC0002A54); say so before running it.
        return Err(format!(
            "the backup password in {} is shorter than the 7 characters ESSO requires",
            path.display()
        ));
    }
    Ok(secret)
}

async fn artifact(path: &Path) -> Result<pb::Artifact, String> {
    let (size, sha256) = crate::hashing::sha256_file(path)
        .await
        .map_err(|e| format!("cannot be read: {e}"))?;
    if size == 0 {
        return Err("is empty".into());
    }
    Ok(pb::Artifact {
        kind: "secret-backup".into(),
        path: path.display().to_string(),
        size_bytes: size,
        sha256,
    })
}

fn built_in_unavailable(action: ActionName) -> String {
    if cfg!(windows) {
        format!(
            "the built-in {action} action (driving the Windows ESSO tools) is not built yet: configure [actions.{action}] in agent.toml"
        )
    } else {
        format!(
            "the built-in {action} action drives Windows tools and cannot run on this platform: configure [actions.{action}] in agent.toml"
        )
    }
}

#[cfg(test)]
mod tests;
