use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::domain::NodeName;
use crate::inventory::{Gate, Inventory};
use crate::plan::{Expected, Plan, StepKind, Workflow};
use crate::plan::{Reported, Reports, Selection, plan};

pub(super) const T0: Millis = 1_000_000;

pub(super) fn inventory(
    envs: &[(&str, &[&str], &str)],
    max_parallel: u32,
    max_failures: u32,
) -> Inventory {
    let mut text = format!(
        "[upgrade]\ntarget_version = \"3.0.7\"\ninstaller = 'setup.exe'\n[policy]\nmax_parallel = {max_parallel}\nmax_failures = {max_failures}\nstep_timeout = \"10m\"\n"
    );
    for (i, (gate, nodes, _)) in envs.iter().enumerate() {
        let members: Vec<String> = nodes[1..].iter().map(|m| format!("\"{m}\"")).collect();
        text.push_str(&format!(
            "[[environment]]\nname = \"e{i}\"\ngate = \"{gate}\"\nmaster = \"{}\"\nmembers = [{}]\nbackup_dir = 'b'\n",
            nodes[0],
            members.join(", ")
        ));
    }
    Inventory::parse(Path::new("fleet.toml"), &text).unwrap()
}

pub(super) fn all() -> Selection {
    Selection {
        workflow: Workflow::Upgrade,
        environments: Vec::new(),
        master_only: false,
        max_parallel: None,
        max_failures: None,
    }
}

/// A run with every node attached, and the given nodes already on the target version.
fn run_of(inv: &Inventory, current: &[&str]) -> Run {
    let versions: Reports = inv
        .nodes()
        .map(|(_, n, _)| {
            let v = if current.contains(&n.as_str()) {
                "3.0.7"
            } else {
                "3.0.6"
            };
            (n.clone(), Reported::version(v))
        })
        .collect();
    let p = plan(inv, &all(), &versions).unwrap();
    let attached = inv.nodes().map(|(_, n, _)| n.clone()).collect();
    Run::new(&p, 600_000, attached)
}

pub(super) fn dispatched(commands: &[Command]) -> Vec<(usize, u32)> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Dispatch { step, attempt } => Some((*step, *attempt)),
            _ => None,
        })
        .collect()
}

pub(super) fn name(run: &Run, step: usize) -> String {
    let s = &run.steps[step].plan;
    format!(
        "{}:{}",
        s.node.as_ref().map_or("-", |n| n.as_str()),
        s.kind.name()
    )
}

pub(super) fn ok(run: &mut Run, step: usize) -> Vec<(usize, u32)> {
    let attempt = run.steps[step].record.attempt;
    dispatched(
        &run.apply(
            Event::StepFinished {
                step,
                attempt,
                outcome: Outcome::Succeeded,
            },
            T0,
        )
        .unwrap(),
    )
}

pub(super) fn fail(run: &mut Run, step: usize) -> Vec<(usize, u32)> {
    let attempt = run.steps[step].record.attempt;
    dispatched(
        &run.apply(
            Event::StepFinished {
                step,
                attempt,
                outcome: Outcome::Failed("exit 1".into()),
            },
            T0,
        )
        .unwrap(),
    )
}

/// Completes every dispatched step with success, in order, until nothing is in flight; returns the
/// names of the steps in dispatch order.
pub(super) fn run_to_quiet(run: &mut Run, mut queue: Vec<(usize, u32)>) -> Vec<String> {
    let mut order = Vec::new();
    while let Some((step, _)) = queue.first().copied() {
        queue.remove(0);
        order.push(name(run, step));
        queue.extend(ok(run, step));
    }
    order
}

#[test]
fn upgrades_master_first_then_members_then_the_next_environment() {
    let inv = inventory(
        &[("auto", &["m1", "a", "b"], ""), ("auto", &["m2", "c"], "")],
        1,
        0,
    );
    let mut run = run_of(&inv, &[]);
    let first = dispatched(&run.apply(Event::Start, T0).unwrap());
    let order = run_to_quiet(&mut run, first);
    assert_eq!(
        order,
        [
            "-:preflight",
            "-:backup-database",
            "m1:backup-secret",
            "m1:upgrade-master",
            "m1:verify-master",
            "a:upgrade",
            "a:verify",
            "b:upgrade",
            "b:verify",
            "-:preflight",
            "-:backup-database",
            "m2:backup-secret",
            "m2:upgrade-master",
            "m2:verify-master",
            "c:upgrade",
            "c:verify",
        ]
        .into_iter()
        .filter(|s| *s != "-:backup-database")
        .collect::<Vec<_>>(),
        "backup-database is planned skipped without an sso_database"
    );
    assert_eq!(run.status(), RunStatus::Succeeded);
}

#[test]
fn members_run_max_parallel_at_a_time() {
    let inv = inventory(&[("auto", &["m", "a", "b", "c"], "")], 2, 0);
    let mut run = run_of(&inv, &[]);
    let mut queue = dispatched(&run.apply(Event::Start, T0).unwrap());
    while let Some((step, _)) = queue.pop() {
        if run.steps[step].plan.kind == StepKind::VerifyMaster {
            let members = ok(&mut run, step);
            let names: Vec<String> = members.iter().map(|(s, _)| name(&run, *s)).collect();
            assert_eq!(names, ["a:upgrade", "b:upgrade"]);
            // a's upgrade done: a's verify takes its place before c starts.
            let next = ok(&mut run, members[0].0);
            assert_eq!(
                next.iter().map(|(s, _)| name(&run, *s)).collect::<Vec<_>>(),
                ["a:verify"]
            );
            let next = ok(&mut run, next[0].0);
            assert_eq!(
                next.iter().map(|(s, _)| name(&run, *s)).collect::<Vec<_>>(),
                ["c:upgrade"]
            );
            return;
        }
        queue.extend(ok(&mut run, step));
    }
    panic!("verify-master never dispatched");
}

#[test]
fn a_failing_master_halts_no_member_starts_and_retry_resumes() {
    let inv = inventory(&[("auto", &["m", "a"], "")], 1, 0);
    let mut run = run_of(&inv, &[]);
    let mut queue = dispatched(&run.apply(Event::Start, T0).unwrap());
    let upgrade_master = loop {
        let (step, _) = queue.remove(0);
        if run.steps[step].plan.kind == StepKind::UpgradeMaster {
            break step;
        }
        queue.extend(ok(&mut run, step));
    };
    assert!(
        fail(&mut run, upgrade_master).is_empty(),
        "nothing may start after a master failure"
    );
    assert_eq!(run.status(), RunStatus::Halted);
    assert!(
        run.reason()
            .contains("upgrade-master on m (e0) failed: exit 1"),
        "{}",
        run.reason()
    );
    assert!(
        run.steps
            .iter()
            .filter(|s| s.plan.kind.is_member_step())
            .all(|s| s.record.attempt == 0)
    );

    let e = run
        .apply(
            Event::Control(Control::Skip {
                step: upgrade_master,
            }),
            T0,
        )
        .unwrap_err();
    assert!(e.0.contains("cannot be skipped"), "{e}");
    let e = run.apply(Event::Control(Control::Resume), T0).unwrap_err();
    assert!(e.0.contains("retry it or abort"), "{e}");

    let again = dispatched(
        &run.apply(
            Event::Control(Control::Retry {
                step: upgrade_master,
            }),
            T0,
        )
        .unwrap(),
    );
    assert_eq!(again, [(upgrade_master, 2)]);
    assert_eq!(run.status(), RunStatus::Running);
    run_to_quiet(&mut run, again);
    assert_eq!(run.status(), RunStatus::Succeeded);
}

