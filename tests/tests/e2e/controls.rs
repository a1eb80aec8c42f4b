//! Operator control of a run: pause (in-flight steps finish, nothing new starts), resume, retry,
//! skip and abort, each recorded in the audit trail with the operator named by the certificate.

use std::time::Duration;

use fleet_tests::{PATIENCE, eventually, fleetctl, path_str, tool_log};

use crate::durability::{start_detached, step_of, wait_final, wait_tool};
use crate::upgrade::{FLEET, Setup, setup};

/// `fleetctl` as operator `alice` (her own certificate).
fn as_alice(s: &Setup, args: &[&str]) -> std::process::Output {
    let url = s.coordinator.url();
    let dir = s.fleet.path("ops/alice");
    let mut all = vec![
        "--coordinator",
        url.as_str(),
        "--tls-dir",
        path_str(&dir).unwrap(),
    ];
    all.extend_from_slice(args);
    fleetctl(&all)
}

fn run_of(s: &Setup, run_id: &str) -> serde_json::Value {
    s.json(&["run", "show", run_id]).1
}

fn wait_for(
    s: &Setup,
    run_id: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    eventually(PATIENCE, what, || {
        Some(run_of(s, run_id)).filter(|r| check(r))
    })
}

#[test]
fn pause_resume_retry_skip_and_abort_steer_a_run_and_the_audit_names_who() {
    let env = [
        ("m1", ", FAKE_SETUP_SECONDS = \"1.5\""),
        ("a1", ", FAKE_SETUP_FAIL_TIMES = \"1\""),
        ("a2", ", FAKE_SETUP_EXIT = \"67\""),
        ("m2", ", FAKE_SETUP_SECONDS = \"2\""),
    ];
    let s = setup(FLEET, &[], &env);
    let o = fleetctl(&[
        "certs",
        "issue",
        "--out",
        path_str(&s.fleet.path("ops/alice")).unwrap(),
        "--ca-dir",
        path_str(&s.fleet.path("tls")).unwrap(),
        "--operator",
        "alice",
    ]);
    assert!(o.status.success(), "{o:?}");
    let run_id = start_detached(&s);

    // Pause while the master installs: the install finishes, its verify does not start.
    wait_tool(&s.fleet, "m1", "setup", true);
    let o = as_alice(&s, &["pause", &run_id]);
    assert!(o.status.success(), "{o:?}");
    wait_tool(&s.fleet, "m1", "setup", false);
    let paused = wait_for(&s, &run_id, "the install done while paused", |r| {
        step_of(r, "m1", "upgrade-master")["state"] == "succeeded"
    });
    assert_eq!(paused["state"], "paused", "{paused}");
    std::thread::sleep(Duration::from_millis(800));
    let log = tool_log(&s.fleet);
    assert!(
        log.last()
            .is_some_and(|e| e.node == "m1" && e.tool == "setup" && !e.start),
        "nothing new started after the paused install ended: {log:?}"
    );
    assert_eq!(
        step_of(&run_of(&s, &run_id), "m1", "verify-master")["state"],
        "pending"
    );

    // Resume: members a1 and a2 fail, beyond max_failures 0: halted.
    let o = s.ctl(&["resume", &run_id]);
    assert!(o.status.success(), "{o:?}");
    let halted = wait_for(&s, &run_id, "a1 and a2 failed", |r| {
        step_of(r, "a1", "upgrade")["state"] == "failed"
            && step_of(r, "a2", "upgrade")["state"] == "failed"
    });
    assert_eq!(halted["state"], "halted", "{halted}");

    // Retry a1: a2's failure still holds the run, and says so; skip a2: the run goes on, a1 again.
    let o = as_alice(
        &s,
        &[
            "retry",
            &run_id,
            "--node",
            "a1",
            "--comment",
            "transient MSI lock",
        ],
    );
    assert!(o.status.success(), "{o:?}");
    let retried = run_of(&s, &run_id);
    assert_eq!(retried["state"], "halted", "{retried}");
    assert!(
        retried["reason"]
            .as_str()
            .unwrap()
            .starts_with("1 member failure(s) in dev exceed max_failures = 0"),
        "{retried}"
    );
    assert_eq!(step_of(&retried, "a1", "upgrade")["state"], "pending");
    let o = s.ctl(&["skip", &run_id, "--node", "a2"]);
    assert!(o.status.success(), "{o:?}");
    wait_for(&s, &run_id, "a1 verified", |r| {
        step_of(r, "a1", "verify")["state"] == "succeeded"
    });

    // Abort while the prod master installs: it finishes (an install is never stopped halfway, and
    // the run says so), nothing else of prod starts.
    wait_tool(&s.fleet, "m2", "setup", true);
    let o = as_alice(&s, &["abort", &run_id]);
    assert!(o.status.success(), "{o:?}");
    let run = wait_final(&s, &run_id, Duration::from_secs(30));
    assert_eq!(run["state"], "aborted", "{run}");
    assert!(
        run["reason"].as_str().unwrap().starts_with("aborted; waiting for upgrade-master on m2 (prod) to end: an install is never stopped halfway"),
        "{run}"
    );
    wait_tool(&s.fleet, "m2", "setup", false);
    std::thread::sleep(Duration::from_millis(500));
    let log = tool_log(&s.fleet);
    assert!(
        log.iter().all(|e| e.node != "b1" && e.node != "b2"),
        "nothing of prod after the abort: {log:?}"
    );
    assert_eq!(
        step_of(&run_of(&s, &run_id), "m2", "upgrade-master")["state"],
        "succeeded",
        "the step in flight finished and its result was kept"
    );
    // Refused on a finished run, and said why.
    let o = s.ctl(&["resume", &run_id]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");

    // Who did what, from the certificates.
    let (_, audit) = s.json(&["audit", &run_id]);
    let entries: Vec<String> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {} {} {}",
                e["operator"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
                e["node"].as_str().unwrap_or("-"),
                e["step"].as_str().unwrap_or("-")
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            "admin start - -",
            "alice pause - -",
            "admin resume - -",
            "alice retry a1 upgrade",
            "admin skip a2 upgrade",
            "alice abort - -",
        ]
    );
    assert!(
        audit[3]["detail"] == "transient MSI lock"
            && audit[3]["at"].as_str().is_some_and(|t| t.starts_with("20")),
        "{audit}"
    );
}

