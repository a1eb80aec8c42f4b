//! The operator API's answers as `operator.proto` documents them, read by a client of its own (a raw
//! tonic client, as a second client would be): stored events carry increasing seqs and live ones none;
//! environments say their state and what they wait for; a run shows its selection, environments,
//! plan, installer and each step's latest attempt, percent and outputs, and a past run shows what it
//! showed while it was the active one (issue 15).

use std::collections::HashMap;
use std::time::Duration;

use fleet_proto::pb;
use fleet_proto::pb::operator_service_client::OperatorServiceClient;
use fleet_proto::pb::run_event::Kind;
use fleet_tests::eventually;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

use super::operator_api::{OneMaster, control, one_master_with};

/// Every event `WatchRun` streams from `after_seq` (with `follow`, until the run ends), of `node`'s
/// steps only if given.
fn watch(
    s: &OneMaster,
    client: &mut OperatorServiceClient<Channel>,
    run_id: &str,
    after_seq: u64,
    follow: bool,
    node: Option<&str>,
) -> Vec<pb::RunEvent> {
    s.runtime.block_on(async {
        let request = pb::WatchRunRequest {
            run_id: run_id.to_string(),
            after_seq,
            follow,
            node: node.map(str::to_string),
            step: None,
        };
        let mut stream = client.watch_run(request).await.unwrap().into_inner();
        let mut events = Vec::new();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(90), stream.message()).await;
            match next.expect("the run to end within 90 s").unwrap() {
                Some(event) => events.push(event),
                None => return events,
            }
        }
    })
}

fn get(s: &OneMaster, client: &mut OperatorServiceClient<Channel>, run_id: &str) -> pb::Run {
    s.runtime
        .block_on(client.get_run(pb::GetRunRequest {
            run_id: run_id.to_string(),
        }))
        .unwrap()
        .into_inner()
}

/// A step's event as its agent reports it, streamed live and not stored in the run's event log.
fn is_live(e: &pb::RunEvent) -> bool {
    matches!(
        e.kind,
        Some(Kind::Progress(_) | Kind::Log(_) | Kind::Output(_) | Kind::Waiting(_))
    )
}

fn seqs(events: &[pb::RunEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

fn step<'a>(run: &'a pb::Run, name: &str) -> &'a pb::RunStep {
    run.steps
        .iter()
        .find(|s| s.step == name)
        .unwrap_or_else(|| panic!("no step {name} in {run:?}"))
}

/// The run's environment changes, as (state, waiting_for).
fn environment_changes(events: &[pb::RunEvent]) -> Vec<(pb::EnvironmentState, String)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::EnvironmentState(c)) => Some((c.state(), c.waiting_for.clone())),
            _ => None,
        })
        .collect()
}

/// A client that follows a run and de-duplicates by seq loses nothing: the stored events have
/// increasing seqs, the steps' live progress and log lines have none (0), and watching again from
/// the start or from a cursor gives the stored events again, with the same seqs.
#[test]
fn live_step_events_never_reuse_a_stored_seq() {
    let s = one_master_with("", ", FAKE_SETUP_SECONDS = \"2\"");
    let mut client = s.client();
    let run_id = s.start();
    let followed = watch(&s, &mut client, &run_id, 0, true, None);
    let (live, stored): (Vec<pb::RunEvent>, Vec<pb::RunEvent>) =
        followed.into_iter().partition(is_live);
    assert!(
        live.iter()
            .any(|e| matches!(e.kind, Some(Kind::Progress(_)))),
        "the install's progress came live: {live:?}"
    );
    for e in &live {
        assert_eq!(e.seq, 0, "a live event has no seq: {e:?}");
    }
    let stored_seqs = seqs(&stored);
    assert!(
        stored_seqs.first() == Some(&1) && stored_seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "stored events are numbered 1, 2, ...: {stored_seqs:?}"
    );
    assert!(
        matches!(&stored.last().unwrap().kind, Some(Kind::RunState(r)) if r.state() == pb::RunState::Succeeded),
        "{:?}",
        stored.last()
    );
    let run = get(&s, &mut client, &run_id);
    assert_eq!(run.last_event_seq, *stored_seqs.last().unwrap());

    let again = watch(&s, &mut client, &run_id, 0, false, None);
    assert_eq!(
        seqs(&again),
        stored_seqs,
        "replayed: the stored events only"
    );
    assert_eq!(again, stored);
    let middle = stored_seqs[stored_seqs.len() / 2];
    let rest = watch(&s, &mut client, &run_id, middle, false, None);
    assert_eq!(
        seqs(&rest),
        stored_seqs
            .iter()
            .copied()
            .filter(|&q| q > middle)
            .collect::<Vec<_>>()
    );
}