fn to_members(run: &mut Run) -> Vec<(usize, u32)> {
    let mut queue = dispatched(&run.apply(Event::Start, T0).unwrap());
    loop {
        let (step, _) = queue.remove(0);
        let next = ok(run, step);
        if run.steps[step].plan.kind == StepKind::VerifyMaster {
            return next;
        }
        queue.extend(next);
    }
}

#[test]
fn member_failures_halt_beyond_max_failures() {
    let inv = inventory(&[("auto", &["m", "a", "b"], "")], 1, 0);
    let mut run = run_of(&inv, &[]);
    let members = to_members(&mut run);
    assert!(fail(&mut run, members[0].0).is_empty());
    assert_eq!(run.status(), RunStatus::Halted);
    assert!(
        run.reason().contains("exceed max_failures = 0"),
        "{}",
        run.reason()
    );
    // The operator accepts the failure: the run goes on with b.
    let next = dispatched(&run.apply(Event::Control(Control::Resume), T0).unwrap());
    assert_eq!(
        next.iter().map(|(s, _)| name(&run, *s)).collect::<Vec<_>>(),
        ["b:upgrade"]
    );
    run_to_quiet(&mut run, next);
    assert_eq!(run.status(), RunStatus::Failed);
    assert_eq!(run.reason(), "completed with 1 failed member step(s)");

    let inv = inventory(&[("auto", &["m", "a", "b"], "")], 1, 1);
    let mut run = run_of(&inv, &[]);
    let members = to_members(&mut run);
    let next = fail(&mut run, members[0].0);
    assert_eq!(
        next.iter().map(|(s, _)| name(&run, *s)).collect::<Vec<_>>(),
        ["b:upgrade"],
        "with max_failures = 1 the run goes on"
    );
    assert_eq!(
        run.steps[members[0].0 + 1].record.state,
        StepState::Skipped,
        "a's verify is skipped"
    );
}

#[test]
fn an_accepted_failure_that_is_retried_does_not_excuse_a_later_one() {
    let inv = inventory(&[("auto", &["m", "a", "b"], "")], 1, 0);
    let mut run = run_of(&inv, &[]);
    let members = to_members(&mut run);
    let a = members[0].0;
    fail(&mut run, a);
    run.apply(Event::Control(Control::Resume), T0).unwrap(); // the operator accepts a's failure
    let again = dispatched(
        &run.apply(Event::Control(Control::Retry { step: a }), T0)
            .unwrap(),
    );
    assert!(again.is_empty(), "b's upgrade holds the one slot");
    let b = run
        .steps
        .iter()
        .position(|s| s.record.state == StepState::Running)
        .unwrap();
    ok(&mut run, b); // b upgraded; a's retried upgrade takes the slot
    let running = run
        .steps
        .iter()
        .position(|s| s.record.state == StepState::Running)
        .unwrap();
    fail(&mut run, running);
    assert_eq!(
        run.status(),
        RunStatus::Halted,
        "a new failure halts again: {}",
        run.reason()
    );
}

#[test]
fn already_current_nodes_are_not_reinstalled_but_the_master_is_verified() {
    let inv = inventory(&[("auto", &["m", "a", "b"], "")], 1, 0);
    let mut run = run_of(&inv, &["m", "a"]);
    let first = dispatched(&run.apply(Event::Start, T0).unwrap());
    let order = run_to_quiet(&mut run, first);
    assert_eq!(
        order,
        [
            "-:preflight",
            "m:backup-secret",
            "m:verify-master",
            "b:upgrade",
            "b:verify"
        ]
    );
    assert_eq!(run.status(), RunStatus::Succeeded);
}

/// A run of one environment (master first) whose nodes reported these versions.
fn run_on_versions(nodes: &[(&str, &str)], install: &str) -> Run {
    let members: Vec<String> = nodes[1..].iter().map(|(n, _)| format!("\"{n}\"")).collect();
    let text = format!(
        "[upgrade]\ntarget_version = \"3.0.7\"\ninstaller = 'setup.exe'\n[[environment]]\nname = \"e0\"\ninstall = \"{install}\"\nmaster = \"{}\"\nmembers = [{}]\nbackup_dir = 'b'\n",
        nodes[0].0,
        members.join(", ")
    );
    let inv = Inventory::parse(Path::new("fleet.toml"), &text).unwrap();
    let reports: Reports = nodes
        .iter()
        .map(|(n, v)| (NodeName::new(n).unwrap(), Reported::version(v)))
        .collect();
    let p = plan(&inv, &all(), &reports).unwrap();
    let attached = inv.nodes().map(|(_, n, _)| n.clone()).collect();
    Run::new(&p, 600_000, attached)
}

#[test]
fn newer_nodes_are_done_like_current_ones_and_never_installed_on() {
    let mut run = run_on_versions(
        &[
            ("m", "3.0.8"),
            ("a", "3.0.6"),
            ("b", "3.0.7.0"),
            ("c", "3.0.10"),
        ],
        "attended",
    );
    let states: Vec<(String, &str)> = (0..run.steps.len())
        .map(|i| (name(&run, i), run.steps[i].record.state.as_str()))
        .collect();
    let newer: Vec<&str> = states
        .iter()
        .filter(|(_, s)| *s == "newer")
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(newer, ["m:upgrade-master", "c:upgrade", "c:verify"]);
    assert_eq!(
        run.steps[3].record.message,
        "on 3.0.8, newer than the target 3.0.7: never downgraded"
    );
    let first = dispatched(&run.apply(Event::Start, T0).unwrap());
    let order = run_to_quiet(&mut run, first);
    assert_eq!(
        order,
        [
            "-:preflight",
            "m:backup-secret",
            "m:verify-master",
            "a:upgrade",
            "a:verify"
        ]
    );
    assert_eq!(run.status(), RunStatus::Succeeded);
    // Stored and read back as such.
    assert_eq!(StepState::parse("newer"), Some(StepState::Newer));
    assert_eq!(round_trip(&run), run);
}

