//! Runs one configured command as a child process (SPEC §6): arguments never pass through a shell,
//! a secret goes only to standard input, the step's timeout is enforced, standard output is read as the
//! line protocol (`::progress::`, `::output::`, anything else is log), and the last lines of standard
//! error are kept for the failure message.
//!
//! A step's program writes into files in the agent's state directory, never into pipes that die
//! with the agent, and the agent follows them; one that must outlive the agent runs under the step
//! host, which records its exit code for a restarted agent. Outside a step (the facts), and for a
//! program with a secret on its standard input or whose output is secret ([`CommandSpec::piped`]),
//! the output is read from pipes: a secret never reaches a file. The standard input's secret is
//! redacted from every line the program prints (`lines::redact`), before anything else sees it.
//!
//! # Layout
//! - `protocol`: the line protocol.
//! - [`lines`]: lines, capped, from a pipe or a followed file.
//! - [`files`]: where a step's programs write, how far the agent read, how they ended.
//! - [`step_host`]: the process a program that outlives the agent runs under.

pub mod files;
pub mod lines;
mod protocol;
pub mod step_host;
#[cfg(test)]
#[cfg(unix)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::process::{ChildStderr, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::host;
use crate::limits::{self, TAIL_LINE_MAX};
use files::{Exit, Program};
use lines::{Followed, Pipe};
pub use protocol::parse_line;

tokio::task_local! {
    /// The cancellation of the step whose task this is (the agent sets it around each step): a
    /// cancelled step's program and everything it started are ended like a timed-out one's, and no
    /// further program of the step starts.
    pub static CANCEL: CancellationToken;
    /// The folder for the output of the step whose task this is (`files::attempt_dir`; the agent
    /// sets it around each step): its programs write there instead of into pipes.
    pub static OUTPUT_DIR: PathBuf;
}

/// How many lines of standard error a failure carries.
pub const STDERR_TAIL: usize = 20;

/// How long to wait for more output after the process exited (a grandchild may hold the pipes open)…
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// …and for all of it (a grandchild that keeps writing).
const DRAIN_LIMIT: Duration = Duration::from_secs(20);
/// How often the output files of a running program are read.
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct CommandSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
    /// Written to standard input, then closed. Never logged.
    pub stdin_secret: Option<String>,
    /// An install's program (`cancel::never_stopped`): it must outlive an agent that is killed or
    /// stopped, and a restarted agent must learn how it ended, so in a step it runs under the step
    /// host (`step_host`).
    pub outlives_agent: bool,
    /// Its standard output is secret (an encryption key): read from a pipe, never put in a file.
    pub output_secret: bool,
}

impl CommandSpec {
    /// Whether its output is read from pipes, never from files: it is secret, or it may echo the
    /// secret on its standard input (a tool that repeats its prompt's answer). The one place that
    /// decides it.
    pub fn piped(&self) -> bool {
        self.output_secret || self.stdin_secret.is_some()
    }

