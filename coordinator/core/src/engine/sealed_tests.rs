//! What the shell used to decide or change by hand, now events and queries of the engine: a
//! coordinator restart ([`Event::Resumed`]), what a finished run still hears, an approval re-sent to
//! an agent that did not get it, which step a control naming a node means, and the member pairs
//! taken from the plan rather than from where the steps stand in it.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::tests::{T0, all, build, dispatched, inventory, shape};
use super::*;
use crate::domain::NodeName;
use crate::plan::{Plan, Reported, Reports, StepKind, plan};

/// Every node of `run`, in plan order.
fn nodes(run: &Run) -> Vec<NodeName> {
    let set: BTreeSet<NodeName> = run
        .steps
        .iter()
        .filter_map(|s| s.plan.node.clone())
        .collect();
    set.into_iter().collect()
}

/// The targets a control names resolve to steps of that node (and name), failed ones first, never
/// to a step that is done, running or waiting; an approval naming a node, to its waiting install.
fn check_targets(run: &Run) -> Result<(), TestCaseError> {
    let names = [
        "upgrade",
        "verify",
        "backup-secret",
        "upgrade-master",
        "no-such-step",
    ];
    for node in nodes(run) {
        for name in names.iter().map(Some).chain([None]) {
            let of_node = |i: &usize| {
                let s = &run.steps[*i];
                s.plan.node.as_ref() == Some(&node) && name.is_none_or(|n| s.plan.kind.name() == *n)
            };
            let with = |state: StepState| {
                (0..run.steps.len())
                    .filter(of_node)
                    .any(|i| run.steps[i].record.state == state)
            };
            match run.target(Some(&node), name.copied()) {
                Ok(i) => {
                    prop_assert!(of_node(&i), "{node} {name:?}: step {i} is another node's");
                    let state = run.steps[i].record.state;
                    prop_assert!(
                        matches!(state, StepState::Failed | StepState::Pending),
                        "{node}: step {i} is {state:?}"
                    );
                    if with(StepState::Failed) {
                        prop_assert_eq!(
                            state,
                            StepState::Failed,
                            "{} {:?}: a failed step comes first",
                            node,
                            name
                        );
                    }
                }
                Err(why) => {
                    prop_assert_eq!(why, Unresolved::NothingOn(node.clone()));
                    prop_assert!(!with(StepState::Failed) && !with(StepState::Pending));
                }
            }
        }
        match run.waiting_install(&node) {
            Ok(i) => {
                let s = &run.steps[i];
                prop_assert!(s.plan.node.as_ref() == Some(&node) && s.plan.kind.installs());
                prop_assert_eq!(s.record.state, StepState::Waiting);
            }
            Err(why) => prop_assert_eq!(why, Unresolved::NoInstallWaits(node.clone())),
        }
    }
    match run.target(None, None) {
        Ok(i) => prop_assert!(
            run.steps[i].plan.node.is_none() && run.steps[i].record.state == StepState::Failed
        ),
        Err(why) => {
            prop_assert_eq!(why, Unresolved::NodeNeeded);
            prop_assert!(
                !run.steps
                    .iter()
                    .any(|s| s.plan.node.is_none() && s.record.state == StepState::Failed)
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(256)
    ))]

    /// Through any interleaving: a restart changes nothing but the clocks of the steps out; a
    /// finished run hears only results, lost deliveries, timeouts and restarts; an approval is
    /// re-sent without changing the step; and a control's target is always a step the control can
    /// mean.
    #[test]
    fn what_the_shell_did_by_hand_goes_through_apply(
        shape in shape(),
        choices in proptest::collection::vec((0u8..12, any::<u16>(), proptest::bool::weighted(0.2)), 0..300),
    ) {
        let (mut run, _) = build(&shape);
        let mut now = T0;
        let mut out: Vec<(usize, u32)> = dispatched(&run.apply(Event::Start, now).unwrap());
        for (kind, pick, flag) in choices {
            let pick = usize::from(pick);
            let any_step = pick % run.steps.len();
            let event = match kind {
                0..=2 if !out.is_empty() => {
                    let (step, attempt) = out.remove(pick % out.len());
                    let outcome = if flag { Outcome::Failed("simulated".into()) } else { Outcome::Succeeded };
                    Event::StepFinished { step, attempt, outcome }
                }
                3 | 10 if !out.is_empty() => {
                    let (step, attempt) = out[pick % out.len()];
                    Event::StepWaiting { step, attempt, instruction: "attended".into() }
                }
                4 | 11 => {
                    // Mostly an install that waits: the approval the walk is after.
                    let waiting = run.steps[any_step].plan.node.as_ref().and_then(|n| run.waiting_install(n).ok());
                    Event::Control(Control::ApproveInstall { step: waiting.unwrap_or(any_step) })
                }
                5 => Event::Resumed,
                6 => match run.target(run.steps[any_step].plan.node.as_ref(), None) {
                    Ok(step) if flag => Event::Control(Control::Skip { step }),
                    Ok(step) => Event::Control(Control::Retry { step }),
                    Err(_) => Event::Control(Control::Approve),
                },
                // An abort now and then: it ends the walk's run.
                7 if flag && pick % 4 == 0 => Event::Control(Control::Abort),
                7 => Event::Control([Control::Pause, Control::Resume][pick % 2].clone()),
                8 => { now += 600_000; Event::Tick }
                _ => { now += 1000; Event::Tick }
            };
            let before = run.clone();
            let result = run.apply(event.clone(), now);
            if before.status().is_final() && !before.hears_when_final(&event) {
                prop_assert_eq!(&run, &before, "a finished run changed on {:?}", event);
                match (&event, &result) {
                    (Event::Control(_), Err(Refused(why))) => prop_assert!(why.contains("nothing can change it")),
                    (_, Ok(c)) => prop_assert!(c.is_empty()),
                    (_, Err(r)) => prop_assert!(false, "{event:?} refused: {r}"),
                }
            }
            let Ok(commands) = result else {
                prop_assert_eq!(&run, &before, "a refused control changed the run");
                continue;
            };
            match &event {
                Event::Resumed => {
                    prop_assert!(commands.is_empty());
                    prop_assert_eq!(run.durable(), before.durable());
                    for (i, (a, b)) in run.steps.iter().zip(&before.steps).enumerate() {
                        let mut expected = b.record.clone();
                        if b.record.state == StepState::Running {
                            expected.dispatched_at = Some(now);
                        }
                        prop_assert_eq!(&a.record, &expected, "step {}", i);
                    }
                }
                Event::StepWaiting { step, attempt, .. } => {
                    let b = &before.steps[*step];
                    if b.record.approved == Some(*attempt) && b.record.state == StepState::Running && !before.status().is_final() {
                        prop_assert_eq!(&run.steps[*step].record, &b.record);
                        let resent = Command::Continue { step: *step, attempt: *attempt };
                        prop_assert!(commands.contains(&resent), "no Continue");
                    } else {
                        let resent = commands.iter().any(|c| matches!(c, Command::Continue { .. }));
                        prop_assert!(!resent, "a Continue for an attempt not approved");
                    }
                }
                _ => {}
            }
            // What is out now: dispatched, not finished (a retried step's old attempt is stale).
            out.retain(|&(s, a)| run.steps[s].record.attempt == a && run.steps[s].record.state.in_flight());
            out.extend(dispatched(&commands));
            check_targets(&run)?;
        }
    }
}