#[test]
fn an_attended_wait_says_why_the_plan_made_it_attended() {
    // The environment asks for unattended; a BizTalk setup upgrade cannot be: the wait says so.
    let mut run = run_on_versions(&[("m1", "3.0.6")], "unattended");
    let upgrade = to_master_upgrade(&mut run);
    wait_for_operator(&mut run, upgrade);
    assert_eq!(run.status(), RunStatus::WaitingApproval);
    let reason = run.reason();
    assert!(
        reason.starts_with("attended install on m1: run setup.exe on m1 (attended: a BizTalk Server upgrade cannot be silent"),
        "{reason}"
    );
    assert!(
        reason.contains("Silent Upgrade is not supported"),
        "{reason}"
    );
    // The same wait reported again (a redelivery) changes nothing.
    assert!(wait_for_operator(&mut run, upgrade).is_empty());
}

#[test]
fn a_manual_gate_waits_for_approval_and_a_soak_gate_for_its_time() {
    let inv = inventory(
        &[
            ("manual", &["m1"], ""),
            ("soak 5s", &["m2"], ""),
            ("auto", &["m3"], ""),
        ],
        1,
        0,
    );
    let mut run = run_of(&inv, &[]);
    let first = dispatched(&run.apply(Event::Start, T0).unwrap());
    run_to_quiet(&mut run, first);
    assert_eq!(run.status(), RunStatus::WaitingApproval);
    assert!(
        dispatched(&run.apply(Event::Tick, T0 + 3_600_000).unwrap()).is_empty(),
        "time does not pass a manual gate"
    );

    let commands = run.apply(Event::Control(Control::Approve), T0).unwrap();
    let next = dispatched(&commands);
    assert_eq!(name(&run, next[0].0), "-:preflight");
    assert_eq!(run.steps[next[0].0].plan.env, 1);
    let more: Vec<_> = next.clone();
    run_to_quiet(&mut run, more);
    let wake = run.apply(Event::Tick, T0).unwrap();
    assert!(dispatched(&wake).is_empty());
    assert_eq!(run.status(), RunStatus::Running);
    assert!(
        dispatched(&run.apply(Event::Tick, T0 + 4_999).unwrap()).is_empty(),
        "soaking"
    );
    let next = dispatched(&run.apply(Event::Tick, T0 + 5_000).unwrap());
    assert_eq!(run.steps[next[0].0].plan.env, 2, "the soak passed");
}

#[test]
fn duplicates_and_stale_attempts_change_nothing() {
    let inv = inventory(&[("auto", &["m", "a"], "")], 1, 0);
    let mut run = run_of(&inv, &[]);
    let first = dispatched(&run.apply(Event::Start, T0).unwrap());
    let (preflight, attempt) = first[0];
    ok(&mut run, preflight);
    let before = run.clone();
    for outcome in [Outcome::Succeeded, Outcome::Failed("late".into())] {
        let c = run
            .apply(
                Event::StepFinished {
                    step: preflight,
                    attempt,
                    outcome,
                },
                T0,
            )
            .unwrap();
        assert!(c.is_empty(), "{c:?}");
        let c = run
            .apply(
                Event::StepFinished {
                    step: preflight,
                    attempt: attempt + 7,
                    outcome: Outcome::Succeeded,
                },
                T0,
            )
            .unwrap();
        assert!(c.is_empty(), "{c:?}");
    }
    assert_eq!(run, before);
}

#[test]
fn pause_stops_new_steps_and_a_detached_member_is_waited_for() {
    let inv = inventory(&[("auto", &["m", "a"], "")], 1, 0);
    let mut run = run_of(&inv, &[]);
    let first = dispatched(&run.apply(Event::Start, T0).unwrap());
    run.apply(Event::Control(Control::Pause), T0).unwrap();
    assert_eq!(run.status(), RunStatus::Paused);
    assert!(
        ok(&mut run, first[0].0).is_empty(),
        "in-flight steps finish; nothing new starts"
    );
    let a = NodeName::new("a").unwrap();
    run.apply(Event::NodeDetached(a.clone()), T0).unwrap();
    let mut next = dispatched(&run.apply(Event::Control(Control::Resume), T0).unwrap());
    while let Some((step, _)) = next.pop() {
        next.extend(ok(&mut run, step));
    }
    assert_eq!(run.status(), RunStatus::Running);
    assert_eq!(run.reason(), "waiting for a to attach");
    let next = dispatched(&run.apply(Event::NodeAttached(a), T0).unwrap());
    assert_eq!(name(&run, next[0].0), "a:upgrade");
}

#[test]
fn a_detached_master_halts_its_environment_until_it_is_back_and_resumed() {
    let inv = inventory(&[("auto", &["m", "a"], "")], 1, 0);
    let mut run = run_of(&inv, &[]);
    let first = dispatched(&run.apply(Event::Start, T0).unwrap());
    let mut next = ok(&mut run, first[0].0); // preflight
    let m = NodeName::new("m").unwrap();
    run.apply(Event::NodeDetached(m.clone()), T0).unwrap();
    assert_eq!(run.status(), RunStatus::Halted);
    assert!(
        run.reason().contains("master m of e0 detached"),
        "{}",
        run.reason()
    );
    // Its step is not failed: the result may still come.
    let (backup, _) = next.pop().unwrap();
    assert_eq!(run.steps[backup].record.state, StepState::Running);
    assert!(
        ok(&mut run, backup).is_empty(),
        "halted: nothing new starts"
    );
    let e = run.apply(Event::Control(Control::Resume), T0).unwrap_err();
    assert!(e.0.contains("still detached"), "{e}");
    run.apply(Event::NodeAttached(m), T0).unwrap();
    assert_eq!(
        run.status(),
        RunStatus::Halted,
        "a halt waits for the operator"
    );
    let next = dispatched(&run.apply(Event::Control(Control::Resume), T0).unwrap());
    assert_eq!(name(&run, next[0].0), "m:upgrade-master");
}

