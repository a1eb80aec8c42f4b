use std::collections::BTreeSet;
use std::path::Path;

use super::*;
use crate::engine::{Event, Outcome, StepState};
use crate::inventory::Inventory;
use crate::plan::Workflow;
use crate::plan::{Reports, Selection, plan};

const FLEET: &str = "[upgrade]\ntarget_version = \"3.0.7\"\ninstaller = 's'\n[[environment]]\nname = \"dev\"\nmaster = \"m\"\nmembers = [\"a\"]\nbackup_dir = 'b'\n";

fn new_plan_and_run() -> (Plan, Run) {
    let inv = Inventory::parse(Path::new("f.toml"), FLEET).unwrap();
    let sel = Selection {
        workflow: Workflow::Upgrade,
        environments: Vec::new(),
        master_only: false,
        max_parallel: None,
        max_failures: None,
    };
    let p = plan(&inv, &sel, &Reports::new()).unwrap();
    let attached: BTreeSet<_> = inv.nodes().map(|(_, n, _)| n.clone()).collect();
    let run = Run::new(&p, 60_000, attached);
    (p, run)
}

fn new_meta(id: &str) -> NewRun<'_> {
    NewRun {
        id,
        workflow: "upgrade",
        started_by: "alice",
        started_at: 1_000,
        inventory_toml: FLEET,
        selection_json: "{}",
        plan_hash: "abc",
        target_version: "3.0.7",
        installer: "s",
        step_timeout_ms: 60_000,
    }
}

#[test]
fn migrates_a_new_database_and_reopens_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as u32);
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as u32);
}

#[test]
fn refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    let conn = Connection::open(dir.path().join(FILE)).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let e = Store::open(dir.path()).err().unwrap();
    assert!(e.to_string().contains("schema version 99 is newer"), "{e}");
}

#[test]
fn a_run_its_dispatches_and_changes_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let (p, mut run) = new_plan_and_run();
    store.create_run(&new_meta("r1"), &p, &run, None).unwrap();
    let commands = run.apply(Event::Start, 2_000).unwrap();
    let ids = store.commit("r1", &run, &commands, 2_000, None).unwrap();
    assert_eq!(ids.len(), 1, "preflight dispatched");
    let commands = run
        .apply(
            Event::StepFinished {
                step: 0,
                attempt: 1,
                outcome: Outcome::Failed("m not attached".into()),
            },
            3_000,
        )
        .unwrap();
    store.commit("r1", &run, &commands, 3_000, None).unwrap();
    assert_eq!(run.steps()[0].state(), StepState::Failed);
    drop(store);

    let store = Store::open(dir.path()).unwrap();
    let row = store.run("r1").unwrap();
    assert_eq!(
        (row.state.as_str(), row.started_by.as_str()),
        ("halted", "alice")
    );
    assert!(row.reason.contains("m not attached"), "{}", row.reason);
    assert_eq!(store.inventory_snapshot("r1").unwrap(), FLEET);
    let events = store.run_events("r1", 0, 100).unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds[0], "environment");
    assert!(
        kinds.contains(&"dispatched") && kinds.contains(&"run"),
        "{kinds:?}"
    );
    assert!(
        events.windows(2).all(|w| w[1].seq == w[0].seq + 1),
        "the cursor has no gaps"
    );
    // From a cursor.
    let later = store.run_events("r1", events[1].seq, 100).unwrap();
    assert_eq!(later.len(), events.len() - 2);
    assert_eq!(store.runs().unwrap().len(), 1);
    assert!(matches!(store.run("nope"), Err(StoreError::UnknownRun(_))));
}

/// A store in `dir` with run r1 started: the uuid of its first dispatched attempt.
fn store_with_an_attempt(dir: &std::path::Path) -> (Store, String) {
    with_an_attempt(Store::open(dir).unwrap())
}

