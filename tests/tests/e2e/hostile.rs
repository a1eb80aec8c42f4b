//! Hostile conditions on the agent's side (issue 18): a tool that prints one line over the
//! coordinator's message limit, a journal an older agent filled with such a line, and an installer
//! that keeps printing after its agent was killed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_proto::pb;
use fleet_tests::{Agent, Coordinator, CoordinatorOptions, Fleet, tool_log};
use prost::Message;

use crate::durability::{start_detached, step_of, wait_final, wait_state, wait_tool};
use crate::upgrade::{FLEET, NODES, restart_agent_with, setup};

/// 5 MiB: over the coordinator's 4 MiB message limit.
const BIG: usize = 5 << 20;

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .flat_map(|e| {
            let path = e.path();
            if path.is_dir() {
                files_under(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

#[test]
fn a_5_mb_line_on_stdout_and_stderr_is_truncated_kept_in_a_file_and_the_run_finishes() {
    let env = [("a1", format!(", FAKE_VERIFY_BIG_LINE = \"{BIG}\""))];
    let env: Vec<(&str, &str)> = env.iter().map(|(n, e)| (*n, e.as_str())).collect();
    let s = setup(FLEET, &[], &env);
    let run_id = start_detached(&s);
    let run = wait_final(&s, &run_id, Duration::from_secs(120));
    assert_eq!(run["state"], "succeeded", "{run}");
    s.coordinator.wait_attached(&s.fleet, "a1", true);
    let index = NODES.iter().position(|(n, _)| *n == "a1").unwrap();
    let agent_log = s.agents[index].process.log_text();
    assert!(
        !agent_log.contains("re-attaching"),
        "the agent stayed attached:\n{agent_log}"
    );
    let log = s.step_log(&run_id, "a1", "verify");
    let marker = format!("… truncated, {BIG} bytes");
    assert_eq!(
        log.matches(&marker).count(),
        2,
        "one marker for stdout, one for stderr:\n{}",
        log.chars().take(4000).collect::<String>()
    );
    assert!(log.contains("full output: "), "the log names the file");
    assert!(log.len() < 1 << 20, "{} bytes of log", log.len());
    // The full lines are kept on the agent's side.
    let full: Vec<PathBuf> = files_under(&s.fleet.path("agents/a1/state"))
        .into_iter()
        .filter(|f| std::fs::metadata(f).is_ok_and(|m| m.len() > BIG as u64))
        .collect();
    assert_eq!(full.len(), 2, "the stdout and stderr files: {full:?}");
    for file in &full {
        assert!(
            log.contains(&file.display().to_string()),
            "{} named in the log",
            file.display()
        );
    }
}

/// The stand-in for rows an older agent journaled: one attempt whose result carries a 5 MiB stderr
/// line (in every hello), one with a 5 MiB log event.
fn journal_poison(journal: &Path) {
    let conn = rusqlite::Connection::open(journal).unwrap();
    let big = "e".repeat(BIG);
    let result = pb::StepFinished {
        outcome: pb::StepOutcome::Failed as i32,
        error: "setup exited with code 67".into(),
        stderr_tail: vec![big.clone()],
        ..Default::default()
    };
    let finished = pb::StepEvent {
        attempt_id: "old-result".into(),
        seq: 1,
        at_unix_ms: 1,
        kind: Some(pb::step_event::Kind::Finished(result.clone())),
    };
    let logged = pb::StepEvent {
        attempt_id: "old-log".into(),
        seq: 1,
        at_unix_ms: 1,
        kind: Some(pb::step_event::Kind::Log(pb::StepLog {
            stream: pb::LogStream::Stdout as i32,
            line: big,
        })),
    };
    conn.execute(
        "INSERT INTO attempts (id, epoch, run_id, step, state, accepted_at, finished_at, last_seq, result)
         VALUES ('old-result', 1, 'r', 'upgrade', 'finished', 1, 1, 1, ?1)",
        [result.encode_to_vec()],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO events (attempt_id, seq, body) VALUES ('old-result', 1, ?1)",
        [finished.encode_to_vec()],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO attempts (id, epoch, run_id, step, state, accepted_at, last_seq)
         VALUES ('old-log', 1, 'r', 'verify', 'waiting', 1, 1)",
        [],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO events (attempt_id, seq, body) VALUES ('old-log', 1, ?1)",
        [logged.encode_to_vec()],
    )
    .unwrap();
}

#[test]
fn a_journal_holding_an_over_limit_event_and_result_does_not_keep_the_agent_from_attaching() {
    let fleet = Fleet::new().unwrap();
    fleet.write("fleet.toml", crate::FLEET).unwrap();
    let coordinator =
        Coordinator::start(&fleet, "127.0.0.1:0", &CoordinatorOptions::default()).unwrap();
    let mut a1 = Agent::start_issued(&fleet, &coordinator.url(), "a1", "3.0.6").unwrap();
    coordinator.wait_attached(&fleet, "a1", true);
    a1.process.kill();
    coordinator.wait_attached(&fleet, "a1", false);
    let journal = fleet.path("agents/a1/state/journal.db");
    journal_poison(&journal);

    let a1 = Agent::start_issued(&fleet, &coordinator.url(), "a1", "3.0.6").unwrap();
    coordinator.wait_attached(&fleet, "a1", true);
    // Attached, and it stays so: nothing it sends is refused.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(coordinator.node(&fleet, "a1").unwrap()["attached"], true);
    let log = a1.process.log_text();
    assert!(!log.contains("re-attaching"), "{log}");
    // The error is recorded: in the agent's log, and in the journal instead of the rows.
    assert!(log.contains("over the limit"), "{log}");
    let conn = rusqlite::Connection::open(&journal).unwrap();
    let (body, result): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT MAX(length(body)) FROM events), (SELECT MAX(length(result)) FROM attempts)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(body < 1 << 20 && result < 1 << 20, "{body} {result}");
    let line: Vec<u8> = conn
        .query_row(
            "SELECT body FROM events WHERE attempt_id = 'old-log' AND seq = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let event = pb::StepEvent::decode(line.as_slice()).unwrap();
    let Some(pb::step_event::Kind::Log(replaced)) = event.kind else {
        panic!("{event:?}");
    };
    assert!(replaced.line.contains("over the limit"), "{replaced:?}");
}

#[test]
fn an_installer_outlives_its_killed_agent_and_the_restarted_agent_reports_its_output_and_exit_code()
{
    let env = [("a1", ", FAKE_SETUP_LINES = \"30\"")];
    let mut s = setup(FLEET, &[], &env);
    let run_id = start_detached(&s);
    wait_tool(&s.fleet, "a1", "setup", true);
    std::thread::sleep(Duration::from_millis(700));
    let index = NODES.iter().position(|(n, _)| *n == "a1").unwrap();
    s.agents[index].process.kill();
    s.agents[index] = restart_agent_with(&s, "a1", env[0].1, "");
    let halted = wait_state(&s, &run_id, "halted");
    // The installer ran to its end: its own last log line.
    assert!(
        tool_log(&s.fleet)
            .iter()
            .any(|e| e.node == "a1" && e.tool == "setup" && !e.start),
        "the installer died with its agent"
    );
    let upgrade = step_of(&halted, "a1", "upgrade");
    assert_eq!(upgrade["state"], "failed", "{halted}");
    let message = upgrade["message"].as_str().unwrap();
    assert!(
        message.starts_with("interrupted: the agent stopped while this step ran")
            && message.contains("exited with code 0"),
        "{message}"
    );
    let log = s.step_log(&run_id, "a1", "upgrade");
    for line in ["setup line 1 of 30", "setup line 30 of 30"] {
        assert!(log.contains(line), "{line:?} in\n{log}");
    }
}
