//! Durability (SPEC §5 invariants 4 and 5, §9): the coordinator SIGKILLed at random moments of a run
//! and restarted; agents killed and cut off mid-step. Judged by the simulated tools' own log (each
//! tool ran once, in the order of invariants 1–3) and by the coordinator's stored events (each one
//! once, in order, none missing).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fleet_tests::{Coordinator, CoordinatorOptions, Fleet, PATIENCE, eventually, tool_log};

use crate::upgrade::{FLEET, NODES, Setup, check_order, setup, setups};

/// Waits until the run is final, and returns it (`run show --output json`).
pub(crate) fn wait_final(s: &Setup, run_id: &str, within: Duration) -> serde_json::Value {
    eventually(within, &format!("run {run_id} finished"), || {
        let (_, run) = s.json(&["run", "show", run_id]);
        matches!(
            run["state"].as_str(),
            Some("succeeded" | "failed" | "aborted")
        )
        .then_some(run)
    })
}

pub(crate) fn start_detached(s: &Setup) -> String {
    let (code, started) = s.json(&["upgrade", "--all", "--detach"]);
    assert_eq!(code, Some(0), "{started}");
    started["run_id"].as_str().unwrap().to_string()
}

/// SIGKILLs the coordinator and starts a new one on the same address and state directory.
pub(crate) fn restart_coordinator(s: &mut Setup) {
    let addr = s.coordinator.addr.to_string();
    s.coordinator.process.kill();
    s.coordinator = eventually(PATIENCE, "the coordinator back on its port", || {
        Coordinator::start(&s.fleet, &addr, &CoordinatorOptions::default()).ok()
    });
}

/// Invariant 5 from the coordinator's database: every attempt that finished has its events 1..=n,
/// each once, the result last, and one `started`; every install reported each of its progress steps.
pub(crate) fn check_stored_events(fleet: &Fleet, run_id: &str) {
    let db = rusqlite::Connection::open_with_flags(
        fleet.path("state/ssofleet.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = db
        .prepare(
            "SELECT a.id, s.step, COALESCE(a.node, ''), e.seq, e.kind, e.payload
             FROM attempts a JOIN steps s ON s.run_id = a.run_id AND s.idx = a.idx
             JOIN attempt_events e ON e.attempt_id = a.id
             WHERE a.run_id = ?1 AND a.outcome IS NOT NULL ORDER BY a.id, e.seq",
        )
        .unwrap();
    type Row = (String, String, String, i64, String, String);
    let rows: Vec<Row> = stmt
        .query_map([run_id], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut by_attempt: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
    for row in &rows {
        by_attempt.entry(row.0.clone()).or_default().push(row);
    }
    let finished: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM attempts WHERE run_id = ?1 AND outcome IS NOT NULL AND node IS NOT NULL",
            [run_id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        by_attempt.len() as i64,
        finished,
        "every finished agent attempt has its events"
    );
    for (attempt, events) in &by_attempt {
        let (step, node) = (&events[0].1, &events[0].2);
        let seqs: Vec<i64> = events.iter().map(|e| e.3).collect();
        let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
        assert_eq!(seqs, expected, "{node} {step} ({attempt}): a gap");
        let kinds: Vec<&str> = events.iter().map(|e| e.4.as_str()).collect();
        assert_eq!(kinds.last(), Some(&"finished"), "{node} {step}: {kinds:?}");
        assert_eq!(
            kinds.iter().filter(|k| **k == "started").count(),
            1,
            "{node} {step}: {kinds:?}"
        );
        if step == "upgrade" || step == "upgrade-master" {
            let percents: Vec<u64> = events
                .iter()
                .filter(|e| e.4 == "progress")
                .map(|e| {
                    serde_json::from_str::<serde_json::Value>(&e.5).unwrap()["percent"]
                        .as_u64()
                        .unwrap()
                })
                .collect();
            assert_eq!(
                percents,
                [10, 30, 50, 70, 90, 100],
                "{node} {step}: progress"
            );
        }
    }
}

/// How long a run of the trial fleet takes unharmed, roughly; kills are spread over it.
const RUN_MS: u64 = 2_800;
const TRIALS: u64 = 20;
const WORKERS: u64 = 3;

fn slow_setup() -> Vec<(&'static str, &'static str)> {
    NODES
        .iter()
        .map(|(node, _)| (*node, ", FAKE_SETUP_SECONDS = \"0.4\""))
        .collect()
}

/// One trial: a two-environment run, the coordinator SIGKILLed after `kill_after`, restarted, and the
/// run finished. Returns what was in flight when it was killed (for the report).
fn kill_trial(kill_after: Duration) -> String {
    let mut s = setup(FLEET, &[("b2", "3.0.7")], &slow_setup());
    let run_id = start_detached(&s);
    std::thread::sleep(kill_after);
    let (_, before) = s.json(&["run", "show", &run_id]);
    restart_coordinator(&mut s);
    let run = wait_final(&s, &run_id, Duration::from_secs(90));
    let log = tool_log(&s.fleet);
    assert_eq!(
        run["state"],
        "succeeded",
        "killed after {kill_after:?}: {run}\ncoordinator log:\n{}",
        s.coordinator.process.log_text()
    );
    // Invariants 1–3, 4 (each tool once per node) and 6 (b2 is already current: untouched).
    check_order(&log, 2);
    let mut installed = setups(&log);
    installed.sort();
    assert_eq!(installed, ["a1", "a2", "a3", "b1", "m1", "m2"]);
    assert!(log.iter().all(|e| e.node != "b2"), "b2 was touched");
    check_stored_events(&s.fleet, &run_id);
    let running: Vec<String> = before["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .filter(|st| st["state"] == "running")
                .map(|st| {
                    format!(
                        "{} {}",
                        st["node"].as_str().unwrap_or("-"),
                        st["step"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let asked = s.coordinator.process.log_text().matches("asking ").count();
    format!(
        "{kill_after:?}: run {}, in flight: {}; the restarted coordinator asked agents {asked} time(s)",
        before["state"].as_str().unwrap_or("?"),
        if running.is_empty() {
            "-".into()
        } else {
            running.join(", ")
        }
    )
}

#[test]
fn the_coordinator_killed_at_random_moments_resumes_every_run_with_every_invariant() {
    let seed = std::env::var("FLEET_TRIAL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("FLEET_TRIAL_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    // Spread over the run: trial i is killed in the i-th slice of it, at a random point of the slice.
    let delays: Vec<Duration> = (0..TRIALS)
        .map(|i| Duration::from_millis(i * RUN_MS / TRIALS + rng.u64(0..RUN_MS / TRIALS)))
        .collect();
    let started = Instant::now();
    let reports: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let mine: Vec<Duration> = delays
                    .iter()
                    .copied()
                    .skip(w as usize)
                    .step_by(WORKERS as usize)
                    .collect();
                scope.spawn(move || mine.into_iter().map(kill_trial).collect::<Vec<_>>())
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert_eq!(reports.len() as u64, TRIALS);
    println!(
        "{TRIALS} coordinator kill trials, all runs succeeded with every invariant, in {:?}:",
        started.elapsed()
    );
    for r in reports {
        println!("  killed after {r}");
    }
}
