//! The migrate workflow in the engine: one chain on the master, with the coordinator's waits for the
//! operator (the Host Account Cache stop on another server, the review of the export) passed only by
//! `approve`; and stored runs of the older six-step plan still run and restore.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use proptest::prelude::*;

use super::tests::{T0, dispatched, fail, name, ok, round_trip, run_to_quiet};
use super::*;
use crate::domain::{EnvName, NodeName};
use crate::inventory::Inventory;
use crate::plan::{Expected, Plan, StepKind};
use crate::plan::{Reported, Reports, migrate_plan};

/// `[environment.migration]` of each kind the planner lays out differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// HIS 2000 whose host security server is another server: the operator stops its cache.
    His2000Elsewhere,
    /// HIS 2000 on the master itself: the export step stops the cache.
    His2000OnMaster,
    /// SNA Server 4.0, the database file on the master: no key, no stop for the operator.
    Sna4Local,
}

fn migration_table(source: Source) -> &'static str {
    match source {
        Source::His2000Elsewhere => "source = \"his2000\"\nhost_security_server = \"PDC1\"\n",
        Source::His2000OnMaster => "source = \"his2000\"\nhost_security_server = \"M1\"\n",
        Source::Sna4Local => {
            "source = \"sna4\"\nhost_security_dbfile = 'D:\\hostsec\\dbfile.dbs'\n"
        }
    }
}

/// The migrate plan of m1 (ESSO on `version`, "" for none); `window` in the inventory's syntax.
fn plan_of(source: Source, version: &str, window: Option<&str>) -> (Plan, Inventory) {
    let text = format!(
        "[upgrade]\ntarget_version = \"3.0.7\"\ninstaller = 'setup.exe'\n[policy]\nstep_timeout = \"10m\"\n[[environment]]\nname = \"e0\"\nmaster = \"m1\"\nmembers = [\"a\"]\nbackup_dir = 'b'\n{}[environment.migration]\n{}backup_dir = 'hostsec-backups'\n",
        window
            .map(|w| format!("window = {w}\n"))
            .unwrap_or_default(),
        migration_table(source)
    );
    let inv = Inventory::parse(Path::new("fleet.toml"), &text).unwrap();
    let versions: Reports = [(NodeName::new("m1").unwrap(), Reported::version(version))].into();
    let p = migrate_plan(&inv, &EnvName::new("e0").unwrap(), &versions).unwrap();
    (p, inv)
}

/// A migrate run on m1, every node attached.
fn migrate_run_with(source: Source, version: &str, window: Option<&str>) -> Run {
    let (p, inv) = plan_of(source, version, window);
    let attached = inv.nodes().map(|(_, n, _)| n.clone()).collect();
    let mut run = Run::new(&p, 600_000, attached);
    run.set_windows(inv.environments.iter().map(|e| e.window.clone()).collect());
    run
}

fn migrate_run(source: Source) -> Run {
    migrate_run_with(source, "", None)
}

/// What the shell does with a dispatched wait: reports it waiting with what the operator must do.
fn shell_waits(run: &mut Run, step: usize) -> Vec<Command> {
    let attempt = run.steps[step].record.attempt;
    let instruction = format!("{} (as the shell says it)", run.steps[step].plan.note);
    run.apply(
        Event::StepWaiting {
            step,
            attempt,
            instruction,
        },
        T0,
    )
    .unwrap()
}

/// Runs the dispatched steps to success, in order, up to the first wait for the operator (reported
/// waiting); the names run, and the wait's index.
fn to_next_wait(run: &mut Run, mut queue: Vec<(usize, u32)>) -> (Vec<String>, Option<usize>) {
    let mut order = Vec::new();
    while let Some((step, _)) = queue.first().copied() {
        queue.remove(0);
        order.push(name(run, step));
        if run.steps[step].plan.kind.awaits_operator() {
            shell_waits(run, step);
            return (order, Some(step));
        }
        queue.extend(ok(run, step));
    }
    (order, None)
}