/// A plan whose verifies do not follow their upgrades (every upgrade, then every verify): each
/// verify still waits for its own node's upgrade, and a failed upgrade skips its own verify.
#[test]
fn member_pairs_come_from_the_plan_not_from_where_the_steps_stand() {
    let inv = inventory(&[("auto", &["m", "a", "b"], "")], 4, 5);
    let versions: Reports = inv
        .nodes()
        .map(|(_, n, _)| (n.clone(), Reported::version("3.0.6")))
        .collect();
    let p = plan(&inv, &all(), &versions).unwrap();
    let member = |k: StepKind| p.steps.iter().filter(move |s| s.kind == k).cloned();
    let mut steps: Vec<_> = p
        .steps
        .iter()
        .filter(|s| !s.kind.is_member_step() && s.kind != StepKind::Gate)
        .cloned()
        .collect();
    steps.extend(member(StepKind::UpgradeMember));
    steps.extend(
        member(StepKind::VerifyMember)
            .collect::<Vec<_>>()
            .into_iter()
            .rev(),
    );
    steps.extend(p.steps.iter().filter(|s| s.kind == StepKind::Gate).cloned());
    for (i, s) in steps.iter_mut().enumerate() {
        s.index = i;
    }
    let p = Plan { steps, ..p };
    let attached = inv.nodes().map(|(_, n, _)| n.clone()).collect();
    let mut run = Run::new(&p, 600_000, attached);
    let step = |run: &Run, node: &str, kind: StepKind| {
        (0..run.steps.len())
            .find(|&i| {
                run.steps[i].plan.kind == kind
                    && run.steps[i].plan.node.as_ref().map(NodeName::as_str) == Some(node)
            })
            .unwrap()
    };
    let mut queue = dispatched(&run.apply(Event::Start, T0).unwrap());
    let mut seen = Vec::new();
    while let Some((i, attempt)) = queue.pop() {
        seen.push(i);
        let s = &run.steps[i];
        let outcome = if s.plan.kind == StepKind::UpgradeMember
            && s.plan.node.as_ref().map(NodeName::as_str) == Some("a")
        {
            Outcome::Failed("exit 1603".into())
        } else {
            Outcome::Succeeded
        };
        if s.plan.kind == StepKind::VerifyMember {
            let node = s.plan.node.clone().unwrap();
            let upgrade = step(&run, node.as_str(), StepKind::UpgradeMember);
            assert_eq!(
                run.steps[upgrade].record.state,
                StepState::Succeeded,
                "{node}: verified before its upgrade"
            );
        }
        queue.extend(dispatched(
            &run.apply(
                Event::StepFinished {
                    step: i,
                    attempt,
                    outcome,
                },
                T0,
            )
            .unwrap(),
        ));
    }
    let (verify_a, verify_b) = (
        step(&run, "a", StepKind::VerifyMember),
        step(&run, "b", StepKind::VerifyMember),
    );
    assert_eq!(run.steps[verify_a].record.state, StepState::Skipped);
    assert_eq!(run.steps[verify_a].record.message, "the upgrade failed");
    assert_eq!(run.steps[verify_b].record.state, StepState::Succeeded);
    assert!(!seen.contains(&verify_a));
    assert_eq!(run.status(), RunStatus::Failed, "{}", run.reason());
}

