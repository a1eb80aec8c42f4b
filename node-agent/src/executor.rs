//! Running one step attempt (SPEC §6): the coordinator names an action of the local catalogue and
//! supplies placeholder values; the agent runs its own command for that action, streams what happens
//! as numbered events (1, 2, …, the result last), and checks the result itself:
//! - `backup_secret`: the password goes to standard input only; the backup file is named after the
//!   environment, node, run and time, and must exist afterwards: its size and SHA-256 are reported;
//! - `install_sso`: exit codes 3010 and 1641 are success with a reboot pending;
//! - `verify_sso`: a reported `version` must be the target (as numbers) and `service` be running.
//!
//! What those rules are is `esso`'s; how an action runs (configured or built-in) is `action`'s.
//!
//! An install may end in a wait instead of a result:
//! - `attended` mode: the agent does not run the installer; it reports the instruction for the
//!   operator and waits. On the operator's approval ([`continue_after`]) it verifies, then finishes.
//! - exit code 1641 (the installer restarts the server), or 3010 under the `if-required` reboot
//!   policy (the agent restarts it): the agent reports that it waits for the reboot. The agent that
//!   starts in the next boot verifies and finishes the attempt ([`continue_after`]); a server still
//!   up after the step timeout (or a reboot command that failed) leaves the attempt waiting for a
//!   restart by hand, which still ends in that verification.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fleet_proto::pb::step_event::Kind;
use fleet_proto::{pb, unix_ms};
use tokio::sync::mpsc;

use crate::action::{self, Request};
use crate::catalogue::ActionName;
use crate::config::{AgentConfig, RebootPolicy};
use crate::esso::{self, RebootRequest};
use crate::host;
use crate::limits::LogBudget;
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
    /// `install_sso` only: run the installer, or wait for the operator to run it.
    pub install_mode: pb::InstallMode,
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
        let install_mode = a.install_mode();
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
            install_mode,
        })
    }
}

/// What an attempt's run hands to its journaling, in order.
#[derive(Debug)]
pub enum Journaled {
    Event(pb::StepEvent),
    /// A hosted program's output files were read up to here: once the events before are journaled,
    /// a restarted agent follows the program from here (`runner::Report::ReadTo`).
    ReadTo(runner::files::Program, (u64, u64)),
}

impl Journaled {
    pub fn event(self) -> Option<pb::StepEvent> {
        match self {
            Self::Event(event) => Some(event),
            Self::ReadTo(..) => None,
        }
    }
}

/// Numbers the events of one attempt and sends them on; its programs' output only up to the step's
/// log budget (`limits`: the rest is in their files).
struct Events {
    attempt_id: String,
    seq: u64,
    tx: mpsc::Sender<Journaled>,
    budget: LogBudget,
    /// Where the attempt's full output is (`runner::files`).
    files: String,
}

impl Events {
    fn new(config: &AgentConfig, attempt_id: &str, seq: u64, tx: mpsc::Sender<Journaled>) -> Self {
        Self {
            attempt_id: attempt_id.to_string(),
            seq,
            tx,
            budget: LogBudget::default(),
            files: runner::files::attempt_dir(&config.state_dir, attempt_id)
                .display()
                .to_string(),
        }
    }

    /// A program's report, as the attempt's event (or position).
    async fn report(&mut self, report: Report) {
        match report {
            Report::ReadTo { program, at } => {
                let _ = self.tx.send(Journaled::ReadTo(program, at)).await;
            }
            report => {
                if let Some(kind) = event_of(report) {
                    self.send(kind).await;
                }
            }
        }
    }

    async fn send(&mut self, kind: Kind) {
        let Some(kind) = self.budget.admit(kind, &self.files) else {
            return;
        };
        self.seq += 1;
        let event = pb::StepEvent {
            attempt_id: self.attempt_id.clone(),
            seq: self.seq,
            at_unix_ms: unix_ms(SystemTime::now()),
            kind: Some(kind),
        };
        let _ = self.tx.send(Journaled::Event(event)).await;
    }
}

/// How an attempt's run ended: with its result, or waiting (the operator, a reboot).
enum Ending {
    Finished(pb::StepFinished),
    Waits(pb::StepWaiting),
}