fn approve(run: &mut Run) -> Vec<(usize, u32)> {
    dispatched(&run.apply(Event::Control(Control::Approve), T0).unwrap())
}

#[test]
fn a_his2000_migration_waits_for_the_cache_stop_and_the_review_and_goes_on_only_when_approved() {
    let mut run = migrate_run(Source::His2000Elsewhere);
    let first = dispatched(&run.apply(Event::Start, T0).unwrap());
    let (order, stop) = to_next_wait(&mut run, first);
    assert_eq!(
        order,
        [
            "m1:backup-security-data",
            "m1:export-encryption-key",
            "m1:install-sso",
            "m1:copy-migration-utility",
            "-:stop-host-account-cache",
        ]
    );
    let stop = stop.unwrap();
    assert_eq!(run.steps[stop].record.state, StepState::Waiting);
    assert_eq!(run.status(), RunStatus::WaitingApproval);
    assert_eq!(
        run.reason(),
        "stop-host-account-cache of e0: stop the Host Account Cache service on PDC1 for the export, then approve (as the shell says it)"
    );
    assert!(
        !run.has_running_steps(),
        "nothing is out on an agent while the run waits"
    );
    // Waiting is no silence: no timeout, nothing else starts, however long the operator takes.
    let later = T0 + 10 * 3_600_000;
    assert!(dispatched(&run.apply(Event::Tick, later).unwrap()).is_empty());
    assert_eq!(run.steps[stop].record.state, StepState::Waiting);

    let export = approve(&mut run);
    assert_eq!(run.steps[stop].record.message, "approved");
    assert_eq!(
        export
            .iter()
            .map(|&(s, _)| name(&run, s))
            .collect::<Vec<_>>(),
        ["m1:export-host-security"]
    );
    let (order, review) = to_next_wait(&mut run, export);
    assert_eq!(order, ["m1:export-host-security", "-:review-export"]);
    let review = review.unwrap();
    assert!(
        run.reason()
            .starts_with("review-export of e0: review the exported host security data")
    );
    assert!(
        run.reason()
            .contains("restart the Host Account Cache service on PDC1")
    );
    // A coordinator restart keeps the wait.
    let mut run = round_trip(&run);
    assert_eq!(run.status(), RunStatus::WaitingApproval);
    let import = approve(&mut run);
    assert_eq!(
        run_to_quiet(&mut run, import),
        ["m1:import-host-security", "m1:verify"]
    );
    assert_eq!(run.steps[review].record.state, StepState::Succeeded);
    assert_eq!(run.status(), RunStatus::Succeeded);
}

#[test]
fn nothing_after_the_review_starts_before_the_operator_approves_it() {
    let mut run = migrate_run(Source::His2000OnMaster);
    let first = dispatched(&run.apply(Event::Start, T0).unwrap());
    let (order, review) = to_next_wait(&mut run, first);
    assert_eq!(
        order.last().map(String::as_str),
        Some("-:review-export"),
        "no stop for the operator when the master is the host security server: {order:?}"
    );
    let review = review.unwrap();
    let import = review + 1;
    let m1 = NodeName::new("m1").unwrap();
    let attempt = run.steps[review].record.attempt;
    // Nothing an agent, the clock or the shell reports passes the review, and no other control does.
    let events = [
        Event::Tick,
        Event::StepFinished {
            step: review,
            attempt,
            outcome: Outcome::Succeeded,
        },
        Event::NodeAttached(m1.clone()),
        Event::StepWaiting {
            step: review,
            attempt,
            instruction: "again".into(),
        },
        Event::Control(Control::ApproveInstall { step: review }),
        Event::Control(Control::ApproveInstall { step: import }),
        Event::Control(Control::Skip { step: review }),
        Event::Control(Control::Retry { step: review }),
        Event::Control(Control::Resume),
        Event::Control(Control::Pause),
        Event::Control(Control::Resume),
    ];
    for event in events {
        let what = format!("{event:?}");
        if let Ok(commands) = run.apply(event, T0 + 1) {
            assert!(dispatched(&commands).is_empty(), "{what} dispatched");
        }
        assert_eq!(
            run.steps[review].record.state,
            StepState::Waiting,
            "after {what}"
        );
        assert_eq!(
            run.steps[import].record.state,
            StepState::Pending,
            "after {what}"
        );
    }
    // The master going away meanwhile halts the environment; approving does not lift that.
    run.apply(Event::NodeDetached(m1.clone()), T0).unwrap();
    assert_eq!(run.status(), RunStatus::Halted);
    assert!(approve(&mut run).is_empty());
    assert_eq!(run.steps[review].record.state, StepState::Succeeded);
    run.apply(Event::NodeAttached(m1), T0).unwrap();
    let import_started = dispatched(&run.apply(Event::Control(Control::Resume), T0).unwrap());
    assert_eq!(import_started, [(import, 1)]);
    // A second approve has nothing to pass.
    assert!(run.apply(Event::Control(Control::Approve), T0).is_err());
}