    /// The command line as it may be shown (the secret is on stdin, never here).
    pub fn display(&self) -> String {
        std::iter::once(self.program.display().to_string())
            .chain(self.args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// What a running command reports, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The process started, with this id, start time (seconds since the epoch, 0: unknown) and
    /// command line (first, once).
    Spawned {
        pid: u32,
        started: u64,
        command: String,
    },
    Progress {
        percent: u32,
        message: String,
    },
    Output {
        key: String,
        value: String,
    },
    Stdout(String),
    Stderr(String),
    /// The program's output files were read up to here (stdout, stderr bytes), after the lines
    /// reported before: once those are journaled, a restarted agent follows the program from here
    /// (`Program::write_pos`, by the attempt's task). Sent for a program under the step host, and
    /// only when the position moved.
    ReadTo {
        program: Program,
        at: (u64, u64),
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `None` when the process was killed (timeout) or ended by a signal.
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub outputs: BTreeMap<String, String>,
    pub stderr_tail: Vec<String>,
    pub duration: Duration,
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        !self.timed_out && self.exit_code == Some(0)
    }

    /// A one-line reason for a failed outcome.
    pub fn failure(&self, what: &str) -> String {
        let code = match (self.timed_out, self.exit_code) {
            (true, _) => format!(
                "{what} did not finish within {}; it was stopped",
                humantime::format_duration(self.duration_rounded())
            ),
            (false, Some(code)) => format!("{what} exited with code {code}"),
            (false, None) => format!("{what} was ended by a signal"),
        };
        match self.stderr_tail.last() {
            Some(last) => format!("{code}: {last}"),
            None => code,
        }
    }

    fn duration_rounded(&self) -> Duration {
        Duration::from_secs(self.duration.as_secs())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// The step host could not start the program (its reason names it).
    #[error("{0}")]
    NotStarted(String),
    #[error("{program} was not started: the step was cancelled")]
    Cancelled { program: String },
}

/// Runs `spec`, sending each report to `reports` as it happens.
pub async fn run(spec: &CommandSpec, reports: mpsc::Sender<Report>) -> Result<Outcome, RunError> {
    let started = Instant::now();
    let cancel = CANCEL
        .try_with(CancellationToken::clone)
        .unwrap_or_default();
    let program = || spec.program.display().to_string();
    if cancel.is_cancelled() {
        return Err(RunError::Cancelled { program: program() });
    }
    let spawn_error = |source| RunError::Spawn {
        program: program(),
        source,
    };
    let piped = spec.piped();
    // A program under the step host has its files (its exit code, how far it was read) even when its
    // output comes through pipes.
    let files = OUTPUT_DIR
        .try_with(|dir| (spec.outlives_agent || !piped).then(|| Program::next(dir)))
        .ok()
        .flatten()
        .transpose()
        .map_err(spawn_error)?;
    let hosted = files.clone().filter(|_| spec.outlives_agent);
    let hosted = hosted.as_ref();
    let files = files.filter(|_| !piped);
    let mut command = command_for(spec, hosted, piped).map_err(spawn_error)?;
    command
        .envs(&spec.env)
        .stdin(if spec.stdin_secret.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        // A stopping agent (a service stop, a shutdown) leaves a running step's program alone: an
        // installer cut off halfway is worse than one that finishes. The journal makes the next start
        // wait for it and report the attempt, never run it again. A timeout still stops it (below).
        .kill_on_drop(false);
    match (&files, hosted) {
        // The host passes its pipes on to the program.
        (None, _) => command.stdout(Stdio::piped()).stderr(Stdio::piped()),
        // The host gives the program the files; its own output (none) goes nowhere.
        (Some(_), Some(_)) => command.stdout(Stdio::null()).stderr(Stdio::null()),
        (Some(files), None) => command
            .stdout(append(&files.out()).map_err(spawn_error)?)
            .stderr(append(&files.err()).map_err(spawn_error)?),
    };
    // Its own process group, so that a timeout stops the program and everything it started (on
    // Windows a job object: `host::Tree`).
    #[cfg(unix)]
    command.process_group(0);
    if let Some(hosted) = hosted {
        // Before the start: a restarted agent tells a hosted program by it.
        hosted.write_pos((0, 0)).map_err(spawn_error)?;
    }
    let mut child = command.spawn().map_err(spawn_error)?;
    let mut tree = Some(host::Tree::contain(&child));
    let deadline = tokio::time::Instant::now() + spec.timeout;
    let pid = child.id().unwrap_or(0);
    let _ = reports
        .send(Report::Spawned {
            pid,
            started: host::identify(pid).map_or(0, |p| p.started),
            command: spec.display(),
        })
        .await;
    if let (Some(secret), Some(mut stdin)) = (spec.stdin_secret.clone(), child.stdin.take()) {
        // From a task: a child that writes a lot before it reads stdin must not stall the deadline.
        // A program that exits without reading its input is its own failure; report that, not EPIPE.
        tokio::spawn(async move {
            let _ = stdin.write_all(secret.as_bytes()).await;
            let _ = stdin.write_all(b"\n").await;
        });
    }
    let mut output = match &files {
        Some(files) => Output::Files {
            stdout: Followed::open(&files.out(), 0).map_err(spawn_error)?,
            stderr: Followed::open(&files.err(), 0).map_err(spawn_error)?,
            hosted: hosted.map(|program| (program.clone(), (0, 0))),
        },
        None => Output::Pipes {
            stdout: child.stdout.take().map(Pipe::new),
            stderr: child.stderr.take().map(Pipe::new),
        },
    };
    let mut read = Read {
        secret: spec.stdin_secret.clone(),
        ..Read::default()
    };

    let mut timed_out = false;
    let mut status = None;
    // Set at the exit: output still in the pipes is read until they close, or until nothing came
    // for DRAIN_GRACE (a grandchild may hold them open), DRAIN_LIMIT at most. Files are read to
    // their end at once.
    let mut drain_limit = None;
    loop {
        if status.is_some() && !output.open() {
            break;
        }
        // Before the exit, the step's deadline; after it, the drain's. A slow consumer of the
        // reports must not hold the step past either.
        let until = drain_limit.map_or(deadline, |limit: tokio::time::Instant| {
            (tokio::time::Instant::now() + DRAIN_GRACE).min(limit)
        });
        // The output polled before any timer: a busy runtime that gets to this task late still
        // reads everything the program wrote before deciding that nothing more comes.
        let stop = tokio::select! {
            biased;
            lines = output.next(), if output.readable(status.is_none()) => {
                read.send_all(lines, &reports, until).await;
                output.report_position(&reports, until).await;
                false
            }
            exit = child.wait(), if status.is_none() => {
                status = Some(exit);
                drain_limit = Some(tokio::time::Instant::now() + DRAIN_LIMIT);
                false
            }
            () = tokio::time::sleep_until(until) => {
                if status.is_some() {
                    break;
                }
                timed_out = true;
                true
            }
            () = cancel.cancelled(), if status.is_none() => true,
        };
        // Past the deadline, or cancelled: the program and everything it started end.
        if stop {
            if let Some(tree) = tree.take() {
                tree.kill(&mut child);
            }
            status = Some(child.wait().await);
            drain_limit = Some(tokio::time::Instant::now() + DRAIN_LIMIT);
        }
    }
    let until = tokio::time::Instant::now() + DRAIN_GRACE;
    loop {
        let (rest, done) = output.rest();
        read.send_all(rest, &reports, until).await;
        output.report_position(&reports, until).await;
        if done {
            break;
        }
    }
    let exit_code = match (status, hosted.and_then(Program::read_exit)) {
        _ if timed_out => None,
        (_, Some(Exit::NotStarted(why))) => return Err(RunError::NotStarted(why)),
        (_, Some(exit)) => exit.code(),
        (Some(Ok(status)), None) => status.code(),
        (_, None) => None,
    };
    Ok(Outcome {
        exit_code,
        timed_out,
        stderr_tail: read.tail.iter().cloned().collect(),
        outputs: read.outputs(),
        duration: started.elapsed(),
    })
}

/// The program with its arguments, or the step host with them (`hosted`: the program's files).
/// A missing program is an error at the start either way.
fn command_for(
    spec: &CommandSpec,
    hosted: Option<&Program>,
    piped: bool,
) -> std::io::Result<Command> {
    if let Some(files) = hosted {
        if spec.program.components().count() > 1 {
            std::fs::metadata(&spec.program)?;
        }
        return step_host::command(files, piped, &spec.program, &spec.args);
    }
    let mut command = Command::new(&spec.program);
    command.args(&spec.args);
    Ok(command)
}

fn append(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().append(true).open(path)
}

/// What was read of the program's output so far: its results and the tail of its standard error.
#[derive(Default)]
struct Read {
    outputs: BTreeMap<String, String>,
    tail: VecDeque<String>,
    /// The secret on its standard input: redacted from every line.
    secret: Option<String>,
    /// Bytes of the outputs' keys and values, and how many new keys did not fit: the outputs stay
    /// within what a result carries (`limits::OUTPUTS_MAX`) however many a program prints.
    outputs_len: usize,
    outputs_dropped: usize,
}

impl Read {
    /// Reports each line (`true`: standard error) before `until` at the latest.
    async fn send_all(
        &mut self,
        lines: Vec<(bool, String)>,
        reports: &mpsc::Sender<Report>,
        until: tokio::time::Instant,
    ) {
        for (is_stderr, line) in lines {
            let line = lines::redact(line, self.secret.as_deref());
            let report = if is_stderr {
                if self.tail.len() == STDERR_TAIL {
                    self.tail.pop_front();
                }
                self.tail
                    .push_back(limits::truncated(&line, TAIL_LINE_MAX, ""));
                Report::Stderr(line)
            } else {
                parse_line(&line)
            };
            if let Report::Output { key, value } = &report {
                self.keep_output(key, value);
            }
            let _ = tokio::time::timeout_at(until, reports.send(report)).await;
        }
    }
}

impl Read {
    fn keep_output(&mut self, key: &str, value: &str) {
        let len = key.len() + value.len();
        match self.outputs.get_mut(key) {
            Some(old) => {
                self.outputs_len = (self.outputs_len + value.len()).saturating_sub(old.len());
                *old = value.to_string();
            }
            None if self.outputs_len + len <= limits::OUTPUTS_MAX => {
                self.outputs_len += len;
                self.outputs.insert(key.to_string(), value.to_string());
            }
            None => self.outputs_dropped += 1,
        }
    }

    /// The outputs, with a note of those that did not fit.
    fn outputs(mut self) -> BTreeMap<String, String> {
        if self.outputs_dropped > 0 {
            let (key, value) = limits::outputs_truncated(self.outputs_dropped);
            self.outputs.insert(key, value);
        }
        self.outputs
    }
}

/// The program's output: its pipes, or its files.
enum Output {
    Pipes {
        stdout: Option<Pipe<ChildStdout>>,
        stderr: Option<Pipe<ChildStderr>>,
    },
    Files {
        stdout: Followed,
        stderr: Followed,
        /// Under the step host: how far the output was read is reported (`Report::ReadTo`), and
        /// where it was last reported.
        hosted: Option<(Program, (u64, u64))>,
    },
}

impl Output {
    /// Whether more may come after the program's exit (pipes: until they close; files are read to
    /// their end at once).
    fn open(&self) -> bool {
        match self {
            Self::Pipes { stdout, stderr } => stdout.is_some() || stderr.is_some(),
            Self::Files { .. } => false,
        }
    }

    /// Whether [`Output::next`] may give lines (`running`: the program has not exited).
    fn readable(&self, running: bool) -> bool {
        match self {
            Self::Pipes { .. } => self.open(),
            Self::Files { .. } => running,
        }
    }

    /// The next lines (`true`: standard error): from the pipes as they come, from the files every
    /// [`POLL`] (a bounded part of what is there: the rest at the next). Cancel-safe.
    async fn next(&mut self) -> Vec<(bool, String)> {
        match self {
            Self::Pipes { stdout, stderr } => {
                // A pipe that closes ends its branch with `None`; it is then dropped.
                tokio::select! {
                    biased;
                    lines = read_pipe(stdout), if stdout.is_some() => tag(false, lines),
                    lines = read_pipe(stderr), if stderr.is_some() => tag(true, lines),
                }
            }
            Self::Files { stdout, stderr, .. } => {
                tokio::time::sleep(POLL).await;
                read_files(stdout, stderr, false).0
            }
        }
    }

    /// After the exit: the next part of what is left in the files, and whether that was all (the
    /// pipes were drained by [`Output::next`]).
    fn rest(&mut self) -> (Vec<(bool, String)>, bool) {
        match self {
            Self::Files { stdout, stderr, .. } => read_files(stdout, stderr, true),
            Self::Pipes { .. } => (Vec::new(), true),
        }
    }

    /// Reports how far a hosted program's files were read, when that moved.
    async fn report_position(
        &mut self,
        reports: &mpsc::Sender<Report>,
        until: tokio::time::Instant,
    ) {
        let Self::Files {
            stdout,
            stderr,
            hosted: Some((program, reported)),
        } = self
        else {
            return;
        };
        let at = (stdout.consumed, stderr.consumed);
        if at == *reported {
            return;
        }
        let report = Report::ReadTo {
            program: program.clone(),
            at,
        };
        if let Ok(Ok(())) = tokio::time::timeout_at(until, reports.send(report)).await {
            *reported = at;
        }
    }
}

/// The next lines of both files (a bounded part of them); `to_end`: the program ended, its last
/// unfinished lines are lines too. Whether the files were read to their end.
fn read_files(
    stdout: &mut Followed,
    stderr: &mut Followed,
    to_end: bool,
) -> (Vec<(bool, String)>, bool) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let out_done = stdout.read(&mut out, to_end);
    let err_done = stderr.read(&mut err, to_end);
    let lines = tag(false, out).into_iter().chain(tag(true, err)).collect();
    (lines, out_done && err_done)
}

async fn read_pipe<R: tokio::io::AsyncRead + Unpin>(pipe: &mut Option<Pipe<R>>) -> Vec<String> {
    let Some(open) = pipe.as_mut() else {
        return Vec::new();
    };
    match open.read().await {
        Some(lines) => lines,
        None => {
            *pipe = None;
            Vec::new()
        }
    }
}

fn tag(is_stderr: bool, lines: Vec<String>) -> Vec<(bool, String)> {
    lines.into_iter().map(|line| (is_stderr, line)).collect()
}
