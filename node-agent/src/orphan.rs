//! A step's program that outlived the agent (its process, or one it started, still runs when the
//! agent starts: `Journal::open`'s orphans). One that ran under the step host (`runner::step_host`)
//! is followed: its output files from where the previous agent stopped reading, sent as the
//! attempt's events, and, once its tree has ended, its exit code from the exit file. The attempt is
//! then reported interrupted with that code: the program ran to its end, but the agent's own work
//! after it (its checks of the result, a reboot, ESSO's configuration) did not run, so the step's
//! outcome is for the operator to judge (retry or skip). Any other program is waited for and the
//! attempt reported interrupted, its outcome unknown.
//!
//! A program with a secret on its standard input never writes into its files (`CommandSpec::piped`):
//! an orphan's files hold no secret to redact, and what such a program printed after its agent went
//! is lost with the agent's pipes.

use std::path::Path;
use std::time::Duration;

use crate::executor::{agent_log, event_of};
use crate::host::{self, ProcessId};
use crate::journal::Journal;
use crate::limits::LogBudget;
use crate::runner::files::{self, Exit, Program};
use crate::runner::lines::Followed;
use crate::runner::{Report, parse_line};

/// How often an orphan's files are read and its tree looked at.
const POLL: Duration = Duration::from_millis(500);

/// Follows the attempt's program to its end, then records the attempt interrupted. One that ended
/// while no agent ran is read to its end at once, its exit code from its exit file.
pub async fn follow(journal: Journal, state_dir: &Path, attempt_id: &str, process: ProcessId) {
    let dir = files::attempt_dir(state_dir, attempt_id);
    let Some(program) = Program::last_hosted(&dir) else {
        journal.wait_and_interrupt(attempt_id, process).await;
        return;
    };
    let (out_at, err_at) = program.read_pos();
    let (mut stdout, mut stderr) = match (
        Followed::open(&program.out(), out_at),
        Followed::open(&program.err(), err_at),
    ) {
        (Ok(stdout), Ok(stderr)) => (stdout, stderr),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(
                attempt_id,
                "cannot read the output of the step's program: {e}"
            );
            journal.wait_and_interrupt(attempt_id, process).await;
            return;
        }
    };
    let mut follower = Follower {
        journal: &journal,
        attempt_id,
        // What the previous agent read of the attempt's output counted against the step's budget.
        budget: LogBudget::spent(program.read_before()),
        dir: dir.display().to_string(),
        failed: false,
    };
    follower.note(format!(
        "the agent restarted while the step's program (process {}) ran: its output follows from {}",
        process.pid,
        program.out().display()
    ));
    let mut recorded = (out_at, err_at);
    loop {
        let alive = tokio::task::spawn_blocking(move || host::tree_alive(process))
            .await
            .unwrap_or(false);
        // Running: a bounded part at each poll. Ended: all of it, a bounded part at a time.
        loop {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let out_done = stdout.read(&mut out, !alive);
            let err_done = stderr.read(&mut err, !alive);
            follower.lines(out, err);
            let at = (stdout.consumed, stderr.consumed);
            // Only once its lines are journaled, and only when it moved.
            if at != recorded && !follower.failed {
                match program.write_pos(at) {
                    Ok(()) => recorded = at,
                    Err(e) => {
                        tracing::warn!(attempt_id, "cannot record how far the output was read: {e}")
                    }
                }
            }
            if alive || (out_done && err_done) {
                break;
            }
        }
        if !alive {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let exit = program.read_exit();
    let ended = match &exit {
        Some(Exit::Code(code)) => format!("it exited with code {code}"),
        Some(Exit::NoCode(how)) => format!("it ended without an exit code {how}"),
        Some(Exit::NotStarted(why)) => format!("it could not start: {why}"),
        None => "its exit code was not recorded".to_string(),
    };
    let detail = format!(
        " (its process {} ran on, and has ended: {ended}; the agent's own work after it, its checks of the result, a reboot or ESSO's configuration, did not run)",
        process.pid
    );
    if let Err(e) = journal.interrupt(attempt_id, &detail, exit.and_then(|e| e.code())) {
        tracing::error!(attempt_id, "cannot record an interrupted attempt: {e}");
    }
}

/// Journals what an orphan printed, as the attempt's events (within the step's budget).
struct Follower<'a> {
    journal: &'a Journal,
    attempt_id: &'a str,
    budget: LogBudget,
    dir: String,
    /// An event could not be journaled: how far the output was read is no longer recorded.
    failed: bool,
}