#[test]
fn an_sna4_migration_has_no_key_step_and_no_cache_stop_for_the_operator() {
    let mut run = migrate_run(Source::Sna4Local);
    let first = dispatched(&run.apply(Event::Start, T0).unwrap());
    let (order, review) = to_next_wait(&mut run, first);
    assert_eq!(
        order,
        [
            "m1:backup-security-data",
            "m1:install-sso",
            "m1:copy-migration-utility",
            "m1:export-host-security",
            "-:review-export",
        ]
    );
    assert_eq!(run.steps[1].record.state, StepState::Skipped);
    assert_eq!(
        run.steps[1].record.message,
        "SNA Server 4.0 has no encryption key"
    );
    assert!(review.is_some());
    let rest = approve(&mut run);
    assert_eq!(run_to_quiet(&mut run, rest).len(), 2);
    assert_eq!(run.status(), RunStatus::Succeeded);
}

#[test]
fn a_failed_migrate_step_halts_and_nothing_after_it_starts_until_it_is_retried() {
    let mut run = migrate_run(Source::His2000OnMaster);
    let first = dispatched(&run.apply(Event::Start, T0).unwrap());
    let export = ok(&mut run, first[0].0);
    assert!(fail(&mut run, export[0].0).is_empty());
    assert_eq!(run.status(), RunStatus::Halted);
    assert!(
        run.reason().contains("export-encryption-key on m1"),
        "{}",
        run.reason()
    );
    // Skipping a chain step is refused; resume is refused while it is failed.
    assert!(
        run.apply(Event::Control(Control::Skip { step: 1 }), T0)
            .is_err()
    );
    assert!(run.apply(Event::Control(Control::Resume), T0).is_err());
    let again = dispatched(
        &run.apply(Event::Control(Control::Retry { step: 1 }), T0)
            .unwrap(),
    );
    assert_eq!(again, [(1, 2)]);
    let (_, review) = to_next_wait(&mut run, again);
    assert!(review.is_some());
    let rest = approve(&mut run);
    assert_eq!(run_to_quiet(&mut run, rest).len(), 2);
    assert_eq!(run.status(), RunStatus::Succeeded);
    // The master detaching halts a migration in progress too.
    let mut run = migrate_run(Source::His2000OnMaster);
    run.apply(Event::Start, T0).unwrap();
    run.apply(Event::NodeDetached(NodeName::new("m1").unwrap()), T0)
        .unwrap();
    assert_eq!(run.status(), RunStatus::Halted);
}

