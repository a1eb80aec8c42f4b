//! Maintenance windows (invariant 7): no step starts while its environment's window is closed, steps
//! in flight finish, the run says what it waits for, and `plan` says when each environment can start.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleet_tests::{eventually, tool_log};

use crate::durability::{restart_coordinator, start_detached, wait_final};
use crate::upgrade::{FLEET, NODES, check_order, setup};

fn clock(second_of_day: u64) -> String {
    let s = second_of_day % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// dev's window, daily: open now, closed from `close_in` to `open_in` seconds from now.
fn windowed(inventory: &str, close_in: u64, open_in: u64) -> (String, Duration, Duration) {
    // Whole seconds, as the window is written.
    let now = Duration::from_secs(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    );
    // From now+open_in to the next day's now+close_in (a window over midnight, as the days go).
    let window = format!(
        "window = {{ days = [\"mon\",\"tue\",\"wed\",\"thu\",\"fri\",\"sat\",\"sun\"], start = \"{}\", end = \"{}\", tz = \"UTC\" }}\n",
        clock(now.as_secs() + open_in),
        clock(now.as_secs() + close_in)
    );
    let inventory = inventory
        .replace("max_parallel = 2", "max_parallel = 1")
        .replace(
            "members = [\"a1\", \"a2\", \"a3\"]\n",
            &format!("members = [\"a1\", \"a2\", \"a3\"]\n{window}"),
        );
    assert!(inventory.contains("window ="), "{inventory}");
    (
        inventory,
        now + Duration::from_secs(close_in),
        now + Duration::from_secs(open_in),
    )
}

#[test]
fn a_window_that_closes_mid_run_holds_new_steps_until_it_opens_again() {
    let slow = ", FAKE_SETUP_SECONDS = \"1.5\"";
    let mut s = setup(
        FLEET,
        &[],
        &[("m1", slow), ("a1", slow), ("a2", slow), ("a3", slow)],
    );
    // The window is set now that the fleet is up: the coordinator restarts on it.
    let current = std::fs::read_to_string(s.fleet.path("fleet.toml")).unwrap();
    let (inventory, close, open) = windowed(&current, 5, 12);
    s.fleet.write("fleet.toml", &inventory).unwrap();
    restart_coordinator(&mut s);
    for (node, _) in NODES {
        s.coordinator.wait_attached(&s.fleet, node, true);
    }
    // `plan` says the window is open now, and until when.
    let (_, plan) = s.json(&["plan", "--all"]);
    let dev = &plan["environments"][0];
    assert!(
        dev["window"]
            .as_str()
            .unwrap()
            .contains("; open now, until "),
        "{plan}"
    );
    assert!(dev["earliest_start"].is_string(), "{plan}");
    assert!(plan["environments"][1]["window"].is_null(), "prod has none");

    let run_id = start_detached(&s);
    // While closed: the run waits and says so; `plan` says when dev opens.
    let waiting = eventually(
        Duration::from_secs(30),
        "the run waiting for its window",
        || {
            let (_, run) = s.json(&["run", "show", &run_id]);
            run["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("waiting for the maintenance window of dev"))
                .then_some(run)
        },
    );
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    assert!(
        since_epoch < open,
        "the wait was seen after the window opened again: {waiting}"
    );
    let (_, plan) = s.json(&["plan", "--all"]);
    assert!(
        plan["environments"][0]["window"]
            .as_str()
            .unwrap()
            .contains("; opens "),
        "{plan}"
    );
    let run = wait_final(&s, &run_id, Duration::from_secs(60));
    assert_eq!(run["state"], "succeeded", "{run}");

    let log = tool_log(&s.fleet);
    check_order(&log, 1);
    let (close, open) = (close.as_nanos(), open.as_nanos());
    let dev = ["m1", "a1", "a2", "a3"];
    // Invariant 7 is the coordinator's: no dev step dispatched while the window was closed.
    let dispatched_ns = |node: &str, tool: &str| -> Vec<u128> {
        let step_word = match tool {
            "setup" => "upgrade",
            "verify" => "verify",
            _ => "",
        };
        run["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|st| st["node"] == node && st["step"].as_str().unwrap().contains(step_word))
            .filter_map(|st| st["started_at_ms"].as_u64())
            .map(|ms| u128::from(ms) * 1_000_000)
            .collect()
    };
    for node in dev {
        for at in dispatched_ns(node, "") {
            assert!(
                at < close || at >= open,
                "a step of {node} was dispatched while the window was closed: {run}"
            );
        }
    }
    // A tool that starts in the closed window belongs to a step dispatched before it closed (an
    // agent starts a dispatched step's program a few milliseconds later, more on a loaded machine).
    for e in log
        .iter()
        .filter(|e| e.start && dev.contains(&e.node.as_str()))
        .filter(|e| e.at_ns >= close && e.at_ns < open)
    {
        assert!(
            dispatched_ns(&e.node, &e.tool).iter().any(|&at| at < close),
            "{} {} started while the window was closed, its step dispatched after it closed: {run}",
            e.node,
            e.tool
        );
    }
    // It closed mid-run (dev had begun), and dev went on once it opened again.
    assert!(log.first().is_some_and(|e| e.at_ns < close), "{log:?}");
    assert!(
        log.iter()
            .any(|e| e.start && dev.contains(&e.node.as_str()) && e.at_ns >= open),
        "nothing of dev was held for the window: {log:?}"
    );
    let finished_while_closed = log
        .iter()
        .filter(|e| !e.start && e.at_ns >= close && e.at_ns < open)
        .count();
    println!("{finished_while_closed} step(s) in flight finished after the window closed");
}