/// `store` with run r1 started: the uuid of its first dispatched attempt.
fn with_an_attempt(mut store: Store) -> (Store, String) {
    let (p, mut run) = new_plan_and_run();
    store.create_run(&new_meta("r1"), &p, &run, None).unwrap();
    let commands = run.apply(Event::Start, 2_000).unwrap();
    let attempt = store
        .commit("r1", &run, &commands, 2_000, None)
        .unwrap()
        .remove(0);
    (store, attempt)
}

#[test]
fn agent_events_are_stored_once_and_acknowledged_up_to_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, attempt) = store_with_an_attempt(dir.path());
    let p = serde_json::json!({ "percent": 10 });
    assert!(store.agent_event(&attempt, 1, 1, "progress", &p).unwrap());
    assert!(
        !store.agent_event(&attempt, 1, 1, "progress", &p).unwrap(),
        "a redelivery is not stored twice"
    );
    assert!(store.agent_event(&attempt, 3, 1, "progress", &p).unwrap());
    assert_eq!(
        store.contiguous_seq(&attempt).unwrap(),
        1,
        "seq 2 is missing"
    );
    assert!(store.agent_event(&attempt, 2, 1, "progress", &p).unwrap());
    assert_eq!(store.contiguous_seq(&attempt).unwrap(), 3);
}

/// The highest seq stored for `attempt` with none missing below it, from a scan of all its stored
/// events in order (how [`Store::contiguous_seq`] answered before it kept the answer).
fn rescanned(store: &Store, attempt: &str) -> u64 {
    let stored = store
        .query(
            "SELECT seq FROM attempt_events WHERE attempt_id = ?1 ORDER BY seq",
            [attempt],
            |r| r.get::<_, i64>(0),
        )
        .unwrap();
    let mut expected = 1u64;
    for seq in stored {
        if u64::try_from(seq).ok() != Some(expected) {
            break;
        }
        expected += 1;
    }
    expected - 1
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

    /// However an attempt's events arrive (in any order, redelivered, written in groups of any size,
    /// asked about at any point, now and then a seq below 1 or one stored as negative), what
    /// `contiguous_seq` keeps is what a scan of every stored event finds.
    #[test]
    fn the_contiguous_seq_kept_is_a_full_rescans(
        arrivals in proptest::collection::vec(
            (
                proptest::prop_oneof![30 => 1u64..40, 1 => proptest::strategy::Just(0), 1 => proptest::strategy::Just(u64::MAX)],
                proptest::prelude::any::<bool>(),
                proptest::prelude::any::<bool>(),
            ),
            1..80,
        ),
    ) {
        let (mut store, attempt) = with_an_attempt(Store::in_memory().unwrap());
        let p = serde_json::json!({ "line": "x" });
        for (seq, flush, ask) in arrivals {
            store.agent_event(&attempt, seq, 1, "log", &p).unwrap();
            if flush {
                store.flush_events().unwrap();
            }
            if ask {
                let kept = store.contiguous_seq(&attempt).unwrap();
                proptest::prop_assert_eq!(kept, rescanned(&store, &attempt));
            }
        }
        let kept = store.contiguous_seq(&attempt).unwrap();
        proptest::prop_assert_eq!(kept, rescanned(&store, &attempt));
    }
}