#[test]
fn a_review_the_shell_cannot_prepare_fails_halts_and_is_retried() {
    let mut run = migrate_run(Source::His2000OnMaster);
    let mut queue = dispatched(&run.apply(Event::Start, T0).unwrap());
    let review = loop {
        let (step, _) = queue.remove(0);
        if run.steps[step].plan.kind == StepKind::ReviewExport {
            break step;
        }
        queue.extend(ok(&mut run, step));
    };
    assert!(fail(&mut run, review).is_empty());
    assert_eq!(run.status(), RunStatus::Halted);
    assert_eq!(run.steps[review + 1].record.state, StepState::Pending);
    let again = dispatched(
        &run.apply(Event::Control(Control::Retry { step: review }), T0)
            .unwrap(),
    );
    assert_eq!(again, [(review, 2)]);
    shell_waits(&mut run, review);
    assert_eq!(run.steps[review].record.state, StepState::Waiting);
    assert_eq!(approve(&mut run), [(review + 1, 1)]);
}

#[test]
fn an_aborted_run_ends_its_wait_for_the_operator() {
    let mut run = migrate_run(Source::His2000OnMaster);
    let first = dispatched(&run.apply(Event::Start, T0).unwrap());
    let (_, review) = to_next_wait(&mut run, first);
    let review = review.unwrap();
    let commands = run.apply(Event::Control(Control::Abort), T0).unwrap();
    assert!(
        !commands.iter().any(|c| matches!(c, Command::Cancel { .. })),
        "no agent holds anything"
    );
    assert_eq!(run.steps[review].record.state, StepState::Failed);
    assert_eq!(run.status(), RunStatus::Aborted);
    assert!(!run.has_running_steps());
    assert!(run.apply(Event::Control(Control::Approve), T0).is_err());
}

#[test]
fn already_on_the_target_esso_is_not_installed_again_but_the_migration_runs() {
    let mut run = migrate_run_with(Source::His2000OnMaster, "3.0.7", None);
    let first = dispatched(&run.apply(Event::Start, T0).unwrap());
    let (order, _) = to_next_wait(&mut run, first);
    assert!(!order.contains(&"m1:install-sso".to_string()), "{order:?}");
    assert_eq!(run.steps[2].record.state, StepState::AlreadyCurrent);
    let rest = approve(&mut run);
    run_to_quiet(&mut run, rest);
    assert_eq!(run.status(), RunStatus::Succeeded);
}

/// A run stored before the review existed: six steps, `run-migration` doing export and import at once.
#[test]
fn a_stored_six_step_migration_still_runs_and_restores() {
    let (plan, _) = plan_of(Source::His2000OnMaster, "", None);
    let steps: Vec<crate::plan::PlannedStep> = plan
        .steps
        .iter()
        .filter(|s| !s.kind.awaits_operator() && s.kind != StepKind::ImportHostSecurity)
        .cloned()
        .enumerate()
        .map(|(index, mut s)| {
            if s.kind == StepKind::ExportHostSecurity {
                s.kind = StepKind::RunMigration;
            }
            s.index = index;
            s
        })
        .collect();
    // As it was stored then, and read back now.
    let stored = serde_json::to_string(&Plan { steps, ..plan }).unwrap();
    assert!(stored.contains("\"RunMigration\""));
    let old: Plan = serde_json::from_str(&stored).unwrap();
    let mut run = Run::new(&old, 600_000, [NodeName::new("m1").unwrap()].into());
    let first = dispatched(&run.apply(Event::Start, T0).unwrap());
    let after_first = ok(&mut run, first[0].0);
    let mut run = round_trip(&run);
    assert_eq!(
        run_to_quiet(&mut run, after_first),
        [
            "m1:export-encryption-key",
            "m1:install-sso",
            "m1:copy-migration-utility",
            "m1:run-migration",
            "m1:verify",
        ]
    );
    assert_eq!(run.status(), RunStatus::Succeeded);
}

// ---------------------------------------------------------------------------------------------------
// Properties: the chain's order, and the waits passed by approval only, under any interleaving.

fn source() -> impl Strategy<Value = Source> {
    prop_oneof![
        Just(Source::His2000Elsewhere),
        Just(Source::His2000OnMaster),
        Just(Source::Sna4Local)
    ]
}

