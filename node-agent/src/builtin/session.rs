//! One built-in action's run: its tools one after another through [`runner::run`] within the step's
//! deadline, their output forwarded as log lines (never the password, never key material), and the
//! results gathered into one [`Outcome`] the executor judges like a configured command's.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::Context;
use super::commands::Invocation;
use super::system::{ServiceState, ServiceStatus};
use super::tools::{Tool, Tools};
use crate::catalogue::ActionName;
use crate::runner::{self, CommandSpec, Outcome, Report, STDERR_TAIL};

/// How often a service's state is polled while waiting for it.
const POLL: Duration = Duration::from_secs(2);

/// A failed step: the message (last line of the failure) and the exit code to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Fail {
    pub message: String,
    pub exit_code: Option<i32>,
    pub timed_out: bool,
}

impl Fail {
    pub(super) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            exit_code: Some(1),
            timed_out: false,
        }
    }
}

/// A tool's run: its exit code and output lines.
#[derive(Debug, Clone, Default)]
pub(super) struct Ran {
    pub exit_code: Option<i32>,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

impl Ran {
    pub(super) fn stdout_text(&self) -> String {
        self.stdout.join("\n")
    }

    pub(super) fn all_text(&self) -> String {
        self.stdout
            .iter()
            .chain(&self.stderr)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub(super) fn ok(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// Whether a tool's output may be forwarded as log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Echo {
    Forward,
    /// Secret output (the encryption key): kept for the caller, only its line count is logged.
    Withhold,
    /// A query whose answer the caller reads and reports itself (a stand-in's registry read, the
    /// event log): nothing is forwarded, and its standard error never becomes a later failure's tail.
    Quiet,
}

pub(super) struct Session<'a> {
    pub action: ActionName,
    pub tools: &'a Tools,
    pub ctx: &'a Context,
    reports: mpsc::Sender<Report>,
    deadline: tokio::time::Instant,
    started: Instant,
    outputs: BTreeMap<String, String>,
    tail: VecDeque<String>,
}

impl<'a> Session<'a> {
    pub(super) fn new(
        action: ActionName,
        tools: &'a Tools,
        ctx: &'a Context,
        reports: mpsc::Sender<Report>,
    ) -> Self {
        Self {
            action,
            tools,
            ctx,
            reports,
            deadline: tokio::time::Instant::now() + ctx.timeout,
            started: Instant::now(),
            outputs: BTreeMap::new(),
            tail: VecDeque::new(),
        }
    }

    pub(super) fn tool(&self, tool: Tool) -> Result<PathBuf, Fail> {
        self.tools.require(self.action, tool).map_err(Fail::new)
    }

