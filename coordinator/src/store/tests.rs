use std::collections::BTreeSet;
use std::path::Path;

use super::*;
use crate::engine::{Event, Outcome, StepState};
use crate::inventory::Inventory;
use crate::plan::{Selection, Versions, plan};

const FLEET: &str = "[upgrade]\ntarget_version = \"3.0.7\"\ninstaller = 's'\n[[environment]]\nname = \"dev\"\nmaster = \"m\"\nmembers = [\"a\"]\nbackup_dir = 'b'\n";

fn new_run() -> Run {
    let inv = Inventory::parse(Path::new("f.toml"), FLEET).unwrap();
    let sel = Selection {
        environments: Vec::new(),
        master_only: false,
        max_parallel: None,
        max_failures: None,
    };
    let p = plan(&inv, &sel, &Versions::new()).unwrap();
    let attached: BTreeSet<_> = inv.nodes().map(|(_, n, _)| n.clone()).collect();
    Run::new(&p, 60_000, attached)
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
    let mut run = new_run();
    store.create_run(&new_meta("r1"), &run).unwrap();
    let commands = run.apply(Event::Start, 2_000).unwrap();
    let ids = store.commit("r1", &run, &commands, 2_000).unwrap();
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
    store.commit("r1", &run, &commands, 3_000).unwrap();
    assert_eq!(run.steps[0].state, StepState::Failed);
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

#[test]
fn agent_events_are_stored_once_and_acknowledged_up_to_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let mut run = new_run();
    store.create_run(&new_meta("r1"), &run).unwrap();
    let commands = run.apply(Event::Start, 2_000).unwrap();
    let attempt = store
        .commit("r1", &run, &commands, 2_000)
        .unwrap()
        .remove(0);
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