#[test]
fn agent_events_are_written_together_at_a_flush_and_by_any_other_write() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, attempt) = store_with_an_attempt(dir.path());
    let on_disk = |seq: i64| {
        let reader = rusqlite::Connection::open(dir.path().join(super::FILE)).unwrap();
        reader
            .query_row(
                "SELECT COUNT(*) FROM attempt_events WHERE seq <= ?1",
                [seq],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
    };
    let p = serde_json::json!({ "percent": 10 });
    for seq in 1..=3 {
        assert!(store.agent_event(&attempt, seq, 1, "progress", &p).unwrap());
    }
    assert!(
        !store.agent_event(&attempt, 2, 1, "progress", &p).unwrap(),
        "a redelivery of an event not yet written is not taken twice"
    );
    assert_eq!(store.pending_events(), 3);
    assert_eq!(on_disk(3), 0, "not written before the flush");
    store.flush_events().unwrap();
    assert_eq!(store.pending_events(), 0);
    assert_eq!(on_disk(3), 3, "one flush writes all three");
    assert!(
        !store.agent_event(&attempt, 3, 1, "progress", &p).unwrap(),
        "a redelivery of a written event is not taken again"
    );
    // Any other write takes the pending events with it.
    assert!(store.agent_event(&attempt, 4, 1, "progress", &p).unwrap());
    store
        .note("r1", 3_000, "the coordinator restarted")
        .unwrap();
    assert_eq!(on_disk(4), 4);
    assert_eq!(store.contiguous_seq(&attempt).unwrap(), 4);
}

#[test]
fn the_audit_trail_names_who_and_what() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    for (run, action) in [("r1", "start"), ("r2", "start"), ("r1", "approve")] {
        store
            .audit(&AuditEntry {
                at: 5,
                operator: "alice".into(),
                action: action.into(),
                run_id: run.into(),
                node: None,
                step: None,
                detail: String::new(),
                request_id: None,
            })
            .unwrap();
    }
    let r1: Vec<String> = store
        .audit_entries(Some("r1"))
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(r1, ["start", "approve"]);
    assert_eq!(store.audit_entries(None).unwrap().len(), 3);
}

#[test]
fn a_request_id_is_stored_once_per_run_with_its_control() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let entry = |run: &str, action: &str, request_id: Option<&str>| AuditEntry {
        at: 5,
        operator: "alice".into(),
        action: action.into(),
        run_id: run.into(),
        node: None,
        step: None,
        detail: String::new(),
        request_id: request_id.map(str::to_string),
    };
    store.audit(&entry("r1", "pause", Some("k1"))).unwrap();
    store.audit(&entry("r1", "resume", None)).unwrap();
    store.audit(&entry("r1", "resume", None)).unwrap();
    // Another run may use the same key: keys are per run.
    store.audit(&entry("r2", "pause", Some("k1"))).unwrap();
    assert!(
        store.audit(&entry("r1", "abort", Some("k1"))).is_err(),
        "a key is applied once per run"
    );
    let found = store.control_by_request("r1", "k1").unwrap().unwrap();
    assert_eq!(found.action, "pause");
    assert_eq!(found.request_id.as_deref(), Some("k1"));
    assert_eq!(store.control_by_request("r1", "k2").unwrap(), None);
    assert_eq!(store.audit_entries(Some("r1")).unwrap().len(), 3);
}

#[test]
fn a_step_log_pages_in_order_from_a_position() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, attempt) = store_with_an_attempt(dir.path());
    for seq in 1..=7 {
        let line = serde_json::json!({ "line": format!("line {seq}") });
        store.agent_event(&attempt, seq, 1, "log", &line).unwrap();
    }
    let mut after = None;
    let mut pages = Vec::new();
    loop {
        let page = store.step_log_page("r1", None, None, after, 3).unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.position);
        pages.push(
            page.iter()
                .map(|r| r.payload["line"].as_str().unwrap().to_string())
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(
        pages,
        [
            vec!["line 1", "line 2", "line 3"],
            vec!["line 4", "line 5", "line 6"],
            vec!["line 7"],
        ]
    );
    assert_eq!(
        store.step_log("r1", None, None).unwrap().len(),
        7,
        "the whole log at once"
    );
    assert!(
        store
            .step_log_page("r1", Some("m"), Some("upgrade"), None, 10)
            .unwrap()
            .is_empty(),
        "filtered by node and step"
    );
}

