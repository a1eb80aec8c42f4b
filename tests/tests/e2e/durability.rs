//! Durability (SPEC §5 invariants 4 and 5, §9): the coordinator SIGKILLed at random moments of a run
//! and restarted; agents killed and cut off mid-step. Judged by the simulated tools' own log (each
//! tool ran once, in the order of invariants 1–3) and by the coordinator's stored events (each one
//! once, in order, none missing).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fleet_tests::proxy::Fault;
use fleet_tests::{Coordinator, CoordinatorOptions, Fleet, PATIENCE, eventually, tool_log};

use crate::upgrade::{FLEET, NODES, Setup, check_order, setup, setups, setups_of};

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

/// Waits until run `run_id` is in `state` (e.g. "halted"); returns the run.
pub(crate) fn wait_state(s: &Setup, run_id: &str, state: &str) -> serde_json::Value {
    eventually(PATIENCE, &format!("run {run_id} {state}"), || {
        let (_, run) = s.json(&["run", "show", run_id]);
        (run["state"] == state).then_some(run)
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
            "SELECT a.id, s.step || ' ' || a.outcome, COALESCE(a.node, ''), e.seq, e.kind, e.payload
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
    // An upgrade the node turned out to have before it was sent again never left the coordinator:
    // it has no events (runs/recheck.rs).
    let finished: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM attempts WHERE run_id = ?1 AND outcome IS NOT NULL AND node IS NOT NULL
             AND error NOT LIKE 'not installed again:%'",
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
        // A successful install printed every progress step.
        if step == "upgrade Succeeded" || step == "upgrade-master Succeeded" {
            let percents: Vec<u64> = events
                .iter()
                .filter(|e| e.4 == "progress")
                .map(|e| {
                    serde_json::from_str::<serde_json::Value>(&e.5).unwrap()["percent"]
                        .as_u64()
                        .unwrap()
                })
                .collect();
            // What the simulated setup prints: all of it, once, in order (the middle part only when
            // it takes time).
            assert!(
                percents == [10, 30, 50, 70, 90, 100] || percents == [10, 100],
                "{node} {step}: progress {percents:?}"
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

/// Waits for the first fixture log line of `node`'s `tool` (start or end).
pub(crate) fn wait_tool(fleet: &Fleet, node: &str, tool: &str, start: bool) {
    eventually(PATIENCE, &format!("{node} {tool} start={start}"), || {
        tool_log(fleet)
            .iter()
            .any(|e| e.node == node && e.tool == tool && e.start == start)
            .then_some(())
    });
}

pub(crate) fn step_of<'a>(
    run: &'a serde_json::Value,
    node: &str,
    step: &str,
) -> &'a serde_json::Value {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["node"] == node && s["step"] == step)
        .unwrap_or_else(|| panic!("no {node} {step} in {run}"))
}

#[test]
fn connections_delayed_cut_and_reset_mid_step_lose_nothing_and_run_nothing_twice() {
    let env = [
        ("a1", ", FAKE_SETUP_SECONDS = \"1.2\""),
        ("b1", ", FAKE_SETUP_SECONDS = \"1.2\""),
    ];
    let s = crate::upgrade::setup_proxied(FLEET, &[], &env, &["a1", "b1"]);
    let (a1, b1) = (&s.proxies["a1"], &s.proxies["b1"]);
    a1.set(Fault::Delay(Duration::from_millis(20)));
    let run_id = start_detached(&s);
    // a1's link is cut a few bytes into a message while its install runs; b1's is reset.
    wait_tool(&s.fleet, "a1", "setup", true);
    a1.set(Fault::CutAfter(37));
    wait_tool(&s.fleet, "b1", "setup", true);
    b1.set(Fault::Reset);
    let run = wait_final(&s, &run_id, Duration::from_secs(60));
    assert_eq!(run["state"], "succeeded", "{run}");
    assert!(
        a1.log().iter().any(|l| l.starts_with("cut")),
        "{:?}",
        a1.log()
    );
    assert!(
        b1.log().iter().any(|l| l.starts_with("reset")),
        "{:?}",
        b1.log()
    );
    assert!(
        a1.connections() >= 2 && b1.connections() >= 2,
        "both re-attached"
    );
    let log = tool_log(&s.fleet);
    check_order(&log, 2);
    check_stored_events(&s.fleet, &run_id);
    assert_eq!(step_of(&run, "a1", "upgrade")["attempts"], 1);
    assert_eq!(step_of(&run, "b1", "upgrade")["attempts"], 1);
}

#[test]
fn a_blackholed_master_is_detached_halts_its_environment_and_its_result_still_counts() {
    let env = [("m1", ", FAKE_SETUP_SECONDS = \"4\"")];
    let s = crate::upgrade::setup_proxied(FLEET, &[], &env, &["m1"]);
    let proxy = &s.proxies["m1"];
    let run_id = start_detached(&s);
    wait_tool(&s.fleet, "m1", "setup", true);
    proxy.set(Fault::Blackhole);
    // Silent past the heartbeat timeout: shown detached, and its environment halts; its step is
    // not failed (the step timeout is far off).
    s.coordinator.wait_attached(&s.fleet, "m1", false);
    let halted = wait_state(&s, &run_id, "halted");
    assert!(
        halted["reason"]
            .as_str()
            .unwrap()
            .contains("master m1 of dev detached"),
        "{halted}"
    );
    assert_eq!(step_of(&halted, "m1", "upgrade-master")["state"], "running");
    let o = s.ctl(&["resume", &run_id]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("the master m1 is still detached"),
        "{o:?}"
    );
    // The install ends while the link is dead; the link comes back; the result arrives.
    wait_tool(&s.fleet, "m1", "setup", false);
    proxy.set(Fault::Pass);
    s.coordinator.wait_attached(&s.fleet, "m1", true);
    let delivered = eventually(PATIENCE, "the install's result", || {
        let (_, run) = s.json(&["run", "show", &run_id]);
        (step_of(&run, "m1", "upgrade-master")["state"] == "succeeded").then_some(run)
    });
    assert_eq!(
        delivered["state"], "halted",
        "a halt waits for the operator"
    );
    assert!(
        tool_log(&s.fleet).iter().all(|e| e.node == "m1"),
        "nothing else started while halted"
    );
    let o = s.ctl(&["resume", &run_id]);
    assert!(o.status.success(), "{o:?}");
    let run = wait_final(&s, &run_id, Duration::from_secs(60));
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(step_of(&run, "m1", "upgrade-master")["attempts"], 1);
    check_order(&tool_log(&s.fleet), 2);
    check_stored_events(&s.fleet, &run_id);
}

#[test]
fn an_agent_killed_mid_step_reports_the_attempt_interrupted_and_never_reruns_it() {
    agent_stopped_mid_step(false, false);
}

/// As above, but the interrupted install left ENTSSO stopped (its configuration cut off): the new
/// version alone does not make the retry skip the install; it runs again.
#[test]
fn a_retried_install_that_left_entsso_stopped_is_installed_again() {
    agent_stopped_mid_step(false, true);
}

/// A stopped agent (SIGTERM: a service stop) leaves the running installer alone, as a killed one does.
#[test]
fn an_agent_stopped_mid_step_lets_the_installer_finish_and_never_reruns_it() {
    agent_stopped_mid_step(true, false);
}

fn agent_stopped_mid_step(graceful: bool, entsso_stopped: bool) {
    let env = [("a1", ", FAKE_SETUP_SECONDS = \"3\"")];
    let mut s = setup(FLEET, &[], &env);
    let run_id = start_detached(&s);
    wait_tool(&s.fleet, "a1", "setup", true);
    let index = NODES.iter().position(|(n, _)| *n == "a1").unwrap();
    if graceful {
        s.agents[index].process.signal("TERM").unwrap();
        assert_eq!(s.agents[index].process.wait_exit(), Some(0));
    } else {
        s.agents[index].process.kill();
    }
    // The same agent, started again on its state directory.
    s.agents[index] = crate::upgrade::restart_agent_with(&s, "a1", env[0].1, "");
    let halted = wait_state(&s, &run_id, "halted");
    let upgrade = step_of(&halted, "a1", "upgrade");
    assert_eq!(upgrade["state"], "failed", "{halted}");
    // The setup outlived the killed agent: the attempt was reported only once it had ended.
    assert!(
        tool_log(&s.fleet)
            .iter()
            .any(|e| e.node == "a1" && e.tool == "setup" && !e.start),
        "reported interrupted while its setup still ran"
    );
    assert!(
        upgrade["message"]
            .as_str()
            .unwrap()
            .contains("ran on, and has ended"),
        "{upgrade}"
    );
    assert!(
        upgrade["message"]
            .as_str()
            .unwrap()
            .starts_with("interrupted: the agent stopped while this step ran"),
        "{upgrade}"
    );
    assert_eq!(setups_of(&s.fleet, "a1"), 1, "not run again");
    if entsso_stopped {
        s.fleet
            .write("agents/a1/esso/service", "stopped\n")
            .unwrap();
    }
    // The operator decides: retry. The node is asked first; the setup that ran on had installed the
    // target (with ENTSSO running), so it is not installed again, and the verify checks it.
    let o = s.ctl(&["retry", &run_id, "--node", "a1"]);
    assert!(o.status.success(), "{o:?}");
    let run = wait_final(&s, &run_id, Duration::from_secs(60));
    assert_eq!(run["state"], "succeeded", "{run}");
    let upgrade = step_of(&run, "a1", "upgrade");
    assert_eq!(upgrade["attempts"], 2, "{upgrade}");
    if entsso_stopped {
        assert_eq!(setups_of(&s.fleet, "a1"), 2, "installed again");
        return;
    }
    assert_eq!(setups_of(&s.fleet, "a1"), 1, "installed once");
    assert!(
        upgrade["message"]
            .as_str()
            .unwrap()
            .starts_with("not installed again: the node already reports ESSO 3.0.7"),
        "{upgrade}"
    );
    assert_eq!(step_of(&run, "a1", "verify")["state"], "succeeded");
    check_stored_events(&s.fleet, &run_id);
}

/// A master's agent killed mid-install: the environment halts (its master detached), the agent comes
/// back and reports the attempt interrupted. One `retry --node` goes on: no resume is needed, no
/// stale reason stays, and the install that had completed is not run again.
#[test]
fn a_masters_agent_killed_mid_install_needs_one_retry_and_is_not_installed_twice() {
    let env = [("m1", ", FAKE_SETUP_SECONDS = \"3\"")];
    let mut s = setup(FLEET, &[], &env);
    let run_id = start_detached(&s);
    wait_tool(&s.fleet, "m1", "setup", true);
    let index = NODES.iter().position(|(n, _)| *n == "m1").unwrap();
    s.agents[index].process.kill();
    let halted = wait_state(&s, &run_id, "halted");
    assert!(
        halted["reason"]
            .as_str()
            .unwrap()
            .contains("master m1 of dev detached"),
        "{halted}"
    );
    s.agents[index] = crate::upgrade::restart_agent_with(&s, "m1", env[0].1, "");
    let failed = eventually(PATIENCE, "m1's upgrade reported interrupted", || {
        let (_, run) = s.json(&["run", "show", &run_id]);
        (step_of(&run, "m1", "upgrade-master")["state"] == "failed").then_some(run)
    });
    assert_eq!(failed["state"], "halted", "{failed}");
    let o = s.ctl(&["retry", &run_id, "--node", "m1"]);
    assert!(o.status.success(), "{o:?}");
    let run = wait_final(&s, &run_id, Duration::from_secs(90));
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(setups_of(&s.fleet, "m1"), 1, "installed once");
    assert!(
        step_of(&run, "m1", "upgrade-master")["message"]
            .as_str()
            .unwrap()
            .starts_with("not installed again"),
        "{run}"
    );
}

#[test]
fn an_operator_following_a_run_rides_out_a_coordinator_restart() {
    let env = [("m1", ", FAKE_SETUP_SECONDS = \"1.5\"")];
    let mut s = setup(FLEET, &[("b2", "3.0.7")], &env);
    let follower = {
        let (url, tls) = (s.coordinator.url(), s.fleet.path("tls"));
        std::thread::spawn(move || {
            fleet_tests::fleetctl(&[
                "--coordinator",
                &url,
                "--tls-dir",
                fleet_tests::path_str(&tls).unwrap(),
                "--output",
                "json",
                "upgrade",
                "--all",
            ])
        })
    };
    wait_tool(&s.fleet, "m1", "setup", true);
    restart_coordinator(&mut s);
    let o = follower.join().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(stderr.contains("reconnecting"), "{stderr}");
    let run: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(run["state"], "succeeded", "{run}");
    check_order(&tool_log(&s.fleet), 2);
}