impl Follower<'_> {
    fn lines(&mut self, out: Vec<String>, err: Vec<String>) {
        let reports = out
            .iter()
            .map(|line| parse_line(line))
            .chain(err.into_iter().map(Report::Stderr));
        for kind in reports.filter_map(event_of) {
            if let Some(kind) = self.budget.admit(kind, &self.dir) {
                self.record(kind);
            }
        }
    }

    fn note(&mut self, line: String) {
        self.record(agent_log(line));
    }

    fn record(&mut self, kind: fleet_proto::pb::step_event::Kind) {
        if let Err(e) = self.journal.append(self.attempt_id, kind) {
            self.failed = true;
            tracing::error!(
                attempt_id = self.attempt_id,
                "cannot journal a step event: {e}"
            );
        }
    }
}

// A hosted program that outlives its runner: started with /bin/sh.
#[cfg(test)]
#[cfg(unix)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use fleet_proto::pb;
    use tokio::sync::mpsc;

    use super::*;
    use crate::runner::{self, CommandSpec, Report};

    /// The agent that started `script` under the step host journals what it read in `agent_for`,
    /// and is gone; the program runs on. Its process.
    async fn start_and_lose(
        journal: &Journal,
        state: &Path,
        script: &str,
        agent_for: Duration,
    ) -> ProcessId {
        journal.accept("a", 1, "r", "upgrade").unwrap();
        let spec = CommandSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: BTreeMap::new(),
            timeout: Duration::from_secs(60),
            stdin_secret: None,
            outlives_agent: true,
            output_secret: false,
        };
        let (tx, mut rx) = mpsc::channel(64);
        let dir = files::attempt_dir(state, "a");
        let _ = tokio::time::timeout(
            agent_for,
            runner::OUTPUT_DIR.scope(dir, runner::run(&spec, tx)),
        )
        .await;
        // As the attempt's task does: the position once the lines before it are journaled.
        let mut process = None;
        while let Ok(report) = rx.try_recv() {
            match &report {
                Report::Spawned { pid, started, .. } => {
                    process = Some(ProcessId {
                        pid: *pid,
                        started: *started,
                    });
                }
                Report::ReadTo { program, at } => program.write_pos(*at).unwrap(),
                _ => {}
            }
            if let Some(kind) = event_of(report) {
                journal.append("a", kind).unwrap();
            }
        }
        process.unwrap()
    }

    /// The program's lines as journaled, and its attempt's result.
    fn journaled(journal: &Journal) -> (Vec<String>, pb::StepFinished) {
        let events = journal.unsent(&mut HashMap::new()).unwrap();
        let lines = events
            .iter()
            .filter_map(|e| match &e.kind {
                Some(pb::step_event::Kind::Log(log)) if log.stream() != pb::LogStream::Agent => {
                    Some(log.line.clone())
                }
                Some(pb::step_event::Kind::Progress(p)) => Some(p.message.clone()),
                _ => None,
            })
            .collect();
        let report = journal.report("a").unwrap();
        assert_eq!(report.state(), pb::AttemptState::Interrupted);
        (lines, report.result.unwrap())
    }

    const SCRIPT: &str = "echo one; sleep 0.8; echo '::progress:: 90 two'; echo bad >&2; exit 5";

    #[tokio::test]
    async fn a_restarted_agent_follows_the_orphan_from_where_it_stopped_and_reports_its_exit() {
        let state = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(state.path()).unwrap();
        let process =
            start_and_lose(&journal, state.path(), SCRIPT, Duration::from_millis(400)).await;
        tokio::time::timeout(
            Duration::from_secs(20),
            follow(journal.clone(), state.path(), "a", process),
        )
        .await
        .unwrap();
        let (lines, result) = journaled(&journal);
        assert_eq!(lines, ["one", "two", "bad"], "each line once, in order");
        assert_eq!(result.exit_code, Some(5));
        assert!(
            result
                .error
                .starts_with("interrupted: the agent stopped while this step ran")
                && result.error.contains("exited with code 5"),
            "{}",
            result.error
        );
    }

    /// A hosted program that ended while no agent ran: the next agent still reports what it printed
    /// after the last agent's position, and its exit code.
    #[tokio::test]
    async fn an_orphan_that_ended_while_no_agent_ran_is_reported_with_its_output_and_exit() {
        let state = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(state.path()).unwrap();
        let process =
            start_and_lose(&journal, state.path(), SCRIPT, Duration::from_millis(400)).await;
        drop(journal);
        let program = Program::last_hosted(&files::attempt_dir(state.path(), "a")).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while program.read_exit().is_none() || host::tree_alive(process) {
            assert!(
                std::time::Instant::now() < deadline,
                "the program did not end"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (journal, orphans) = Journal::open(state.path()).unwrap();
        assert_eq!(orphans, [("a".to_string(), process)]);
        tokio::time::timeout(
            Duration::from_secs(20),
            follow(journal.clone(), state.path(), "a", process),
        )
        .await
        .unwrap();
        let (lines, result) = journaled(&journal);
        assert_eq!(lines, ["one", "two", "bad"], "each line once, in order");
        assert_eq!(result.exit_code, Some(5));
    }
}