#[test]
fn a_stored_run_restores_to_the_same_run_at_every_point() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let (p, mut run) = new_plan_and_run();
    store.create_run(&new_meta("r1"), &p, &run, None).unwrap();
    let mut now = 2_000;
    let mut commands = run.apply(Event::Start, now).unwrap();
    let mut controls = 0;
    // Drive it: the first upgrade fails, the operator retries it, everything else succeeds.
    for round in 0..40 {
        let audit = AuditEntry {
            at: now,
            operator: "alice".into(),
            action: "retry".into(),
            run_id: "r1".into(),
            node: Some("m".into()),
            step: None,
            detail: String::new(),
            request_id: None,
        };
        let control = commands.is_empty() && run.status() == crate::engine::RunStatus::Halted;
        if control {
            let failed = run
                .steps()
                .iter()
                .position(|s| s.state() == StepState::Failed)
                .unwrap();
            commands = run
                .apply(
                    Event::Control(crate::engine::Control::Retry { step: failed }),
                    now,
                )
                .unwrap();
            controls += 1;
        }
        store
            .commit("r1", &run, &commands, now, control.then_some(&audit))
            .unwrap();
        let stored = store.load_run("r1").unwrap();
        let windows = vec![None; run.envs().len()];
        let restored = Run::restore(
            &stored.plan,
            stored.step_timeout_ms,
            windows,
            stored.records,
            stored.durable,
            run.attached().clone(),
        )
        .unwrap();
        assert_eq!(restored, run, "round {round}");
        // Each stored current attempt is the step's current attempt number.
        for a in &stored.attempts {
            assert_eq!(a.number, run.steps()[a.step].attempt());
        }
        if run.status().is_final() {
            break;
        }
        now += 1_000;
        commands = match run
            .steps()
            .iter()
            .position(|s| s.state() == StepState::Running)
        {
            Some(step) => {
                let fail = run.steps()[step].plan().kind == crate::plan::StepKind::UpgradeMaster
                    && run.steps()[step].attempt() == 1;
                let outcome = if fail {
                    Outcome::Failed("exit 1603".into())
                } else {
                    Outcome::Succeeded
                };
                let attempt = run.steps()[step].attempt();
                run.apply(
                    Event::StepFinished {
                        step,
                        attempt,
                        outcome,
                    },
                    now,
                )
                .unwrap()
            }
            None => run.apply(Event::Tick, now).unwrap(),
        };
    }
    assert_eq!(run.status(), crate::engine::RunStatus::Succeeded);
    assert_eq!(controls, 1);
    assert_eq!(store.audit_entries(Some("r1")).unwrap().len(), 1);
    assert!(
        store.unfinished_runs().unwrap().is_empty(),
        "a finished run is not resumed"
    );
}

#[test]
fn an_unfinished_run_is_found_for_resuming() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let (p, mut run) = new_plan_and_run();
    store.create_run(&new_meta("r1"), &p, &run, None).unwrap();
    let commands = run.apply(Event::Start, 2_000).unwrap();
    let ids = store.commit("r1", &run, &commands, 2_000, None).unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.unfinished_runs().unwrap(), ["r1"]);
    let stored = store.load_run("r1").unwrap();
    assert_eq!(stored.attempts.len(), 1);
    assert_eq!(stored.attempts[0].id, ids[0]);
    assert_eq!(stored.attempts[0].result, None);
    assert!(stored.last_seq > 0);
}

#[test]
fn installer_hashes_are_kept_per_role_and_artifacts_keep_their_note() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, attempt) = store_with_an_attempt(dir.path());
    store
        .set_installer_sha256("r1", crate::domain::Role::Member, "bb")
        .unwrap();
    let stored = store.load_run("r1").unwrap();
    assert_eq!(
        (
            stored.installer_sha256.as_deref(),
            stored.master_installer_sha256
        ),
        (Some("bb"), None)
    );
    store
        .set_installer_sha256("r1", crate::domain::Role::Master, "aa")
        .unwrap();
    let stored = store.load_run("r1").unwrap();
    assert_eq!(stored.master_installer_sha256.as_deref(), Some("aa"));
    assert_eq!(stored.installer_sha256.as_deref(), Some("bb"));

    let artifact = NewArtifact {
        kind: "secret-backup".into(),
        path: r"\\backup01\sso\dev\secret.bak".into(),
        size_bytes: 10,
        sha256: "cc".into(),
        note: "reminder: the blue safe".into(),
    };
    assert!(
        store
            .finish_attempt(
                &attempt,
                3_000,
                crate::domain::AttemptOutcome::Succeeded,
                "",
                Some(0),
                &[artifact],
            )
            .unwrap()
    );
    let rows = store.artifacts("r1").unwrap();
    assert_eq!(rows[0].note, "reminder: the blue safe");
}