/// Abort ends a running step that is not an install: its agent ends the step's programs (the tool
/// and the child it started) and reports the step cancelled, long before the tool would have ended.
#[test]
fn abort_cancels_a_running_backup_and_ends_its_programs() {
    let s = setup(FLEET, &[], &[("m1", ", FAKE_SSOCONFIG_SECONDS = \"60\"")]);
    let run_id = start_detached(&s);
    wait_tool(&s.fleet, "m1", "backup", true);
    let o = s.ctl(&["abort", &run_id]);
    assert!(o.status.success(), "{o:?}");
    let run = wait_for(&s, &run_id, "the backup cancelled", |r| {
        step_of(r, "m1", "backup-secret")["state"] == "failed"
    });
    let message = step_of(&run, "m1", "backup-secret")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.starts_with("cancelled: the operator admin aborted the run or skipped the step; the step's programs were ended"),
        "{message}"
    );
    assert_eq!(run["state"], "aborted", "{run}");
    assert_eq!(run["reason"], "aborted by the operator", "{run}");
    // The tool never got to its end, and nothing ran after it.
    std::thread::sleep(Duration::from_millis(500));
    let log = tool_log(&s.fleet);
    assert!(
        log.iter().all(|e| e.start || e.tool != "backup") && log.len() == 1,
        "{log:?}"
    );
}

/// An abort during preflight (here waiting for a member whose agent is down) ends the run at once:
/// preflight only reads, so nothing is waited for, and a new run may start straight away.
#[test]
fn an_abort_during_preflight_ends_the_run_at_once() {
    let mut s = setup(FLEET, &[], &[]);
    s.agents[1].process.kill(); // a1, a member of dev: preflight waits for it to attach
    s.coordinator.wait_attached(&s.fleet, "a1", false);
    let run_id = start_detached(&s);
    let preflight = |run: &serde_json::Value| {
        run["steps"].as_array().unwrap()[0].clone() // dev's preflight, the plan's first step
    };
    wait_for(&s, &run_id, "preflight running", |r| {
        preflight(r)["step"] == "preflight" && preflight(r)["state"] == "running"
    });
    let o = s.ctl(&["abort", &run_id]);
    assert!(o.status.success(), "{o:?}");
    let run = wait_final(&s, &run_id, Duration::from_secs(10));
    assert_eq!(run["state"], "aborted", "{run}");
    assert_eq!(run["reason"], "aborted by the operator", "{run}");
    assert_eq!(
        preflight(&run)["message"],
        "ended: the run was aborted during preflight"
    );
    let (code, started) = s.json(&["upgrade", "--all", "--detach"]);
    assert_eq!(code, Some(0), "a new run starts: {started}");
}