#[test]
fn an_approval_given_while_halted_is_withdrawn_when_a_member_is_retried() {
    // Found by the properties (kept as a regression): the approval predated the member's new result.
    let inv = inventory(&[("manual", &["m", "a"], ""), ("auto", &["p"], "")], 1, 0);
    let mut run = run_of(&inv, &[]);
    let mut queue = dispatched(&run.apply(Event::Start, T0).unwrap());
    while let Some((step, _)) = queue.pop() {
        if run.steps[step].plan.kind == StepKind::UpgradeMember {
            fail(&mut run, step);
            break;
        }
        queue.extend(ok(&mut run, step));
    }
    let a = run
        .steps
        .iter()
        .position(|s| s.plan.kind == StepKind::UpgradeMember)
        .unwrap();
    run.apply(Event::Control(Control::Resume), T0).unwrap(); // accept a's failure
    assert_eq!(run.status(), RunStatus::WaitingApproval);
    let m = NodeName::new("m").unwrap();
    run.apply(Event::NodeDetached(m.clone()), T0).unwrap();
    run.apply(Event::Control(Control::Approve), T0).unwrap();
    run.apply(Event::Control(Control::Retry { step: a }), T0)
        .unwrap();
    run.apply(Event::NodeAttached(m), T0).unwrap();
    let mut queue = dispatched(&run.apply(Event::Control(Control::Resume), T0).unwrap());
    while let Some((step, _)) = queue.pop() {
        assert_eq!(
            run.steps[step].plan.env,
            0,
            "{} started without a new approval",
            name(&run, step)
        );
        queue.extend(ok(&mut run, step));
    }
    assert_eq!(run.status(), RunStatus::WaitingApproval);
}

#[test]
fn one_resume_lifts_a_pause_and_a_halt() {
    let inv = inventory(&[("auto", &["m", "a", "b"], "")], 1, 0);
    let mut run = run_of(&inv, &[]);
    let mut queue = dispatched(&run.apply(Event::Start, T0).unwrap());
    while let Some((step, _)) = queue.pop() {
        if run.steps[step].plan.kind == StepKind::UpgradeMember {
            run.apply(Event::Control(Control::Pause), T0).unwrap();
            fail(&mut run, step);
            break;
        }
        queue.extend(ok(&mut run, step));
    }
    assert_eq!(run.status(), RunStatus::Halted);
    assert!(run.record.paused);
    let next = dispatched(&run.apply(Event::Control(Control::Resume), T0).unwrap());
    assert_eq!(run.status(), RunStatus::Running);
    assert_eq!(name(&run, next[0].0), "b:upgrade");
}

#[test]
fn an_attempt_that_never_reached_its_agent_starts_again_as_a_new_attempt() {
    let inv = inventory(&[("auto", &["m"], "")], 1, 0);
    let mut run = run_of(&inv, &[]);
    let first = dispatched(&run.apply(Event::Start, T0).unwrap());
    let backup = ok(&mut run, first[0].0);
    let (step, attempt) = backup[0];
    // Not the current attempt, or not running: nothing changes.
    let before = run.clone();
    assert!(
        run.apply(Event::StepNotDelivered { step, attempt: 7 }, T0)
            .unwrap()
            .is_empty()
    );
    assert_eq!(run, before);
    let again = dispatched(
        &run.apply(Event::StepNotDelivered { step, attempt }, T0)
            .unwrap(),
    );
    assert_eq!(again, vec![(step, attempt + 1)]);
}

fn window_inventory(window: &str) -> Inventory {
    let text = format!(
        "[upgrade]\ntarget_version = \"3.0.7\"\ninstaller = 's'\n[[environment]]\nname = \"e0\"\nmaster = \"m\"\nmembers = [\"a\"]\nbackup_dir = 'b'\nwindow = {window}\n"
    );
    Inventory::parse(Path::new("fleet.toml"), &text).unwrap()
}

#[test]
fn no_step_starts_outside_the_window_and_steps_in_flight_finish() {
    // Every day 00:00:10-00:00:20 UTC; T0 is 00:16:40 on 1970-01-01.
    let day = 86_400_000;
    let inv = window_inventory(
        r#"{ days = ["mon","tue","wed","thu","fri","sat","sun"], start = "00:00:10", end = "00:00:20", tz = "UTC" }"#,
    );
    let mut run = run_of(&inv, &[]);
    run.set_windows(vec![inv.environments[0].window.clone()]);
    let open = day + 10_000;
    assert!(dispatched(&run.apply(Event::Start, T0).unwrap()).is_empty());
    assert!(
        run.reason()
            .starts_with("waiting for the maintenance window of e0 (mon,tue,wed,thu,fri,sat,sun 00:00:10-00:00:20 UTC): it opens Fri 1970-01-02 00:00:10 UTC"),
        "{}",
        run.reason()
    );
    assert!(dispatched(&run.apply(Event::Tick, open - 1).unwrap()).is_empty());
    let first = dispatched(&run.apply(Event::Tick, open).unwrap());
    assert_eq!(name(&run, first[0].0), "-:preflight");
    // The window closes while the preflight runs: it finishes, nothing new starts.
    let closed = open + 10_000;
    let attempt = run.steps[first[0].0].record.attempt;
    let c = run
        .apply(
            Event::StepFinished {
                step: first[0].0,
                attempt,
                outcome: Outcome::Succeeded,
            },
            closed,
        )
        .unwrap();
    assert!(dispatched(&c).is_empty());
    assert_eq!(run.steps[first[0].0].record.state, StepState::Succeeded);
    let next = dispatched(&run.apply(Event::Tick, open + day).unwrap());
    assert_eq!(name(&run, next[0].0), "m:backup-secret");
}

#[test]
fn a_silent_step_fails_after_its_timeout_and_grace() {
    let inv = inventory(&[("auto", &["m"], "")], 1, 0);
    let mut run = run_of(&inv, &[]);
    let first = dispatched(&run.apply(Event::Start, T0).unwrap());
    assert!(
        run.apply(Event::Tick, T0 + 600_000 + RESULT_GRACE_MS)
            .unwrap()
            .iter()
            .all(|c| !matches!(
                c,
                Command::StepChanged {
                    state: StepState::Failed,
                    ..
                }
            ))
    );
    run.apply(Event::Tick, T0 + 600_001 + RESULT_GRACE_MS)
        .unwrap();
    assert_eq!(run.steps[first[0].0].record.state, StepState::Failed);
    assert_eq!(run.status(), RunStatus::Halted);
}

// ---------------------------------------------------------------------------------------------------
// Properties over random fleets, failures, orders, duplicates and operator actions.

#[derive(Debug, Clone)]
pub(super) struct Shape {
    /// Gate, member count, and per node (master first) its version: 0 older, 1 the target, 2 newer.
    envs: Vec<(Gate, usize, Vec<u8>)>,
    max_parallel: u32,
    max_failures: u32,
    /// Per environment, maybe a daily window: opens this many seconds after T0, for so long.
    windows: Vec<Option<(u32, u32)>>,
}