#[test]
fn a_plan_stored_before_versions_and_install_modes_still_loads() {
    let (p, _) = new_plan_and_run();
    let mut json = serde_json::to_value(&p).unwrap();
    json.as_object_mut().unwrap().remove("master_installer");
    for step in json["steps"].as_array_mut().unwrap() {
        let step = step.as_object_mut().unwrap();
        step.remove("install");
        step.remove("accept_newer");
    }
    let old: Plan = serde_json::from_value(json).unwrap();
    assert_eq!(old.target_version.to_string(), "3.0.7");
    assert_eq!(old.master_installer, None);
    assert!(
        old.steps
            .iter()
            .all(|s| s.install.is_none() && !s.accept_newer)
    );
}

/// Outcomes, environment statuses and control actions are stored by name; a database written by an
/// earlier build (these exact spellings) still loads, and each name reads back as what wrote it.
#[test]
fn rows_written_with_the_stored_spellings_still_load() {
    use crate::domain::AttemptOutcome;
    use crate::engine::EnvStatus;
    use crate::runs::ControlAction;

    let dir = tempfile::tempdir().unwrap();
    let (store, attempt) = store_with_an_attempt(dir.path());
    for (name, outcome) in [
        ("Unspecified", AttemptOutcome::Unreported),
        ("Succeeded", AttemptOutcome::Succeeded),
        ("Failed", AttemptOutcome::Failed),
        ("TimedOut", AttemptOutcome::TimedOut),
        ("Cancelled", AttemptOutcome::Cancelled),
    ] {
        assert_eq!(outcome.as_str(), name);
        store
            .conn
            .execute(
                "UPDATE attempts SET state = 'finished', outcome = ?2, error = 'e' WHERE id = ?1",
                params![attempt, name],
            )
            .unwrap();
        let stored = store.load_run("r1").unwrap();
        assert_eq!(stored.attempts[0].result, Some((outcome, "e".to_string())));
    }
    store
        .conn
        .execute(
            "UPDATE attempts SET outcome = 'Exploded' WHERE id = ?1",
            [&attempt],
        )
        .unwrap();
    assert!(
        store.load_run("r1").is_err(),
        "an unknown outcome is corrupt, not a success"
    );

    let events = store.run_events("r1", 0, 100).unwrap();
    let environment = events.iter().find(|e| e.kind == "environment").unwrap();
    assert_eq!(environment.payload["status"], "Running");
    for (name, status) in [
        ("Pending", EnvStatus::Pending),
        ("Running", EnvStatus::Running),
        ("WaitingGate", EnvStatus::WaitingGate),
        ("Halted", EnvStatus::Halted),
        ("Succeeded", EnvStatus::Succeeded),
    ] {
        assert_eq!(status.as_str(), name);
        assert_eq!(EnvStatus::parse(name), Some(status));
    }
    assert_eq!(EnvStatus::parse("waiting-gate"), None);

    for (name, action) in [
        ("pause", ControlAction::Pause),
        ("resume", ControlAction::Resume),
        ("abort", ControlAction::Abort),
        ("approve", ControlAction::Approve),
        ("retry", ControlAction::Retry),
        ("skip", ControlAction::Skip),
    ] {
        assert_eq!(action.as_str(), name);
    }
}