/// A manual gate: the environment's events and `GetRun` carry its state (never unspecified) and say
/// it waits for approval; approved, it succeeds and waits for nothing.
#[test]
fn an_environment_says_its_state_and_what_it_waits_for() {
    let s = one_master_with("gate = \"manual\"", "");
    let mut client = s.client();
    let run_id = s.start();
    let waiting = eventually(Duration::from_secs(60), "dev to wait at its gate", || {
        let run = get(&s, &mut client, &run_id);
        run.environments
            .first()
            .filter(|e| e.state() == pb::EnvironmentState::WaitingGate)
            .cloned()
    });
    assert_eq!(
        waiting,
        pb::RunEnvironment {
            name: "dev".into(),
            state: pb::EnvironmentState::WaitingGate as i32,
            gate: "manual".into(),
            waiting_for: "approval".into(),
            member_failures: 0,
        }
    );
    let changes = environment_changes(&watch(&s, &mut client, &run_id, 0, false, None));
    assert_eq!(
        changes.first(),
        Some(&(pb::EnvironmentState::Running, String::new())),
        "{changes:?}"
    );
    assert_eq!(
        changes.last(),
        Some(&(pb::EnvironmentState::WaitingGate, "approval".to_string())),
        "{changes:?}"
    );

    let approve = control(&run_id, pb::ControlAction::Approve, "");
    s.runtime.block_on(client.control(approve)).unwrap();
    let last_seq = get(&s, &mut client, &run_id).last_event_seq;
    let rest = watch(&s, &mut client, &run_id, last_seq, true, None);
    let run = get(&s, &mut client, &run_id);
    assert_eq!(run.state(), pb::RunState::Succeeded, "{run:?}");
    let changes = environment_changes(&watch(&s, &mut client, &run_id, 0, false, None));
    assert_eq!(
        changes.last(),
        Some(&(pb::EnvironmentState::Succeeded, String::new())),
        "{changes:?} (after the approval: {rest:?})"
    );
    assert!(
        !changes
            .iter()
            .any(|(state, _)| *state == pb::EnvironmentState::Unspecified),
        "{changes:?}"
    );
    let dev = &run.environments[0];
    assert_eq!(dev.state(), pb::EnvironmentState::Succeeded);
    assert_eq!(dev.waiting_for, "");
}