pub(super) fn shape() -> impl Strategy<Value = Shape> {
    let gate = prop_oneof![
        Just(Gate::Auto),
        Just(Gate::Manual),
        (1u64..4).prop_map(|s| Gate::Soak(Duration::from_secs(s)))
    ];
    let env = (gate, 0usize..5).prop_flat_map(|(gate, members)| {
        let version = prop_oneof![6 => Just(0u8), 2 => Just(1u8), 2 => Just(2u8)];
        proptest::collection::vec(version, members + 1)
            .prop_map(move |versions| (gate.clone(), members, versions))
    });
    let window = proptest::option::weighted(0.3, (0u32..120, 5u32..60));
    (
        proptest::collection::vec(env, 1..4),
        1u32..4,
        0u32..3,
        proptest::collection::vec(window, 3),
    )
        .prop_map(|(envs, max_parallel, max_failures, windows)| Shape {
            envs,
            max_parallel,
            max_failures,
            windows,
        })
}

/// T0 is 00:16:40 UTC; the windows of the properties open within two minutes after it.
const T0_SECOND_OF_DAY: u32 = 1000;

fn clock(seconds: u32) -> String {
    format!(
        "{:02}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

pub(super) fn build(shape: &Shape) -> (Run, BTreeSet<usize>) {
    let mut text = format!(
        "[upgrade]\ntarget_version = \"3.0.7\"\ninstaller = 's'\n[policy]\nmax_parallel = {}\nmax_failures = {}\n",
        shape.max_parallel, shape.max_failures
    );
    let mut versions = Reports::new();
    for (e, (gate, members, current)) in shape.envs.iter().enumerate() {
        let nodes: Vec<String> = (0..=*members).map(|i| format!("n{e}x{i}")).collect();
        for (node, version) in nodes.iter().zip(current) {
            // The target written as four parts, and a newer version, compare as numbers.
            let written = ["3.0.6", "3.0.7.0", "3.0.10"][usize::from(*version)];
            versions.insert(NodeName::new(node).unwrap(), Reported::version(written));
        }
        let gate = match gate {
            Gate::Soak(d) => format!("soak {}s", d.as_secs()),
            other => other.to_string(),
        };
        let members: Vec<String> = nodes[1..].iter().map(|n| format!("\"{n}\"")).collect();
        text.push_str(&format!(
            "[[environment]]\nname = \"e{e}\"\ngate = \"{gate}\"\nmaster = \"{}\"\nmembers = [{}]\nbackup_dir = 'b'\n",
            nodes[0],
            members.join(",")
        ));
        if let Some((open, len)) = shape.windows[e] {
            text.push_str(&format!(
                "window = {{ days = [\"mon\",\"tue\",\"wed\",\"thu\",\"fri\",\"sat\",\"sun\"], start = \"{}\", end = \"{}\", tz = \"UTC\" }}\n",
                clock(T0_SECOND_OF_DAY + open),
                clock(T0_SECOND_OF_DAY + open + len)
            ));
        }
    }
    let inv = Inventory::parse(Path::new("f.toml"), &text).unwrap();
    let p = plan(&inv, &all(), &versions).unwrap();
    let attached = inv.nodes().map(|(_, n, _)| n.clone()).collect();
    // Steps on nodes already on the target or newer: never dispatched (invariant 6).
    let already_current: BTreeSet<usize> = p
        .steps
        .iter()
        .filter(|s| {
            s.kind != StepKind::VerifyMaster
                && s.node
                    .as_ref()
                    .is_some_and(|n| versions[n].version.as_deref() != Some("3.0.6"))
        })
        .filter(|s| {
            matches!(
                s.kind,
                StepKind::UpgradeMaster | StepKind::UpgradeMember | StepKind::VerifyMember
            )
        })
        .map(|s| s.index)
        .collect();
    let mut run = Run::new(&p, 600_000, attached);
    run.set_windows(inv.environments.iter().map(|e| e.window.clone()).collect());
    (run, already_current)
}

/// What the store keeps of a run, restored: must be the same run (but for who is attached).
pub(super) fn round_trip(run: &Run) -> Run {
    let records = (0..run.steps.len()).map(|i| run.step_record(i)).collect();
    let durable: Durable =
        serde_json::from_str(&serde_json::to_string(&run.durable()).unwrap()).unwrap();
    let windows = run.envs.iter().map(|e| e.window.clone()).collect();
    let plan = Plan {
        workflow: crate::plan::Workflow::Upgrade,
        target_version: "3.0.7".parse().unwrap(),
        installer: String::new(),
        master_installer: None,
        max_parallel: run.max_parallel,
        max_failures: run.max_failures,
        master_only: false,
        environments: run
            .env_names
            .iter()
            .zip(&run.envs)
            .map(|(name, e)| crate::plan::EnvPlan {
                name: crate::domain::EnvName::new(name).unwrap(),
                master: e.master.clone(),
                members: Vec::new(),
                gate: e.gate.clone(),
            })
            .collect(),
        steps: run.steps.iter().map(|s| s.plan.clone()).collect(),
        warnings: Vec::new(),
        hash: String::new(),
    };
    Run::restore(
        &plan,
        run.step_timeout_ms,
        windows,
        records,
        durable,
        run.attached.clone(),
    )
    .unwrap()
}

/// What the test (acting as shell and agents) knows, built only from commands and its own deliveries.
#[derive(Default)]
struct Observer {
    outstanding: BTreeMap<usize, u32>,
    last_outcome: BTreeMap<usize, bool>,
    delivered: Vec<(usize, u32, bool)>,
    /// Per environment: when its last step result was delivered, and whether a manual approval came after.
    env_last_result: BTreeMap<usize, Millis>,
    approved_after: BTreeMap<usize, bool>,
    highest_attempt: BTreeMap<usize, u32>,
}

impl Observer {
    fn check(
        &mut self,
        run: &Run,
        commands: &[Command],
        already_current: &BTreeSet<usize>,
        now: Millis,
    ) -> Result<(), TestCaseError> {
        for command in commands {
            // The coordinator gave up on a silent attempt: it is no longer out.
            if let Command::StepChanged {
                step,
                state: StepState::Failed,
                ..
            } = *command
            {
                if self.outstanding.remove(&step).is_some() {
                    self.last_outcome.insert(step, false);
                    self.env_last_result.insert(run.steps[step].plan.env, now);
                }
                continue;
            }
            let Command::Dispatch { step, attempt } = *command else {
                continue;
            };
            let s = &run.steps[step].plan;
            // A fresh attempt number, and never while the step still has an attempt out.
            prop_assert!(
                attempt > self.highest_attempt.get(&step).copied().unwrap_or(0),
                "attempt {attempt} of step {step} reused"
            );
            prop_assert!(
                !self.outstanding.contains_key(&step),
                "step {step} dispatched while in flight"
            );
            self.highest_attempt.insert(step, attempt);
            // Invariant 6.
            prop_assert!(
                !already_current.contains(&step),
                "step {step} of a node already current or newer dispatched"
            );
            // Invariant 7.
            prop_assert!(
                run.envs[s.env]
                    .window
                    .as_ref()
                    .is_none_or(|w| w.is_open(now)),
                "step {step} dispatched outside its window"
            );
            // Invariant 1: every master-chain step of this environment succeeded (or was planned not to run).
            if s.kind.is_member_step() {
                for chain in run.envs[s.env]
                    .steps
                    .clone()
                    .filter(|&i| run.steps[i].plan.kind.in_master_chain())
                {
                    let planned_out = !matches!(run.steps[chain].plan.expected, Expected::Run);
                    prop_assert!(
                        planned_out || self.last_outcome.get(&chain) == Some(&true),
                        "member step {step} dispatched before {} succeeded",
                        run.steps[chain].plan.kind.name()
                    );
                }
            }
            // Invariant 2: the previous environment finished and its gate passed.
            if s.env > 0 {
                let prev = s.env - 1;
                let prev_steps = run.envs[prev].steps.clone();
                prop_assert!(
                    prev_steps
                        .clone()
                        .all(|i| !self.outstanding.contains_key(&i)),
                    "env {} started with env {prev} in flight",
                    s.env
                );
                match &run.envs[prev].gate {
                    Gate::Manual => prop_assert!(
                        self.approved_after.get(&prev) == Some(&true),
                        "env {} started without approval of env {prev}",
                        s.env
                    ),
                    Gate::Soak(d) => {
                        let last = self.env_last_result.get(&prev).copied().unwrap_or(T0);
                        prop_assert!(
                            now - last >= Millis::try_from(d.as_millis()).unwrap(),
                            "env {} started before env {prev} soaked",
                            s.env
                        );
                    }
                    Gate::Auto => {}
                }
            }
            self.outstanding.insert(step, attempt);
        }
        // Invariant 3: member steps in flight per environment.
        for (e, env) in run.envs.iter().enumerate() {
            let members_in_flight: BTreeSet<String> = self
                .outstanding
                .keys()
                .filter(|&&i| env.steps.contains(&i) && run.steps[i].plan.kind.is_member_step())
                .filter_map(|&i| run.steps[i].plan.node.as_ref().map(|n| n.to_string()))
                .collect();
            prop_assert!(
                members_in_flight.len() <= run.max_parallel as usize,
                "env {e}: {} members in flight",
                members_in_flight.len()
            );
        }
        Ok(())
    }
}

proptest! {
    // 512 cases by default; PROPTEST_CASES=N for a longer hunt.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(512)
    ))]

    #[test]
    fn ordering_invariants_hold_under_any_interleaving(
        shape in shape(),
        choices in proptest::collection::vec((0u8..14, any::<u16>(), proptest::bool::weighted(0.2)), 0..400),
    ) {
        let (mut run, already_current) = build(&shape);
        let mut obs = Observer::default();
        let mut now = T0;
        let c = run.apply(Event::Start, now).unwrap();
        obs.check(&run, &c, &already_current, now)?;
        for (kind, pick, flag) in choices {
            let pick = usize::from(pick);
            let event = match kind {
                // Deliver a result of an outstanding attempt (most choices).
                0..=4 if !obs.outstanding.is_empty() => {
                    let (&step, &attempt) = obs.outstanding.iter().nth(pick % obs.outstanding.len()).unwrap();
                    let outcome = if flag { Outcome::Failed("simulated".into()) } else { Outcome::Succeeded };
                    obs.outstanding.remove(&step);
                    obs.last_outcome.insert(step, !flag);
                    obs.delivered.push((step, attempt, !flag));
                    obs.env_last_result.insert(run.steps[step].plan.env, now);
                    obs.approved_after.insert(run.steps[step].plan.env, false);
                    Event::StepFinished { step, attempt, outcome }
                }
                // A duplicated or stale delivery.
                5 if !obs.delivered.is_empty() => {
                    let (step, attempt, good) = obs.delivered[pick % obs.delivered.len()];
                    let attempt = if flag { attempt.saturating_sub(1) } else { attempt };
                    let outcome = if good { Outcome::Succeeded } else { Outcome::Failed("again".into()) };
                    Event::StepFinished { step, attempt, outcome }
                }
                6 => { now += i64::from(pick as u16 % 5000); Event::Tick }
                // An assignment lost on the way: the agent never got it.
                10 if !obs.outstanding.is_empty() => {
                    let (&step, &attempt) = obs.outstanding.iter().nth(pick % obs.outstanding.len()).unwrap();
                    obs.outstanding.remove(&step);
                    Event::StepNotDelivered { step, attempt }
                }
                // The coordinator restarts: the run is rebuilt from what was stored.
                11 => {
                    let restored = round_trip(&run);
                    prop_assert_eq!(&restored, &run);
                    run = restored;
                    now += 500;
                    Event::Tick
                }
                7 => Event::Control(Control::Approve),
                // An agent stops at an attended install (the attempt stays out), or the operator
                // approves one (the same attempt goes on).
                12 if !obs.outstanding.is_empty() => {
                    let (&step, &attempt) = obs.outstanding.iter().nth(pick % obs.outstanding.len()).unwrap();
                    Event::StepWaiting { step, attempt, instruction: "attended".into() }
                }
                13 => Event::Control(Control::ApproveInstall { step: pick % run.steps.len() }),
                8 => {
                    let step = pick % run.steps.len();
                    if flag { Event::Control(Control::Skip { step }) } else { Event::Control(Control::Retry { step }) }
                }
                9 => match pick % 4 {
                    0 => Event::Control(Control::Pause),
                    1 => Event::Control(Control::Resume),
                    2 => Event::NodeDetached(run.steps[pick % run.steps.len()].plan.node.clone().unwrap_or_else(|| NodeName::new("n0x0").unwrap())),
                    _ => Event::NodeAttached(run.steps[pick % run.steps.len()].plan.node.clone().unwrap_or_else(|| NodeName::new("n0x0").unwrap())),
                },
                _ => { now += 1000; Event::Tick }
            };
            let approve = matches!(event, Event::Control(Control::Approve));
            let waiting_env = run
                .envs
                .iter()
                .position(|e| run.steps[e.steps.end - 1].record.state == StepState::Waiting);
            if let Ok(c) = run.apply(event, now) {
                if approve
                    && let Some(env) = waiting_env { obs.approved_after.insert(env, true); }
                obs.check(&run, &c, &already_current, now)?;
            }
        }
    }

    #[test]
    fn a_fleet_where_everything_succeeds_finishes(shape in shape()) {
        let (mut run, _) = build(&shape);
        run.set_windows(vec![None; run.envs.len()]);
        let mut now = T0;
        let mut queue = dispatched(&run.apply(Event::Start, now).unwrap());
        for _ in 0..10_000 {
            if run.status().is_final() { break; }
            if let Some((step, attempt)) = queue.pop() {
                queue.extend(dispatched(&run.apply(Event::StepFinished { step, attempt, outcome: Outcome::Succeeded }, now).unwrap()));
            } else if run.status() == RunStatus::WaitingApproval {
                queue.extend(dispatched(&run.apply(Event::Control(Control::Approve), now).unwrap()));
            } else {
                now += 1000;
                queue.extend(dispatched(&run.apply(Event::Tick, now).unwrap()));
            }
        }
        prop_assert_eq!(run.status(), RunStatus::Succeeded);
        prop_assert!(run.steps.iter().all(|s| s.record.state.is_done()));
    }
}