/// Runs the attempt; every event goes to `tx`, the result (also sent, last) is returned. `None`: the
/// attempt waits for the operator's attended install (its last event says so), and goes on with
/// [`continue_after`].
pub async fn execute(
    config: &AgentConfig,
    assignment: &Assignment,
    tx: mpsc::Sender<Journaled>,
) -> Option<pb::StepFinished> {
    let mut events = Events::new(config, &assignment.attempt_id, 0, tx);
    let started = std::time::Instant::now();
    match run(config, assignment, &mut events).await {
        Ending::Finished(mut result) => {
            result.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            events.send(Kind::Finished(result.clone())).await;
            Some(result)
        }
        Ending::Waits(waiting) => {
            events.send(Kind::Waiting(waiting)).await;
            None
        }
    }
}

/// Goes on with an attempt that waited (`why`: the operator approved the attended install, or the
/// server restarted): verifies the install with `verify_sso`, then finishes the attempt. Its events
/// continue after `last_seq`.
pub async fn continue_after(
    config: &AgentConfig,
    assignment: &Assignment,
    last_seq: u64,
    why: &str,
    tx: mpsc::Sender<Journaled>,
) -> pb::StepFinished {
    let mut events = Events::new(config, &assignment.attempt_id, last_seq, tx);
    let started = std::time::Instant::now();
    events
        .send(Kind::Log(pb::StepLog {
            stream: pb::LogStream::Agent as i32,
            line: format!("{why}: verifying the install (verify_sso)"),
        }))
        .await;
    let params = params_of(config, assignment);
    let request = Request {
        action: ActionName::VerifySso,
        params: &params,
        stdin_secret: None,
        timeout: assignment.timeout,
    };
    let mut result = match run_action(config, request, &mut events).await {
        Err(e) => failed(format!("{why}, but the install cannot be verified: {e}")),
        Ok(outcome) if !outcome.succeeded() => failed(format!(
            "{why}, but the install cannot be verified: {}",
            outcome.failure("verify_sso")
        )),
        Ok(outcome) => {
            let mut result = pb::StepFinished {
                outcome: pb::StepOutcome::Succeeded as i32,
                exit_code: outcome.exit_code,
                outputs: outcome.outputs.clone().into_iter().collect(),
                ..Default::default()
            };
            if let Some(problem) = esso::verify_problem(&outcome.outputs, &params) {
                result.outcome = pb::StepOutcome::Failed as i32;
                result.error = format!("{why}, but the install is not right: {problem}");
                result.stderr_tail = outcome.stderr_tail;
            }
            result
        }
    };
    result.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
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

/// The step's placeholder values: the coordinator's, and the agent's own.
fn params_of(config: &AgentConfig, a: &Assignment) -> BTreeMap<String, String> {
    let mut params = a.params.clone();
    params.insert("node".into(), config.node.clone());
    params.insert("run_id".into(), a.run_id.clone());
    params.insert("environment".into(), a.environment.clone());
    params
}

/// Runs an action (`action`: configured or built-in), its reports sent on as the attempt's events.
async fn run_action(
    config: &AgentConfig,
    request: Request<'_>,
    events: &mut Events,
) -> Result<runner::Outcome, String> {
    let (report_tx, reports) = mpsc::channel(256);
    forward(action::run(config, request, report_tx), reports, events).await
}

/// Runs one command of the agent's own (the reboot), its reports sent on as the attempt's events.
async fn run_spec(spec: &CommandSpec, events: &mut Events) -> Result<runner::Outcome, String> {
    let (report_tx, reports) = mpsc::channel(256);
    forward(runner::run(spec, report_tx), reports, events)
        .await
        .map_err(|e| e.to_string())
}

/// Drives `work` to its end while sending what it reports on as the attempt's events, in order
/// (`Started` carries the process id: the journal keeps it, so that an agent restarted while the
/// step's process runs on waits for that process before it reports the attempt interrupted).
async fn forward<T>(
    work: impl std::future::Future<Output = T>,
    mut reports: mpsc::Receiver<Report>,
    events: &mut Events,
) -> T {
    tokio::pin!(work);
    let outcome = loop {
        tokio::select! {
            outcome = &mut work => break outcome,
            Some(report) = reports.recv() => events.report(report).await,
        }
    };
    while let Ok(report) = reports.try_recv() {
        events.report(report).await;
    }
    outcome
}

async fn run(config: &AgentConfig, a: &Assignment, events: &mut Events) -> Ending {
    let params = params_of(config, a);
    if a.action == ActionName::InstallSso
        && let (Some(expected), Some(installer)) =
            (&a.expected_installer_sha256, params.get("installer"))
    {
        match crate::hashing::sha256_file(Path::new(installer)).await {
            Ok((_, found)) if &found == expected => {}
            Ok((_, found)) => {
                return Ending::Finished(failed(format!(
                    "the installer {installer} has SHA-256 {found}, but the run's preflight read {expected}: it changed since; not installed"
                )));
            }
            Err(e) => {
                return Ending::Finished(failed(format!(
                    "cannot read the installer {installer}: {e}"
                )));
            }
        }
    }
    if a.action == ActionName::InstallSso && a.install_mode == pb::InstallMode::Attended {
        return Ending::Waits(pb::StepWaiting {
            instruction: esso::attended_instruction(&config.node, &a.step, &a.run_id, &params),
            reason: pb::WaitReason::AttendedInstall as i32,
            boot_id: String::new(),
        });
    }
    // The boot the install runs in: a reboot it asks for has happened once the agent runs in another.
    let boot = if a.action == ActionName::InstallSso {
        host::boot_id(config.tools.boot_id.as_deref())
            .await
            .unwrap_or_else(|e| {
                tracing::warn!("cannot tell which boot this is ({e}); after a restart of the agent, the install is verified whether or not the server restarted");
                String::new()
            })
    } else {
        String::new()
    };
    let (result, reboot_request) = run_step(config, a, params, events).await;
    if let Some(request) = reboot_request {
        let code = result.exit_code;
        let reboots_itself = request == RebootRequest::Started;
        if reboots_itself || config.reboot == RebootPolicy::IfRequired {
            let reboot = Reboot {
                code,
                reboots_itself,
                boot,
            };
            return Ending::Waits(reboot.wait(config, a, events).await);
        }
        events
            .send(agent_log(
                "the install needs a reboot to finish; the reboot policy is \"never\", so the server is not restarted (restart it in a maintenance window)".to_string(),
            ))
            .await;
    }
    Ending::Finished(result)
}

pub(crate) fn agent_log(line: String) -> Kind {
    Kind::Log(pb::StepLog {
        stream: pb::LogStream::Agent as i32,
        line,
    })
}

/// How long the server has, after the reboot command, to go down before the command is run.
pub const REBOOT_DELAY_SECS: u32 = 30;

/// A reboot the install asks for.
struct Reboot {
    /// The installer's exit code.
    code: Option<i32>,
    /// 1641: the installer restarts the server itself; otherwise the agent does (`if-required`).
    reboots_itself: bool,
    /// The boot the install ran in (empty: unknown).
    boot: String,
}

impl Reboot {
    fn cause(&self) -> String {
        match self.code {
            Some(code @ (3010 | 1641)) => format!("the installer exited with {code}"),
            _ => "the install reported that a reboot is required".to_string(),
        }
    }

    /// The attempt waits for the reboot (`Reboot`): the agent that starts in the next boot verifies
    /// the install and finishes the attempt. Returns only when the reboot did not happen: the attempt
    /// then waits for someone to restart the server (`RestartByHand`, no timeout), which still ends
    /// in the verification.
    async fn wait(
        &self,
        config: &AgentConfig,
        a: &Assignment,
        events: &mut Events,
    ) -> pb::StepWaiting {
        let cause = self.cause();
        let instruction = if self.reboots_itself {
            format!(
                "{cause} and restarts {}: the agent verifies the install when it is back",
                config.node
            )
        } else {
            format!(
                "{cause}: the agent restarts {} (reboot policy if-required) and verifies the install when it is back",
                config.node
            )
        };
        events
            .send(Kind::Waiting(
                self.waiting(instruction, pb::WaitReason::Reboot),
            ))
            .await;
        if !self.reboots_itself {
            let comment = format!(
                "ssofleet: {} of run {} needs a reboot to finish the ESSO install",
                a.step, a.run_id
            );
            let problem = match reboot_command(config, &comment, a.timeout) {
                Err(e) => Some(format!("the server cannot be restarted: {e}")),
                Ok(spec) => match run_spec(&spec, events).await {
                    Ok(outcome) if outcome.succeeded() => None,
                    Ok(outcome) => Some(format!(
                        "the reboot failed: {}",
                        outcome.failure("the reboot command")
                    )),
                    Err(e) => Some(format!("the reboot failed: {e}")),
                },
            };
            if let Some(problem) = problem {
                return self.by_hand(&config.node, &problem);
            }
        }
        // The server goes down, and this process with it. Still here after the step's timeout: the
        // reboot did not happen.
        tokio::time::sleep(a.timeout).await;
        self.by_hand(
            &config.node,
            &format!(
                "the server did not restart within {} of the reboot",
                humantime::format_duration(a.timeout)
            ),
        )
    }

    fn by_hand(&self, node: &str, problem: &str) -> pb::StepWaiting {
        self.waiting(
            restart_by_hand(
                node,
                &format!("installed ({}), but {problem}", self.cause()),
            ),
            pb::WaitReason::RestartByHand,
        )
    }

    fn waiting(&self, instruction: String, reason: pb::WaitReason) -> pb::StepWaiting {
        pb::StepWaiting {
            instruction,
            reason: reason as i32,
            boot_id: self.boot.clone(),
        }
    }
}

/// What a step that waits for a restart by hand tells the operator (`what`: what happened).
pub fn restart_by_hand(node: &str, what: &str) -> String {
    format!(
        "{what}: restart {node}, and the agent verifies the install when it is back (or approve the step to verify now, or abort the run)"
    )
}

fn reboot_command(
    config: &AgentConfig,
    comment: &str,
    timeout: Duration,
) -> Result<CommandSpec, String> {
    let shutdown = config.tools.shutdown.as_deref().ok_or_else(|| {
        format!(
            "this platform has no shutdown.exe: set [tools] shutdown in {}",
            config.path.display()
        )
    })?;
    let invocation =
        crate::builtin::commands::shutdown_restart(shutdown, REBOOT_DELAY_SECS, comment);
    Ok(CommandSpec {
        program: invocation.program,
        args: invocation.args,
        env: BTreeMap::new(),
        timeout: timeout.min(Duration::from_secs(120)),
        stdin_secret: None,
        outlives_agent: false,
        output_secret: false,
    })
}

async fn run_step(
    config: &AgentConfig,
    a: &Assignment,
    mut params: BTreeMap<String, String>,
    events: &mut Events,
) -> (pb::StepFinished, Option<RebootRequest>) {
    let mut stdin_secret = None;
    let mut backup = None;
    if a.action == ActionName::BackupSecret {
        let Some(dir) = params.get("backup_dir").cloned() else {
            return (
                failed("the coordinator sent no backup_dir for backup_secret"),
                None,
            );
        };
        let now = SystemTime::now();
        let file = esso::backup_file(&dir, &a.environment, &config.node, &a.run_id, now);
        let secret = match read_secret(config).await {
            Ok(secret) => secret,
            Err(e) => return (failed(e), None),
        };
        let reminder = esso::backup_reminder(&a.environment, &config.node, now, &secret);
        params.insert("backup_file".into(), file.clone());
        params.insert("backup_reminder".into(), reminder.clone());
        backup = Some((PathBuf::from(file), reminder));
        stdin_secret = Some(secret);
    }
    let request = Request {
        action: a.action,
        params: &params,
        stdin_secret,
        timeout: a.timeout,
    };
    let outcome = match run_action(config, request, events).await {
        Ok(outcome) => outcome,
        Err(e) => return (failed(e), None),
    };
    let outcome = match configure_after_install(config, a, &params, outcome, events).await {
        Ok(outcome) => outcome,
        Err(e) => return (failed(e), None),
    };
    let mut result = pb::StepFinished {
        outcome: pb::StepOutcome::Succeeded as i32,
        exit_code: outcome.exit_code,
        stderr_tail: outcome.stderr_tail.clone(),
        outputs: outcome.outputs.clone().into_iter().collect(),
        ..Default::default()
    };
    let reboot = esso::reboot_request(outcome.exit_code, &outcome.outputs)
        .filter(|_| a.action == ActionName::InstallSso && !outcome.timed_out);
    if outcome.timed_out {
        result.outcome = pb::StepOutcome::TimedOut as i32;
        result.error = outcome.failure(a.action.as_str());
        return (result, None);
    }
    if !outcome.succeeded() && reboot.is_none() {
        result.outcome = pb::StepOutcome::Failed as i32;
        result.error = outcome.failure(a.action.as_str());
        return (result, None);
    }
    result.reboot_pending = reboot.is_some();
    // The secret backup: backup_secret's, or the new master secret's that configure_sso made when it
    // created an SSO system.
    let backup = backup.or_else(|| {
        let o = &outcome.outputs;
        (a.action == ActionName::InstallSso)
            .then(|| {
                Some((
                    PathBuf::from(o.get("backup_file")?),
                    o.get("backup_reminder")?.clone(),
                ))
            })
            .flatten()
    });
    if let Some((file, reminder)) = backup {
        match artifact(&file, reminder).await {
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
        && let Some(problem) = esso::verify_problem(&outcome.outputs, &params)
    {
        result.outcome = pb::StepOutcome::Failed as i32;
        result.error = problem;
    }
    (result, reboot)
}

/// The event of a program's report (also for one that outlived its agent: `orphan`); `None` for
/// how far its output was read, which is no event.
pub(crate) fn event_of(report: Report) -> Option<Kind> {
    Some(match report {
        Report::Spawned {
            pid,
            started,
            command,
        } => Kind::Started(pb::StepStarted {
            pid,
            command,
            process_started_unix_s: started,
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
        Report::ReadTo { .. } => return None,
    })
}

/// After an install that reports `configure_needed=true` (a fresh install, Host Integration Server's
/// upgrade), ESSO is configured: `configure_sso`, configured or built-in, with the backup password on
/// its standard input when it creates a new SSO system (its master secret is backed up at once). The
/// install's outcome stands, with the configuration's outputs added; a failed configuration fails the
/// step with its reason.
async fn configure_after_install(
    config: &AgentConfig,
    a: &Assignment,
    params: &BTreeMap<String, String>,
    mut install: runner::Outcome,
    events: &mut Events,
) -> Result<runner::Outcome, String> {
    let wanted = a.action == ActionName::InstallSso
        && !install.timed_out
        && esso::install_exit(install.exit_code) != esso::InstallExit::Failed
        && install
            .outputs
            .get("configure_needed")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if !wanted {
        return Ok(install);
    }
    if esso::reboot_request(install.exit_code, &install.outputs) == Some(RebootRequest::Started) {
        return Err(
            "installed, but the installer restarts the server (1641) before ESSO can be configured: \
             when it is back, configure ESSO (configure_sso, or the product's configuration tool) and \
             verify it by hand"
                .into(),
        );
    }
    let create = esso::SsoConfigure::from_param(params.get("sso_configure").map(String::as_str))
        == esso::SsoConfigure::Create;
    let stdin_secret = if create {
        Some(read_secret(config).await?)
    } else {
        None
    };
    let request = Request {
        action: ActionName::ConfigureSso,
        params,
        stdin_secret,
        timeout: a.timeout,
    };
    let configured = run_action(config, request, events)
        .await
        .map_err(|e| format!("installed, but ESSO cannot be configured: {e}"))?;
    if !configured.succeeded() {
        return Err(format!(
            "installed, but ESSO's configuration failed: {}",
            configured.failure("configure_sso")
        ));
    }
    install.outputs.extend(configured.outputs);
    Ok(install)
}

async fn read_secret(config: &AgentConfig) -> Result<String, String> {
    let path = config.backup_password_file.as_ref().ok_or_else(|| {
        format!(
            "{}: the master secret's backup needs [secrets] backup_password_file (its password)",
            config.path.display()
        )
    })?;
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| format!("the backup password file {}: {e}", path.display()))?;
    let secret = fleet_proto::names::secret_text(&text).to_string();
    match esso::password_problem(&secret) {
        Some(problem) => Err(format!("{}: {problem}", path.display())),
        None => Ok(secret),
    }
}

/// The backup as the run records it: where, how big, its SHA-256, and its password reminder.
async fn artifact(path: &Path, reminder: String) -> Result<pb::Artifact, String> {
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
        note: format!("password reminder: {reminder}"),
    })
}

// The executor's tests drive POSIX shell scripts (tests/fixtures).
#[cfg(test)]
#[cfg(unix)]
mod tests;
