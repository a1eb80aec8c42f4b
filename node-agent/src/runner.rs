//! Runs one configured command as a child process (SPEC §6): arguments never pass through a shell,
//! a secret goes only to standard input, the step's timeout is enforced, standard output is read as the
//! line protocol (`::progress::`, `::output::`, anything else is log), and the last lines of standard
//! error are kept for the failure message.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::host;

tokio::task_local! {
    /// The cancellation of the step whose task this is (the agent sets it around each step): a
    /// cancelled step's program and everything it started are ended like a timed-out one's, and no
    /// further program of the step starts.
    pub static CANCEL: CancellationToken;
}

/// How many lines of standard error a failure carries.
pub const STDERR_TAIL: usize = 20;

/// How long to wait for more output after the process exited (a grandchild may hold the pipes open)…
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// …and for all of it (a grandchild that keeps writing).
const DRAIN_LIMIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct CommandSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
    /// Written to standard input, then closed. Never logged.
    pub stdin_secret: Option<String>,
    /// An install's program (`cancel::never_stopped`): it must outlive an agent that is killed or
    /// stopped, so on Unix it runs with SIGPIPE ignored (see `command_for`).
    pub outlives_agent: bool,
}

impl CommandSpec {
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

/// Parses one line of standard output.
pub fn parse_line(line: &str) -> Report {
    if let Some(rest) = line.strip_prefix("::progress::") {
        let rest = rest.trim_start();
        let (number, message) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        if let Some(percent) = number.parse::<u32>().ok().filter(|p| *p <= 100) {
            return Report::Progress {
                percent,
                message: message.trim().to_string(),
            };
        }
    } else if let Some((key, value)) = line
        .strip_prefix("::output::")
        .and_then(|rest| rest.trim_start().split_once('='))
        .filter(|(key, _)| !key.trim().is_empty())
    {
        return Report::Output {
            key: key.trim().to_string(),
            value: value.trim_end().to_string(),
        };
    }
    Report::Stdout(line.to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} was not started: the step was cancelled")]
    Cancelled { program: String },
}

/// Runs `spec`, sending each report to `reports` as it happens.
pub async fn run(spec: &CommandSpec, reports: mpsc::Sender<Report>) -> Result<Outcome, RunError> {
    let started = Instant::now();
    let cancel = CANCEL
        .try_with(CancellationToken::clone)
        .unwrap_or_default();
    if cancel.is_cancelled() {
        return Err(RunError::Cancelled {
            program: spec.program.display().to_string(),
        });
    }
    let mut command = command_for(spec).map_err(|source| RunError::Spawn {
        program: spec.program.display().to_string(),
        source,
    })?;
    command
        .envs(&spec.env)
        .stdin(if spec.stdin_secret.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A stopping agent (a service stop, a shutdown) leaves a running step's program alone: an
        // installer cut off halfway is worse than one that finishes. The journal makes the next start
        // wait for it and report the attempt, never run it again. A timeout still stops it (below).
        .kill_on_drop(false);
    // Its own process group, so that a timeout stops the program and everything it started (on
    // Windows a job object: `host::Tree`).
    #[cfg(unix)]
    command.process_group(0);
    let mut child = command.spawn().map_err(|source| RunError::Spawn {
        program: spec.program.display().to_string(),
        source,
    })?;
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

    // Read in this task, the pipes polled before any timer: a busy runtime that gets to this task
    // late still reads everything the program wrote before deciding that nothing more comes.
    let mut stdout = child.stdout.take().map(Lines::new);
    let mut stderr = child.stderr.take().map(Lines::new);
    let mut outputs = BTreeMap::new();
    let mut tail: VecDeque<String> = VecDeque::with_capacity(STDERR_TAIL);
    let mut handle = |is_stderr: bool, line: String, outputs: &mut BTreeMap<String, String>| {
        let report = if is_stderr {
            if tail.len() == STDERR_TAIL {
                tail.pop_front();
            }
            tail.push_back(line.clone());
            Report::Stderr(line)
        } else {
            parse_line(&line)
        };
        if let Report::Output { key, value } = &report {
            outputs.insert(key.clone(), value.clone());
        }
        report
    };

    let mut timed_out = false;
    let mut status = None;
    // Set at the exit: output still in the pipes is read until they close, or until nothing came
    // for DRAIN_GRACE (a grandchild may hold them open), DRAIN_LIMIT at most.
    let mut drain_limit = None;
    loop {
        let pipes_open = stdout.is_some() || stderr.is_some();
        if status.is_some() && !pipes_open {
            break;
        }
        // Before the exit, the step's deadline; after it, the drain's. A slow consumer of the
        // reports must not hold the step past either.
        let until = drain_limit.map_or(deadline, |limit: tokio::time::Instant| {
            (tokio::time::Instant::now() + DRAIN_GRACE).min(limit)
        });
        let stop = tokio::select! {
            biased;
            line = next_line_of(&mut stdout, &mut stderr), if pipes_open => {
                if let Some((is_stderr, line)) = line {
                    let report = handle(is_stderr, line, &mut outputs);
                    let _ = tokio::time::timeout_at(until, reports.send(report)).await;
                }
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
    let exit_code = match status {
        Some(Ok(status)) if !timed_out => status.code(),
        _ => None,
    };
    Ok(Outcome {
        exit_code,
        timed_out,
        outputs,
        stderr_tail: tail.into_iter().collect(),
        duration: started.elapsed(),
    })
}

/// The program with its arguments. On Unix a program that must outlive an agent that is killed or
/// stopped (the next start waits for it) must not die of SIGPIPE at its next line of output once the
/// agent's end of the pipe is gone. An ignored signal stays ignored across `exec`, so `sh` sets that
/// and then becomes the program (the same process: its id, group and arguments are the program's).
/// It costs a shell per run, so only installs get it. A missing program is still an error at the
/// start, as a direct spawn's would be.
fn command_for(spec: &CommandSpec) -> std::io::Result<Command> {
    #[cfg(unix)]
    if spec.outlives_agent {
        if spec.program.components().count() > 1 {
            std::fs::metadata(&spec.program)?;
        }
        let mut command = Command::new("/bin/sh");
        command
            .args(["-c", "trap '' PIPE; exec \"$0\" \"$@\""])
            .arg(&spec.program)
            .args(&spec.args);
        return Ok(command);
    }
    let mut command = Command::new(&spec.program);
    command.args(&spec.args);
    Ok(command)
}

/// The lines of one of the program's pipes; `read_until` keeps what it read in `buf` when a select
/// drops it halfway, so no byte is lost between polls.
struct Lines<R> {
    reader: BufReader<R>,
    buf: Vec<u8>,
}

impl<R: tokio::io::AsyncRead + Unpin> Lines<R> {
    fn new(pipe: R) -> Self {
        Self {
            reader: BufReader::new(pipe),
            buf: Vec::new(),
        }
    }
}

/// The next line of either pipe (standard output first) and whether it came from standard error;
/// `None` once both closed.
async fn next_line_of<O, E>(
    stdout: &mut Option<Lines<O>>,
    stderr: &mut Option<Lines<E>>,
) -> Option<(bool, String)>
where
    O: tokio::io::AsyncRead + Unpin,
    E: tokio::io::AsyncRead + Unpin,
{
    loop {
        if stdout.is_none() && stderr.is_none() {
            return None;
        }
        // A pipe that closes ends its branch with `None`; the loop looks again without it.
        tokio::select! {
            biased;
            line = next_line(stdout), if stdout.is_some() => {
                if let Some(line) = line {
                    return Some((false, line));
                }
            }
            line = next_line(stderr), if stderr.is_some() => {
                if let Some(line) = line {
                    return Some((true, line));
                }
            }
        }
    }
}

/// The next line of `pipe`; `None` for ever once it closed (it is then dropped).
async fn next_line<R: tokio::io::AsyncRead + Unpin>(pipe: &mut Option<Lines<R>>) -> Option<String> {
    let lines = pipe.as_mut()?;
    match lines.reader.read_until(b'\n', &mut lines.buf).await {
        // At the end, a last line without a line end may wait in `buf` from a read that a select
        // interrupted: it is a line too.
        Ok(0) | Err(_) if lines.buf.is_empty() => {
            *pipe = None;
            None
        }
        Ok(_) | Err(_) => {
            // Windows tools write CRLF and sometimes a legacy code page: keep what is readable.
            let line = String::from_utf8_lossy(&lines.buf)
                .trim_end_matches(['\r', '\n'])
                .to_string();
            lines.buf.clear();
            Some(line)
        }
    }
}

// The runner's tests run /bin/sh.
#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_line_protocol() {
        assert_eq!(
            parse_line("::progress:: 40 copying files"),
            Report::Progress {
                percent: 40,
                message: "copying files".into()
            }
        );
        assert_eq!(
            parse_line("::progress:: 100"),
            Report::Progress {
                percent: 100,
                message: String::new()
            }
        );
        assert_eq!(
            parse_line("::output:: version=3.0.7"),
            Report::Output {
                key: "version".into(),
                value: "3.0.7".into()
            }
        );
        assert_eq!(
            parse_line("::output:: products=biztalk,his"),
            Report::Output {
                key: "products".into(),
                value: "biztalk,his".into()
            }
        );
        // Malformed protocol lines are kept as log output, not lost.
        for line in [
            "::progress:: 140 too much",
            "::progress:: x",
            "::output:: novalue",
            "hello",
        ] {
            assert_eq!(parse_line(line), Report::Stdout(line.into()));
        }
    }

    fn sh(script: &str, timeout: Duration) -> CommandSpec {
        CommandSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: BTreeMap::new(),
            timeout,
            stdin_secret: None,
            outlives_agent: false,
        }
    }

    /// The last line of a tool that ends without a line end is a line too, also when the program's
    /// exit is noticed while that line is being read (100 runs, to meet that interleaving).
    #[tokio::test]
    async fn a_last_line_without_a_line_end_is_kept() {
        for _ in 0..100 {
            let (tx, mut rx) = mpsc::channel(64);
            let outcome = run(&sh("printf 'first\\nlast'", Duration::from_secs(20)), tx)
                .await
                .unwrap();
            assert_eq!(outcome.exit_code, Some(0));
            let mut lines = Vec::new();
            while let Ok(report) = rx.try_recv() {
                if let Report::Stdout(line) = report {
                    lines.push(line);
                }
            }
            assert_eq!(lines, ["first", "last"]);
        }
    }

    #[tokio::test]
    async fn runs_a_command_and_reports_in_order() {
        let (tx, mut rx) = mpsc::channel(64);
        let spec = sh(
            "echo '::progress:: 50 half'; echo '::output:: version=3.0.7'; echo plain; echo oops >&2; exit 3",
            Duration::from_secs(20),
        );
        let outcome = run(&spec, tx).await.unwrap();
        assert_eq!(outcome.exit_code, Some(3));
        assert!(!outcome.succeeded());
        assert_eq!(
            outcome.outputs.get("version").map(String::as_str),
            Some("3.0.7")
        );
        assert_eq!(outcome.stderr_tail, ["oops"]);
        assert_eq!(outcome.failure("facts"), "facts exited with code 3: oops");
        let mut stdout = Vec::new();
        while let Ok(report) = rx.try_recv() {
            if !matches!(report, Report::Stderr(_) | Report::Spawned { .. }) {
                stdout.push(report);
            }
        }
        assert_eq!(
            stdout,
            [
                Report::Progress {
                    percent: 50,
                    message: "half".into()
                },
                Report::Output {
                    key: "version".into(),
                    value: "3.0.7".into()
                },
                Report::Stdout("plain".into()),
            ]
        );
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_is_stopped() {
        let (tx, _rx) = mpsc::channel(64);
        let outcome = run(&sh("sleep 30", Duration::from_millis(200)), tx)
            .await
            .unwrap();
        assert!(outcome.timed_out);
        assert_eq!(outcome.exit_code, None);
        assert!(outcome.duration < Duration::from_secs(10));
        assert!(!outcome.succeeded());
        assert!(
            outcome
                .failure("install_sso")
                .starts_with("install_sso did not finish within")
        );
    }

    /// A cancelled step's program and the child it started are ended at once, and nothing further
    /// of the step starts.
    #[tokio::test]
    async fn a_cancelled_command_is_ended_with_its_children() {
        let (tx, mut rx) = mpsc::channel(64);
        let token = CancellationToken::new();
        let cancel = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            cancel.cancel();
        });
        let outcome = CANCEL
            .scope(
                token.clone(),
                run(
                    &sh("sleep 30 & echo $!; wait", Duration::from_secs(60)),
                    tx.clone(),
                ),
            )
            .await
            .unwrap();
        assert!(!outcome.succeeded());
        assert!(!outcome.timed_out);
        assert!(outcome.duration < Duration::from_secs(10), "{outcome:?}");
        let mut child = None;
        while let Ok(report) = rx.try_recv() {
            if let Report::Stdout(line) = report {
                child = line.trim().parse::<u32>().ok();
            }
        }
        let child = child.expect("the child's pid");
        assert_eq!(host::identify(child), None, "the child {child} was ended");
        let e = CANCEL
            .scope(token, run(&sh("true", Duration::from_secs(5)), tx))
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "/bin/sh was not started: the step was cancelled"
        );
    }