/// Walks a run through its master chain to the master's upgrade (dispatched, not finished).
fn to_master_upgrade(run: &mut Run) -> usize {
    let mut queue = dispatched(&run.apply(Event::Start, T0).unwrap());
    loop {
        let (step, _) = queue.remove(0);
        if run.steps[step].plan.kind == StepKind::UpgradeMaster {
            return step;
        }
        queue.extend(ok(run, step));
    }
}

fn wait_for_operator(run: &mut Run, step: usize) -> Vec<Command> {
    let attempt = run.steps[step].record.attempt;
    run.apply(
        Event::StepWaiting {
            step,
            attempt,
            instruction: "run setup.exe on m1".into(),
        },
        T0,
    )
    .unwrap()
}

#[test]
fn an_attended_install_waits_for_the_operator_and_continues_the_same_attempt() {
    let inv = inventory(&[("auto", &["m1", "a"], "")], 1, 0);
    let mut run = run_of(&inv, &[]);
    let upgrade = to_master_upgrade(&mut run);
    wait_for_operator(&mut run, upgrade);
    assert_eq!(run.steps[upgrade].record.state, StepState::Waiting);
    assert_eq!(run.status(), RunStatus::WaitingApproval);
    assert_eq!(run.reason(), "attended install on m1: run setup.exe on m1");
    assert!(run.has_running_steps(), "the agent holds the attempt");
    // Waiting is not silence: no step timeout while the operator works.
    let later = T0 + 10 * 3_600_000;
    run.apply(Event::Tick, later).unwrap();
    assert_eq!(run.steps[upgrade].record.state, StepState::Waiting);
    // A gate approval is not an install approval.
    assert!(run.apply(Event::Control(Control::Approve), later).is_err());
    let verify_master = upgrade + 1;
    assert!(
        run.apply(
            Event::Control(Control::ApproveInstall {
                step: verify_master
            }),
            later
        )
        .is_err()
    );

    let commands = run
        .apply(
            Event::Control(Control::ApproveInstall { step: upgrade }),
            later,
        )
        .unwrap();
    assert!(commands.contains(&Command::Continue {
        step: upgrade,
        attempt: 1
    }));
    assert!(
        dispatched(&commands).is_empty(),
        "no new attempt: the same one continues"
    );
    assert_eq!(run.steps[upgrade].record.state, StepState::Running);
    assert_eq!(run.steps[upgrade].record.approved, Some(1));
    assert_eq!(run.status(), RunStatus::Running);
    // A redelivered waiting event does not undo the approval.
    wait_for_operator(&mut run, upgrade);
    assert_eq!(run.steps[upgrade].record.state, StepState::Running);
    // The approval survives a restart of the coordinator.
    let restored = round_trip(&run);
    assert_eq!(restored.steps[upgrade].record.approved, Some(1));
    // The verification has the step timeout, counted from the approval.
    run.apply(Event::Tick, later + 600_000 + RESULT_GRACE_MS + 1)
        .unwrap();
    assert_eq!(run.steps[upgrade].record.state, StepState::Failed);
}