/// A run started through the API shows its selection (with the limits it applies), its environments,
/// plan hash, target, installer and the installer's SHA-256, and each step's latest attempt, percent
/// and outputs; once another run is the active one, it shows exactly the same, and its events name
/// their node (a watch of one node finds them).
#[test]
fn a_past_run_shows_what_it_showed_while_active() {
    let s = one_master_with("", "");
    let mut client = s.client();
    let selection = pb::RunSelection {
        workflow: pb::Workflow::Upgrade as i32,
        all: true,
        max_parallel: Some(3),
        max_failures: Some(2),
        ..Default::default()
    };
    let plan = s
        .runtime
        .block_on(client.plan(pb::PlanRequest {
            selection: Some(selection.clone()),
        }))
        .unwrap()
        .into_inner();
    let start = |client: &mut OperatorServiceClient<Channel>, plan_hash: Option<String>| {
        s.runtime
            .block_on(client.start_run(pb::StartRunRequest {
                selection: Some(selection.clone()),
                plan_hash,
            }))
            .unwrap()
            .into_inner()
            .run_id
    };
    let run_id = start(&mut client, Some(plan.plan_hash.clone()));
    let events = watch(&s, &mut client, &run_id, 0, true, None);
    let active = get(&s, &mut client, &run_id);
    assert_eq!(active.state(), pb::RunState::Succeeded, "{active:?}");
    assert_eq!(active.plan_hash, plan.plan_hash);
    assert_eq!(active.target_version, "3.0.7");
    assert_eq!(active.installer, plan.installer);
    let installer = std::fs::read(&plan.installer).unwrap();
    let sha256: String = Sha256::digest(&installer)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(active.installer_sha256, sha256);
    assert_eq!(active.selection.as_ref(), Some(&selection));
    assert_eq!(
        active.environments,
        [pb::RunEnvironment {
            name: "dev".into(),
            state: pb::EnvironmentState::Succeeded as i32,
            gate: "auto".into(),
            waiting_for: String::new(),
            member_failures: 0,
        }]
    );

    // Each step's attempt is the one its dispatch announced.
    let dispatched: HashMap<String, String> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::StepState(s)) if !s.attempt_id.is_empty() => {
                Some((e.step.clone(), s.attempt_id.clone()))
            }
            _ => None,
        })
        .collect();
    for name in [
        "preflight",
        "backup-secret",
        "upgrade-master",
        "verify-master",
    ] {
        let st = step(&active, name);
        assert_eq!(st.state(), pb::StepState::Succeeded, "{st:?}");
        assert_eq!(Some(&st.attempt_id), dispatched.get(name), "{st:?}");
        assert_eq!(st.percent, 100, "{st:?}");
    }
    let verify = step(&active, "verify-master");
    assert_eq!(
        verify.outputs.get("version").map(String::as_str),
        Some("3.0.7")
    );
    assert_eq!(
        verify.outputs.get("service").map(String::as_str),
        Some("running")
    );

    let summaries = |client: &mut OperatorServiceClient<Channel>| {
        s.runtime
            .block_on(client.list_runs(pb::ListRunsRequest { limit: 0 }))
            .unwrap()
            .into_inner()
            .runs
    };
    let listed = summaries(&mut client);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].environments, ["dev"]);

    // Another run makes this one a past run: nothing it shows changes.
    let second = start(&mut client, None);
    watch(&s, &mut client, &second, 0, true, None);
    assert_eq!(
        get(&s, &mut client, &second).state(),
        pb::RunState::Succeeded
    );
    assert_eq!(get(&s, &mut client, &run_id), active);
    let listed = summaries(&mut client);
    assert_eq!(listed.len(), 2);
    assert!(
        listed.iter().all(|r| r.environments == ["dev"]),
        "{listed:?}"
    );

    let of_m1 = watch(&s, &mut client, &run_id, 0, false, Some("m1"));
    let steps: Vec<&str> = of_m1.iter().map(|e| e.step.as_str()).collect();
    assert!(steps.contains(&"upgrade-master"), "{of_m1:?}");
    assert!(
        of_m1.iter().all(|e| e.node.as_deref() == Some("m1")),
        "{of_m1:?}"
    );
}

/// A failed step shows its attempt and the last percent it reported; retried, the step shows its new
/// attempt.
#[test]
fn a_step_shows_its_latest_attempt_and_percent() {
    let s = one_master_with("", ", FAKE_SETUP_FAIL_TIMES = \"1\"");
    let mut client = s.client();
    let run_id = s.start();
    let failed = eventually(Duration::from_secs(60), "the install to fail", || {
        let run = get(&s, &mut client, &run_id);
        let st = step(&run, "upgrade-master").clone();
        (st.state() == pb::StepState::Failed).then_some(st)
    });
    assert_eq!(failed.attempts, 1);
    assert!(!failed.attempt_id.is_empty(), "{failed:?}");
    // The simulated setup says 10 % before it fails.
    assert_eq!(failed.percent, 10, "{failed:?}");

    let mut retry = control(&run_id, pb::ControlAction::Retry, "");
    retry.node = Some("m1".into());
    retry.step = Some("upgrade-master".into());
    s.runtime.block_on(client.control(retry)).unwrap();
    let run = eventually(Duration::from_secs(60), "the run to succeed", || {
        let run = get(&s, &mut client, &run_id);
        (run.state() == pb::RunState::Succeeded).then_some(run)
    });
    let again = step(&run, "upgrade-master");
    assert_eq!(again.attempts, 2);
    assert!(!again.attempt_id.is_empty());
    assert_ne!(again.attempt_id, failed.attempt_id);
    assert_eq!(again.percent, 100);
}