    pub(super) fn param(&self, name: &str) -> Option<&str> {
        self.ctx
            .params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    pub(super) fn require_param(&self, name: &str) -> Result<String, Fail> {
        self.param(name).map(str::to_string).ok_or_else(|| {
            Fail::new(format!(
                "the coordinator sent no {name} for {}",
                self.action
            ))
        })
    }

    pub(super) async fn progress(&self, percent: u32, message: impl Into<String>) {
        let _ = self
            .reports
            .send(Report::Progress {
                percent,
                message: message.into(),
            })
            .await;
    }

    pub(super) async fn output(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        self.outputs.insert(key.to_string(), value.clone());
        let _ = self
            .reports
            .send(Report::Output {
                key: key.to_string(),
                value,
            })
            .await;
    }

    /// A log line of the agent's own (on standard error when it explains a problem).
    pub(super) async fn note(&mut self, line: impl Into<String>, problem: bool) {
        let line = self.redact(line.into());
        if problem {
            self.push_tail(line.clone());
            let _ = self.reports.send(Report::Stderr(line)).await;
        } else {
            let _ = self.reports.send(Report::Stdout(line)).await;
        }
    }

    fn push_tail(&mut self, line: String) {
        if self.tail.len() == STDERR_TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    /// The session's own lines mention no secret either (a tool's lines are redacted by the runner).
    fn redact(&self, line: String) -> String {
        runner::lines::redact(line, self.ctx.stdin_secret.as_deref())
    }

    /// Runs one tool to its end (or the step's deadline).
    pub(super) async fn exec(
        &mut self,
        invocation: &Invocation,
        stdin: Option<String>,
        echo: Echo,
    ) -> Result<Ran, Fail> {
        let remaining = self
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        if remaining.is_zero() {
            return Err(self.timeout_fail());
        }
        // A failure is explained by the call that failed: what an earlier call wrote to standard
        // error (a warning of a tool that succeeded) is in the log, not in this call's failure.
        self.tail.clear();
        if echo != Echo::Quiet {
            self.note(format!("> {}", invocation.display()), false)
                .await;
        }
        let spec = CommandSpec {
            program: invocation.program.clone(),
            args: invocation.args.clone(),
            env: BTreeMap::new(),
            timeout: remaining,
            stdin_secret: stdin,
            outlives_agent: crate::cancel::never_stopped(self.action),
            output_secret: echo == Echo::Withhold,
        };
        let (tx, mut rx) = mpsc::channel(256);
        let run = runner::run(&spec, tx);
        tokio::pin!(run);
        let mut ran = Ran::default();
        let result = loop {
            tokio::select! {
                result = &mut run => break result,
                Some(report) = rx.recv() => self.take(report, echo, &mut ran).await,
            }
        };
        while let Ok(report) = rx.try_recv() {
            self.take(report, echo, &mut ran).await;
        }
        if echo == Echo::Withhold {
            self.note(
                format!("({} lines of output withheld: secret)", ran.stdout.len()),
                false,
            )
            .await;
        }
        let outcome = result.map_err(|e| Fail::new(e.to_string()))?;
        if outcome.timed_out {
            return Err(self.timeout_fail());
        }
        ran.exit_code = outcome.exit_code;
        Ok(ran)
    }

    async fn take(&mut self, report: Report, echo: Echo, ran: &mut Ran) {
        // A Windows tool does not speak the line protocol: a line that looks like it is just output.
        let line = match report {
            Report::Spawned { .. } => {
                if echo != Echo::Quiet {
                    let _ = self.reports.send(report).await;
                }
                return;
            }
            // Passed on as it is: the position is recorded once the lines before are journaled.
            Report::ReadTo { .. } => {
                let _ = self.reports.send(report).await;
                return;
            }
            Report::Stderr(line) => {
                ran.stderr.push(line.clone());
                if echo != Echo::Quiet {
                    self.push_tail(line.clone());
                    let _ = self.reports.send(Report::Stderr(line)).await;
                }
                return;
            }
            Report::Stdout(line) => line,
            Report::Progress { percent, message } => format!("::progress:: {percent} {message}"),
            Report::Output { key, value } => format!("::output:: {key}={value}"),
        };
        ran.stdout.push(line.clone());
        if echo == Echo::Forward {
            let _ = self.reports.send(Report::Stdout(line)).await;
        }
    }

    fn timeout_fail(&self) -> Fail {
        Fail {
            message: format!(
                "{} did not finish within {}; it was stopped",
                self.action,
                humantime::format_duration(Duration::from_secs(self.ctx.timeout.as_secs()))
            ),
            exit_code: None,
            timed_out: true,
        }
    }

    /// Polls the service until it is in `want` (or not installed), for at most `budget`.
    pub(super) async fn wait_for(
        &mut self,
        service: &str,
        want: ServiceState,
        budget: Duration,
    ) -> Result<ServiceStatus, Fail> {
        let until = tokio::time::Instant::now() + budget;
        loop {
            let status = self.service(service).await?;
            if status.state == want || status.state == ServiceState::NotInstalled {
                return Ok(status);
            }
            if tokio::time::Instant::now() + POLL > until.min(self.deadline) {
                return Err(Fail::new(format!(
                    "the {service} service is {} after {}, not {}",
                    status.state.as_str(),
                    humantime::format_duration(budget),
                    want.as_str()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The single outcome: exit code 0 (or `code`, e.g. the installer's) on success; the failure's
    /// message as the last line of the standard error tail otherwise.
    pub(super) async fn finish(mut self, result: Result<i32, Fail>) -> Outcome {
        let (exit_code, timed_out) = match result {
            Ok(code) => (Some(code), false),
            Err(fail) if fail.timed_out => {
                // Outcome::failure says it already: log it without repeating it in the tail.
                let _ = self.reports.send(Report::Stderr(fail.message)).await;
                (None, true)
            }
            Err(fail) => {
                self.note(fail.message.clone(), true).await;
                (fail.exit_code, false)
            }
        };
        Outcome {
            exit_code,
            timed_out,
            outputs: self.outputs,
            stderr_tail: self.tail.into_iter().collect(),
            duration: self.started.elapsed(),
        }
    }
}