    #[tokio::test]
    async fn a_grandchild_holding_the_output_open_neither_loses_it_nor_holds_the_step() {
        let (tx, _rx) = mpsc::channel(64);
        // The background sleep keeps stdout open long after the shell exits; what the shell wrote
        // before it exits is read, and the step ends one grace period later, not at the sleep's end.
        let outcome = run(
            &sh(
                "echo '::output:: version=3.0.7'; sleep 30 & echo '::output:: service=running'; exit 0",
                Duration::from_secs(60),
            ),
            tx,
        )
        .await
        .unwrap();
        assert!(outcome.succeeded());
        assert_eq!(
            outcome.outputs.get("version").map(String::as_str),
            Some("3.0.7")
        );
        assert_eq!(
            outcome.outputs.get("service").map(String::as_str),
            Some("running")
        );
        assert!(
            outcome.duration < Duration::from_secs(20),
            "{:?}",
            outcome.duration
        );
    }

    /// Many programs at once on a few threads: every line each wrote before it exited is read, even
    /// when the runtime gets to a runner long after the exit (the output used to be given up on).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_runtime_loses_no_output() {
        let runs: Vec<_> = (0..4000)
            .map(|i| {
                tokio::spawn(async move {
                    let (tx, mut rx) = mpsc::channel(64);
                    tokio::spawn(async move { while rx.recv().await.is_some() {} });
                    let script = format!("echo '::output:: version=3.0.{i}'; echo done");
                    (i, run(&sh(&script, Duration::from_secs(300)), tx).await)
                })
            })
            .collect();
        let mut lost = Vec::new();
        for run in runs {
            let (i, outcome) = run.await.unwrap();
            let outcome = outcome.unwrap();
            assert!(outcome.succeeded());
            if outcome.outputs.get("version") != Some(&format!("3.0.{i}")) {
                lost.push(i);
            }
        }
        assert!(
            lost.is_empty(),
            "output lost by {} of 4000 runs: {lost:?}",
            lost.len()
        );
    }

    /// An agent that is killed or stopped leaves its step's program running (the next start waits for
    /// it): the program's next line of output, into a pipe nobody reads any more, does not kill it.
    #[tokio::test]
    async fn a_program_outlives_the_agent_that_reads_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let done = dir.path().join("done");
        let script = format!(
            "sleep 0.5; echo late; echo later >&2; touch '{}'",
            done.display()
        );
        let (tx, _rx) = mpsc::channel(64);
        // The runner is dropped (the agent is gone) while the program runs.
        let mut spec = sh(&script, Duration::from_secs(60));
        spec.outlives_agent = true;
        let _ = tokio::time::timeout(Duration::from_millis(200), run(&spec, tx)).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done.exists() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(done.exists(), "the program died with the agent");
    }

    #[tokio::test]
    async fn the_secret_goes_to_stdin_only() {
        let (tx, _rx) = mpsc::channel(64);
        let mut spec = sh(
            "read pw; echo \"::output:: got=$pw\"",
            Duration::from_secs(20),
        );
        spec.stdin_secret = Some("s3cret".into());
        assert!(!spec.display().contains("s3cret"));
        let outcome = run(&spec, tx).await.unwrap();
        assert!(outcome.succeeded(), "{outcome:?}");
        assert_eq!(
            outcome.outputs.get("got").map(String::as_str),
            Some("s3cret")
        );
    }

    #[tokio::test]
    async fn a_missing_program_is_a_clear_error() {
        let (tx, _rx) = mpsc::channel(1);
        let mut spec = sh("", Duration::from_secs(1));
        spec.program = "/nonexistent/ssoconfig".into();
        let e = run(&spec, tx).await.unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot start /nonexistent/ssoconfig"),
            "{e}"
        );
    }
}
