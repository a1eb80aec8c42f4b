//! A step's program that outlived the agent (its process, or one it started, still runs when the
//! agent starts: `Journal::open`'s orphans). One that ran under the step host (`runner::step_host`)
//! is followed: its output files from where the previous agent stopped reading, sent as the
//! attempt's events, and, once its tree has ended, its exit code from the exit file. The attempt is
//! then reported interrupted with that code: the program ran to its end, but the agent's own work
//! after it (its checks of the result, a reboot, ESSO's configuration) did not run, so the step's
//! outcome is for the operator to judge (retry or skip). Any other program is waited for and the
//! attempt reported interrupted, its outcome unknown.

use std::path::Path;
use std::time::Duration;

use crate::executor::{agent_log, event_of};
use crate::host::{self, ProcessId};
use crate::journal::Journal;
use crate::limits::LogBudget;
use crate::runner::files::{self, Exit, Program};
use crate::runner::lines::Followed;
use crate::runner::parse_line;

/// How often an orphan's files are read and its tree looked at.
const POLL: Duration = Duration::from_millis(500);

/// Follows the attempt's program to its end, then records the attempt interrupted.
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
        budget: LogBudget::default(),
        dir: dir.display().to_string(),
    };
    follower.note(format!(
        "the agent restarted while the step's program (process {}) ran: its output follows from {}",
        process.pid,
        program.out().display()
    ));
    loop {
        let alive = tokio::task::spawn_blocking(move || host::tree_alive(process))
            .await
            .unwrap_or(false);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        if alive {
            stdout.read(&mut out);
            stderr.read(&mut err);
        } else {
            stdout.read_to_end(&mut out);
            stderr.read_to_end(&mut err);
        }
        follower.lines(out, err);
        if let Err(e) = program.write_pos((stdout.consumed, stderr.consumed)) {
            tracing::warn!(attempt_id, "cannot record how far the output was read: {e}");
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

/// Journals what an orphan printed, as the attempt's events.
struct Follower<'a> {
    journal: &'a Journal,
    attempt_id: &'a str,
    budget: LogBudget,
    dir: String,
}

impl Follower<'_> {
    fn lines(&mut self, out: Vec<String>, err: Vec<String>) {
        for line in out {
            self.report(parse_line(&line), line.len());
        }
        for line in err {
            let len = line.len();
            self.report(crate::runner::Report::Stderr(line), len);
        }
    }

    fn report(&mut self, report: crate::runner::Report, len: usize) {
        use crate::runner::Report;
        let kind = match report {
            Report::Stdout(_) | Report::Stderr(_) => match self.budget.take(len, &self.dir) {
                (true, _) => event_of(report),
                (false, None) => return,
                (false, Some(marker)) => agent_log(marker),
            },
            report => event_of(report),
        };
        self.record(kind);
    }

    fn note(&mut self, line: String) {
        self.record(agent_log(line));
    }

    fn record(&self, kind: fleet_proto::pb::step_event::Kind) {
        if let Err(e) = self.journal.append(self.attempt_id, kind) {
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

    #[tokio::test]
    async fn a_restarted_agent_follows_the_orphan_from_where_it_stopped_and_reports_its_exit() {
        let state = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(state.path()).unwrap();
        journal.accept("a", 1, "r", "upgrade").unwrap();
        let spec = CommandSpec {
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "echo one; sleep 0.8; echo '::progress:: 90 two'; echo bad >&2; exit 5".into(),
            ],
            env: BTreeMap::new(),
            timeout: Duration::from_secs(60),
            stdin_secret: None,
            outlives_agent: true,
            output_secret: false,
        };
        // The agent that started it reads "one", journals it, and is gone.
        let (tx, mut rx) = mpsc::channel(64);
        let dir = files::attempt_dir(state.path(), "a");
        let _ = tokio::time::timeout(
            Duration::from_millis(400),
            runner::OUTPUT_DIR.scope(dir, runner::run(&spec, tx)),
        )
        .await;
        let mut process = None;
        while let Ok(report) = rx.try_recv() {
            if let Report::Spawned { pid, started, .. } = report {
                process = Some(ProcessId { pid, started });
            }
            journal.append("a", event_of(report)).unwrap();
        }
        let process = process.unwrap();
        tokio::time::timeout(
            Duration::from_secs(20),
            follow(journal.clone(), state.path(), "a", process),
        )
        .await
        .unwrap();
        let events = journal.unsent(&mut HashMap::new()).unwrap();
        let lines: Vec<String> = events
            .iter()
            .filter_map(|e| match &e.kind {
                Some(pb::step_event::Kind::Log(log)) if log.stream() != pb::LogStream::Agent => {
                    Some(log.line.clone())
                }
                Some(pb::step_event::Kind::Progress(p)) => Some(p.message.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(lines, ["one", "two", "bad"], "each line once, in order");
        let report = journal.report("a").unwrap();
        assert_eq!(report.state(), pb::AttemptState::Interrupted);
        let result = report.result.unwrap();
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
}