#[test]
fn members_wait_for_the_master_install_and_each_attended_member_waits_alone() {
    let inv = inventory(&[("auto", &["m1", "a", "b"], "")], 2, 0);
    let mut run = run_of(&inv, &[]);
    let upgrade = to_master_upgrade(&mut run);
    wait_for_operator(&mut run, upgrade);
    // Invariant 1: nothing of the members while the master's install waits.
    assert!(dispatched(&run.apply(Event::Tick, T0 + 1).unwrap()).is_empty());
    run.apply(
        Event::Control(Control::ApproveInstall { step: upgrade }),
        T0,
    )
    .unwrap();
    let verify = ok(&mut run, upgrade);
    let members = ok(&mut run, verify[0].0);
    assert_eq!(members.len(), 2);
    for &(step, _) in &members {
        wait_for_operator(&mut run, step);
    }
    assert!(
        run.reason().contains("1 more attended installs wait"),
        "{}",
        run.reason()
    );
    // Both waiting count against max_parallel: nothing else starts.
    assert!(dispatched(&run.apply(Event::Tick, T0 + 1).unwrap()).is_empty());
    // Abort: the agents are told to end the waiting attempts; their results still count.
    let commands = run.apply(Event::Control(Control::Abort), T0).unwrap();
    let cancels: Vec<usize> = commands
        .iter()
        .filter_map(|c| match c {
            Command::Cancel { step, .. } => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(cancels, members.iter().map(|m| m.0).collect::<Vec<_>>());
    // Nothing runs at a wait: the steps end at once, and the run with them (a dead server cannot
    // hold it open); the agents' late answers change nothing.
    for &(step, _) in &members {
        assert_eq!(run.steps[step].record.state, StepState::Failed);
    }
    assert!(!run.has_running_steps());
    assert_eq!(run.status(), RunStatus::Aborted);
    for &(step, _) in &members {
        ok(&mut run, step);
        assert_eq!(run.steps[step].record.state, StepState::Failed);
    }
}

#[test]
fn a_waiting_member_install_can_be_skipped_and_the_master_may_reboot_while_it_waits() {
    let inv = inventory(&[("auto", &["m1", "a", "b"], "")], 1, 0);
    let mut run = run_of(&inv, &[]);
    let upgrade = to_master_upgrade(&mut run);
    wait_for_operator(&mut run, upgrade);
    // The operator restarts the master as setup asks: not a loss.
    let m1 = crate::domain::NodeName::new("m1").unwrap();
    run.apply(Event::NodeDetached(m1.clone()), T0).unwrap();
    assert_eq!(run.status(), RunStatus::WaitingApproval, "{}", run.reason());
    run.apply(Event::NodeAttached(m1), T0).unwrap();
    // The master chain cannot be skipped, waiting or not.
    assert!(
        run.apply(Event::Control(Control::Skip { step: upgrade }), T0)
            .is_err()
    );
    run.apply(
        Event::Control(Control::ApproveInstall { step: upgrade }),
        T0,
    )
    .unwrap();
    let verify = ok(&mut run, upgrade);
    let member = ok(&mut run, verify[0].0);
    let (a, _) = member[0];
    wait_for_operator(&mut run, a);
    let commands = run
        .apply(Event::Control(Control::Skip { step: a }), T0)
        .unwrap();
    assert!(commands.contains(&Command::Cancel {
        step: a,
        attempt: 1
    }));
    assert_eq!(run.steps[a].record.state, StepState::Skipped);
    assert_eq!(run.steps[a + 1].record.state, StepState::Skipped);
    // The next member starts.
    assert_eq!(dispatched(&commands), [(a + 2, 1)]);
}

#[test]
fn a_reboot_gives_the_step_its_timeout_again() {
    let inv = inventory(&[("auto", &["m1"], "")], 1, 0);
    let mut run = run_of(&inv, &[]);
    let upgrade = to_master_upgrade(&mut run);
    let later = T0 + 500_000;
    run.apply(
        Event::StepRebooting {
            step: upgrade,
            attempt: 1,
            message: "rebooting".into(),
        },
        later,
    )
    .unwrap();
    // Past the first deadline, within the new one.
    run.apply(Event::Tick, T0 + 600_000 + RESULT_GRACE_MS + 1)
        .unwrap();
    assert_eq!(run.steps[upgrade].record.state, StepState::Running);
    run.apply(Event::Tick, later + 600_000 + RESULT_GRACE_MS + 1)
        .unwrap();
    assert_eq!(run.steps[upgrade].record.state, StepState::Failed);
    // A stale attempt's reboot changes nothing.
    assert_eq!(run.steps[upgrade].record.attempt, 1);
}

#[test]
fn a_master_that_goes_away_for_its_announced_reboot_does_not_halt_the_environment() {
    let inv = inventory(&[("auto", &["m1", "a"], "")], 1, 0);
    let mut run = run_of(&inv, &[]);
    let upgrade = to_master_upgrade(&mut run);
    let m1 = crate::domain::NodeName::new("m1").unwrap();
    run.apply(
        Event::StepRebooting {
            step: upgrade,
            attempt: 1,
            message: "restarting m1".into(),
        },
        T0,
    )
    .unwrap();
    assert_eq!(run.steps[upgrade].record.message, "restarting m1");
    // It survives a coordinator restart.
    let mut run = round_trip(&run);
    run.apply(Event::NodeDetached(m1.clone()), T0).unwrap();
    assert_eq!(run.status(), RunStatus::Running, "{}", run.reason());
    run.apply(Event::NodeAttached(m1.clone()), T0).unwrap();
    let verify = ok(&mut run, upgrade);
    assert_eq!(verify.len(), 1, "verify-master follows");
    // Unannounced, the same detach halts.
    run.apply(Event::NodeDetached(m1), T0).unwrap();
    assert_eq!(run.status(), RunStatus::Halted);
}

/// Abort asks the agent to end a running backup or verification, never a running install: the
/// run says it waits for that.
#[test]
fn abort_cancels_running_steps_but_never_an_install() {
    let inv = inventory(&[("auto", &["m1", "a", "b"], "")], 2, 0);
    let abort_at = |stop_at: &str| {
        let mut run = run_of(&inv, &[]);
        let mut queue = dispatched(&run.apply(Event::Start, T0).unwrap());
        while let Some((step, _)) = queue.first().copied() {
            if name(&run, step) == stop_at {
                break;
            }
            queue.remove(0);
            queue.extend(ok(&mut run, step));
        }
        let (step, attempt) = queue[0];
        let commands = run.apply(Event::Control(Control::Abort), T0).unwrap();
        (run, step, attempt, commands)
    };
    let (run, step, attempt, commands) = abort_at("m1:backup-secret");
    assert!(
        commands.contains(&Command::Cancel { step, attempt }),
        "{commands:?}"
    );
    assert_eq!(run.status(), RunStatus::Aborted);
    assert_eq!(
        run.reason(),
        "aborted; the steps in flight are being ended on their agents"
    );

    // Preflight only reads: it ends with the abort, and the run is over at once.
    let (run, step, _, _) = abort_at("-:preflight");
    assert_eq!(run.steps[step].record.state, StepState::Failed);
    assert!(!run.has_running_steps());
    assert_eq!(run.reason(), "aborted by the operator");

    let (run, _, _, commands) = abort_at("m1:upgrade-master");
    assert!(
        !commands.iter().any(|c| matches!(c, Command::Cancel { .. })),
        "{commands:?}"
    );
    assert_eq!(
        run.reason(),
        "aborted; waiting for upgrade-master on m1 (e0) to end: an install is never stopped halfway (it would leave the server in an unknown state)"
    );
}

/// A master's agent killed mid-install: the master detaches (halt), comes back, its install is
/// reported failed (interrupted). One retry lifts the halt and installs again: the stale "detached"
/// reason is gone, and no resume is needed. While the master is still away, the retry says so.
#[test]
fn retrying_the_master_step_after_its_agent_came_back_resumes_the_run() {
    let inv = inventory(&[("auto", &["m", "a"], "")], 1, 0);
    let mut run = run_of(&inv, &[]);
    let mut queue = dispatched(&run.apply(Event::Start, T0).unwrap());
    let upgrade = loop {
        let (step, _) = queue.remove(0);
        if run.steps[step].plan.kind == StepKind::UpgradeMaster {
            break step;
        }
        queue.extend(ok(&mut run, step));
    };
    let m = NodeName::new("m").unwrap();
    run.apply(Event::NodeDetached(m.clone()), T0).unwrap();
    assert!(run.reason().contains("detached"), "{}", run.reason());

    // Still away: the retry is taken, and the reason says what holds the run now.
    fail(&mut run, upgrade);
    let none = dispatched(
        &run.apply(Event::Control(Control::Retry { step: upgrade }), T0)
            .unwrap(),
    );
    assert!(none.is_empty(), "{none:?}");
    assert_eq!(run.status(), RunStatus::Halted);
    assert!(
        run.reason().contains("master m of e0 is still detached"),
        "{}",
        run.reason()
    );

    run.apply(Event::NodeAttached(m.clone()), T0).unwrap();
    let resumed = dispatched(&run.apply(Event::Control(Control::Resume), T0).unwrap());
    assert_eq!(resumed, [(upgrade, 2)]);

    // The second attempt's agent is killed too: detached, back, reported interrupted. One retry is
    // enough now.
    run.apply(Event::NodeDetached(m.clone()), T0).unwrap();
    run.apply(Event::NodeAttached(m), T0).unwrap();
    fail(&mut run, upgrade);
    assert!(
        run.reason().contains("upgrade-master on m (e0) failed"),
        "{}",
        run.reason()
    );
    let again = dispatched(
        &run.apply(Event::Control(Control::Retry { step: upgrade }), T0)
            .unwrap(),
    );
    assert_eq!(again, [(upgrade, 3)]);
    assert_eq!(run.status(), RunStatus::Running);
    assert_eq!(run.reason(), "");
}