fn build(source: Source, version: u8, window: Option<(u32, u32)>) -> Run {
    // T0 is 00:16:40 UTC; a window opens within two minutes after it.
    let clock = |s: u32| format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
    let window = window.map(|(open, len)| {
        format!(
            "{{ days = [\"mon\",\"tue\",\"wed\",\"thu\",\"fri\",\"sat\",\"sun\"], start = \"{}\", end = \"{}\", tz = \"UTC\" }}",
            clock(1000 + open),
            clock(1000 + open + len)
        )
    });
    let version = ["", "3.0.7.0", "3.0.10"][usize::from(version)];
    migrate_run_with(source, version, window.as_deref())
}

/// What the test, as shell and agent, knows from the commands and its own deliveries.
#[derive(Default)]
struct Observer {
    outstanding: BTreeMap<usize, u32>,
    highest_attempt: BTreeMap<usize, u32>,
    /// Steps whose last delivered result was a success.
    succeeded: BTreeSet<usize>,
    /// Waits the operator's approval passed.
    approved: BTreeSet<usize>,
}

impl Observer {
    fn check(
        &mut self,
        run: &Run,
        commands: &[Command],
        approval: bool,
        now: Millis,
    ) -> Result<(), TestCaseError> {
        for command in commands {
            match *command {
                Command::StepChanged { step, state, .. }
                    if run.steps[step].plan.kind.awaits_operator() =>
                {
                    if state == StepState::Succeeded {
                        prop_assert!(approval, "wait {step} passed without an approval");
                        self.approved.insert(step);
                        self.outstanding.remove(&step);
                    }
                    if state == StepState::Failed {
                        self.outstanding.remove(&step);
                        self.approved.remove(&step);
                    }
                }
                Command::StepChanged {
                    step,
                    state: StepState::Failed,
                    ..
                } => {
                    self.outstanding.remove(&step);
                    self.succeeded.remove(&step);
                }
                Command::Dispatch { step, attempt } => {
                    prop_assert!(
                        attempt > self.highest_attempt.get(&step).copied().unwrap_or(0),
                        "attempt {attempt} of step {step} reused"
                    );
                    prop_assert!(
                        !self.outstanding.contains_key(&step),
                        "step {step} dispatched while in flight"
                    );
                    prop_assert!(
                        matches!(run.steps[step].plan.expected, Expected::Run),
                        "step {step} planned not to run was dispatched"
                    );
                    prop_assert!(
                        run.envs[0].window.as_ref().is_none_or(|w| w.is_open(now)),
                        "step {step} dispatched outside its window"
                    );
                    // The chain: every step before it succeeded, was planned out, or was approved.
                    for before in 0..step {
                        let planned_out = !matches!(run.steps[before].plan.expected, Expected::Run);
                        prop_assert!(
                            planned_out
                                || self.succeeded.contains(&before)
                                || self.approved.contains(&before),
                            "{} dispatched before {} passed",
                            name(run, step),
                            name(run, before)
                        );
                    }
                    self.highest_attempt.insert(step, attempt);
                    self.outstanding.insert(step, attempt);
                }
                _ => {}
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(256)
    ))]