/// The run's state as coordinators before this one stored it (`runs.engine_state`) still loads, and
/// is stored again byte for byte the same.
#[test]
fn the_stored_run_state_keeps_its_form() {
    let stored = concat!(
        r#"{"started":true,"paused":false,"aborted":false,"#,
        r#""halt":"upgrade-master on m (e0) failed: exit 1603","status":"Halted","#,
        r#""reason":"upgrade-master on m (e0) failed: exit 1603","#,
        r#""envs":[{"status":"Halted","member_failures":0,"failures_accepted":0,"master_lost":false},"#,
        r#"{"status":"Pending","member_failures":2,"failures_accepted":1,"master_lost":true}]}"#
    );
    let durable: Durable = serde_json::from_str(stored).unwrap();
    let inv = inventory(
        &[("auto", &["m", "a"], ""), ("auto", &["n", "b"], "")],
        1,
        0,
    );
    let versions: Reports = inv
        .nodes()
        .map(|(_, n, _)| (n.clone(), Reported::version("3.0.6")))
        .collect();
    let p = plan(&inv, &all(), &versions).unwrap();
    let fresh = Run::new(&p, 600_000, BTreeSet::new());
    let records = (0..fresh.steps.len())
        .map(|i| fresh.step_record(i))
        .collect();
    let run = Run::restore(
        &p,
        600_000,
        vec![None, None],
        records,
        durable,
        BTreeSet::new(),
    )
    .unwrap();
    assert_eq!(run.status(), RunStatus::Halted);
    assert_eq!(run.envs()[1].member_failures(), 2);
    assert!(run.record.started && run.envs[1].record.master_lost);
    assert_eq!(serde_json::to_string(&run.durable()).unwrap(), stored);
}