    #[test]
    fn a_migration_keeps_its_order_and_its_waits_pass_only_by_approval(
        source in source(),
        version in 0u8..3,
        window in proptest::option::weighted(0.3, (0u32..120, 5u32..60)),
        choices in proptest::collection::vec((0u8..12, any::<u16>(), proptest::bool::weighted(0.2)), 0..200),
    ) {
        let mut run = build(source, version, window);
        let mut obs = Observer::default();
        let mut now = T0;
        let c = run.apply(Event::Start, now).unwrap();
        obs.check(&run, &c, false, now)?;
        let m1 = NodeName::new("m1").unwrap();
        for (kind, pick, flag) in choices {
            let pick = usize::from(pick);
            let steps = run.steps.len();
            let event = match kind {
                // What an agent, or the shell for its waits, reports of an outstanding attempt.
                0..=3 if !obs.outstanding.is_empty() => {
                    let (&step, &attempt) = obs.outstanding.iter().nth(pick % obs.outstanding.len()).unwrap();
                    let wait = run.steps[step].plan.kind.awaits_operator();
                    if wait && !flag {
                        Event::StepWaiting { step, attempt, instruction: "review it".into() }
                    } else {
                        let outcome = if flag { Outcome::Failed("simulated".into()) } else { Outcome::Succeeded };
                        if !wait {
                            obs.outstanding.remove(&step);
                            if flag { obs.succeeded.remove(&step); } else { obs.succeeded.insert(step); }
                        }
                        Event::StepFinished { step, attempt, outcome }
                    }
                }
                // A success claimed for any step's current attempt (a duplicate, or for a wait).
                4 => {
                    let step = pick % steps;
                    let attempt = run.steps[step].record.attempt;
                    let s = &run.steps[step];
                    let finishes = s.record.state == StepState::Running
                        || (s.record.state == StepState::Waiting && s.plan.kind.installs());
                    if !s.plan.kind.awaits_operator() && finishes {
                        obs.outstanding.remove(&step);
                        obs.succeeded.insert(step);
                    }
                    Event::StepFinished { step, attempt, outcome: Outcome::Succeeded }
                }
                5 => { now += i64::from(pick as u16 % 5000); Event::Tick }
                6 => Event::Control(Control::Approve),
                7 => if flag { Event::Control(Control::Skip { step: pick % steps }) } else { Event::Control(Control::Retry { step: pick % steps }) },
                8 => match pick % 5 {
                    0 => Event::Control(Control::Pause),
                    1 => Event::Control(Control::Resume),
                    2 => Event::NodeDetached(m1.clone()),
                    3 => Event::Control(Control::ApproveInstall { step: pick % steps }),
                    _ => Event::NodeAttached(m1.clone()),
                },
                9 if !obs.outstanding.is_empty() => {
                    let (&step, &attempt) = obs.outstanding.iter().nth(pick % obs.outstanding.len()).unwrap();
                    if run.steps[step].record.state == StepState::Running {
                        obs.outstanding.remove(&step);
                    }
                    Event::StepNotDelivered { step, attempt }
                }
                10 => {
                    let restored = round_trip(&run);
                    prop_assert_eq!(&restored, &run);
                    run = restored;
                    now += 500;
                    Event::Tick
                }
                _ => { now += 1000; Event::Tick }
            };
            let approval = matches!(event, Event::Control(Control::Approve));
            if let Ok(c) = run.apply(event, now) {
                obs.check(&run, &c, approval, now)?;
            }
        }
    }

    #[test]
    fn a_migration_where_everything_succeeds_finishes_with_one_approval_per_wait(
        source in source(),
        version in 0u8..3,
    ) {
        let mut run = build(source, version, None);
        let waits = run.steps.iter().filter(|s| s.plan.kind.awaits_operator()).count();
        let mut approvals = 0;
        let mut queue = dispatched(&run.apply(Event::Start, T0).unwrap());
        for _ in 0..100 {
            if run.status().is_final() { break; }
            if let Some((step, attempt)) = queue.pop() {
                let event = if run.steps[step].plan.kind.awaits_operator() {
                    Event::StepWaiting { step, attempt, instruction: "approve".into() }
                } else {
                    Event::StepFinished { step, attempt, outcome: Outcome::Succeeded }
                };
                queue.extend(dispatched(&run.apply(event, T0).unwrap()));
            } else {
                prop_assert_eq!(run.status(), RunStatus::WaitingApproval);
                approvals += 1;
                queue.extend(approve(&mut run));
            }
        }
        prop_assert_eq!(run.status(), RunStatus::Succeeded);
        prop_assert_eq!(approvals, waits);
        prop_assert!(run.steps.iter().all(|s| s.record.state.is_done()));
    }
}
