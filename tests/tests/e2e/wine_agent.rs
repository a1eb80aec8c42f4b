//! The Windows tier, second part: the agent built for Windows (`tests/wine/build`) runs under Wine and
//! attaches to the real Linux coordinator over mutual TLS on 127.0.0.1, and `fleetctl` drives an
//! upgrade through it. Its actions are overridden (`[actions.*]` in agent.toml) with esso-fixture.exe
//! (tests/wine/fixture.c), a Windows program speaking the agent's line protocol, which appends its
//! raw command line (GetCommandLineW), its process id and "start"/"end" to a log of its own.
//!
//! Wine is not Windows: ENTSSO and MSDTC do not exist in a Wine prefix, so the facts come from the
//! fixture too (the built-in facts read the registry; tests/tests/e2e/wine.rs covers that part). Under
//! Wine, each Windows process is a Linux process, and `wine fleet-agent.exe` becomes the
//! fleet-agent.exe process itself: SIGKILL to it is TerminateProcess without the courtesy of one, and
//! leaves the processes it started (the fixture) running, as a crashed agent on Windows would.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleet_tests::wine::{
    FixtureEvent, NODE, WineFleet, fixture_actions, lay_out_windows_agent, read,
    start_windows_agent, step_of, windows_agent_toml, windows_path,
};
use fleet_tests::{PATIENCE, Process, eventually};

/// A fleet whose one node is a Windows agent under Wine. Dropped in field order: the agent, then the
/// rest (its Wine prefix, the coordinator, the files).
struct AgentFleet {
    agent: Process,
    wine: WineFleet,
    /// `tests/wine/build`'s folder (esso-fixture.exe runs from there).
    bin: PathBuf,
}

impl Deref for AgentFleet {
    type Target = WineFleet;
    fn deref(&self) -> &WineFleet {
        &self.wine
    }
}

/// Windows' FILETIME of a moment: 100 ns ticks since 1601-01-01.
fn filetime(at: SystemTime) -> u64 {
    const UNIX_EPOCH_TICKS: u64 = 116_444_736_000_000_000;
    let since = at.duration_since(UNIX_EPOCH).unwrap();
    UNIX_EPOCH_TICKS + u64::try_from(since.as_nanos() / 100).unwrap()
}

impl AgentFleet {
    /// The fleet, the coordinator, a Wine prefix and the Windows agent in it (in `agents/w1`),
    /// attached; the simulated ESSO at 3.0.6; the install takes `setup_ms`.
    fn start(setup_ms: u32) -> Option<Self> {
        let (wine, bin) = WineFleet::with_fixture(None)?;
        let install = r#"args = ["install", "{target_version}"]"#;
        let config = windows_agent_toml(NODE, &wine.coordinator.url())
            + &fixture_actions(&wine.fleet, &bin, setup_ms, install);
        let dir = lay_out_windows_agent(&wine.fleet, &bin, NODE, &config).unwrap();
        let agent = start_windows_agent(&wine.server, &dir, NODE).unwrap();
        let w = Self { agent, wine, bin };
        w.wait_attached();
        Some(w)
    }
}

/// Start and end lines of `mode` never overlap: each start is followed by its own process's end
/// before any other start. Returns the pids, in order.
fn one_at_a_time(log: &[FixtureEvent], mode: &str) -> Vec<u32> {
    let mut running: Option<u32> = None;
    let mut pids = Vec::new();
    for e in log.iter().filter(|e| e.mode == mode) {
        match (e.start, running) {
            (true, None) => {
                running = Some(e.pid);
                pids.push(e.pid);
            }
            (true, Some(other)) => {
                panic!("{mode} {} started while {other} still ran: {log:#?}", e.pid)
            }
            (false, Some(pid)) if pid == e.pid => running = None,
            (false, _) => panic!("{mode} {} ended, but it was not running: {log:#?}", e.pid),
        }
    }
    assert_eq!(running, None, "{mode} still running: {log:#?}");
    pids
}

#[test]
fn the_windows_agent_under_wine_upgrades_its_master_through_the_linux_coordinator() {
    let Some(w) = AgentFleet::start(0) else {
        return;
    };
    let started = std::time::Instant::now();
    let (code, run) = w.json(&["upgrade", "--all"]);
    assert_eq!(code, Some(0), "{run}\n{}", w.logs());
    assert_eq!(run["state"], "succeeded", "{run}");
    for step in ["backup-secret", "upgrade-master", "verify-master"] {
        assert_eq!(step_of(&run, step)["state"], "succeeded", "{step}: {run}");
    }
    println!("the upgrade under Wine took {:?}", started.elapsed());

    // What the fixture logged: each tool once, in order, each ended by the process that started it.
    let log = w.fixture_log();
    let sequence: Vec<(&str, bool)> = log.iter().map(|e| (e.mode.as_str(), e.start)).collect();
    assert_eq!(
        sequence,
        [
            ("backup", true),
            ("backup", false),
            ("install", true),
            ("install", false),
            ("verify", true),
            ("verify", false),
        ],
        "{log:#?}"
    );
    for pair in log.chunks(2) {
        assert_eq!(pair[0].pid, pair[1].pid, "{pair:#?}");
        assert!(pair[0].ticks <= pair[1].ticks, "{pair:#?}");
    }
    let pids: Vec<u32> = log.iter().step_by(2).map(|e| e.pid).collect();
    assert!(
        pids[0] != pids[1] && pids[1] != pids[2] && pids[0] != pids[2],
        "a process per action: {pids:?}"
    );
    // The command lines as Windows passed them: the configured program, then the expanded arguments.
    let fixture = windows_path(&w.bin.join("esso-fixture.exe"));
    let backups = windows_path(&w.fleet.path("backups"));
    let backup_file = format!(
        "{backups}\\ssofleet-secret-dev-{NODE}-{}-",
        run["id"].as_str().unwrap()
    );
    let (backup, install, verify) = (&log[0].cmdline, &log[2].cmdline, &log[4].cmdline);
    for cmdline in [backup, install, verify] {
        assert!(
            cmdline
                .to_ascii_lowercase()
                .contains(&fixture.to_ascii_lowercase()),
            "{cmdline} runs {fixture}"
        );
    }
    assert!(
        backup.contains(" backup -backupSecret ") && backup.contains(&backup_file),
        "{backup} names {backup_file}…"
    );
    assert!(backup.trim_end().ends_with(".bak"), "{backup}");
    assert!(install.trim_end().ends_with(" install 3.0.7"), "{install}");
    assert!(verify.trim_end().ends_with(" verify"), "{verify}");

    // The backup the fixture wrote (under Wine's Z: drive) is the artifact recorded, size and hash.
    let artifact = &step_of(&run, "backup-secret")["artifacts"][0];
    let path = artifact["path"].as_str().unwrap();
    assert!(path.starts_with(&backup_file), "{artifact}");
    let linux = path.trim_start_matches("Z:").replace('\\', "/");
    assert_eq!(
        artifact["size"].as_u64().unwrap(),
        std::fs::metadata(&linux).unwrap().len(),
        "{artifact}"
    );
    assert_eq!(artifact["sha256"].as_str().unwrap().len(), 64, "{artifact}");
    // The simulated ESSO is at the target, and what the install printed is kept.
    // (Written in text mode by a Windows program: a CRLF line end, on Windows as under Wine.)
    assert_eq!(
        read(&w.fleet.path(&format!("agents/{NODE}/esso/version"))),
        "3.0.7\r\n"
    );
    let o = w.ctl(&[
        "logs",
        run["id"].as_str().unwrap(),
        "--node",
        NODE,
        "--step",
        "upgrade-master",
    ]);
    let printed = String::from_utf8_lossy(&o.stdout);
    assert!(
        printed.contains("upgrade-master: [10%] starting setup of ESSO 3.0.7")
            && printed.contains("upgrade-master: [100%] installed"),
        "{o:?}"
    );
}

#[test]
fn the_windows_agent_killed_mid_install_and_retried_at_once_never_runs_two_installers() {
    const SETUP_MS: u32 = 8000;
    let Some(mut w) = AgentFleet::start(SETUP_MS) else {
        return;
    };
    let began = std::time::Instant::now();
    let run_id = w.upgrade_detached();
    let first = eventually(PATIENCE, "the first install started", || {
        w.fixture_log()
            .into_iter()
            .find(|e| e.mode == "install" && e.start)
    });

    // Kill fleet-agent.exe hard while the install runs; the fixture runs on. Under Wine the process
    // `wine` was started as is fleet-agent.exe itself (Wine's loader becomes the program).
    let pid = w.agent.pid().unwrap();
    // (Its /proc comm is its main thread's name, which Wine takes from SetThreadDescription: Rust's
    // "main"; its command line is the Windows one.)
    let cmdline = read(Path::new(&format!("/proc/{pid}/cmdline")));
    assert!(
        cmdline
            .split('\0')
            .next()
            .and_then(|program| program.rsplit('\\').next())
            .is_some_and(|name| name.eq_ignore_ascii_case("fleet-agent.exe")),
        "process {pid} is {cmdline:?}"
    );
    let killed_at = filetime(SystemTime::now());
    w.agent.kill();
    assert!(
        !w.fixture_log()
            .iter()
            .any(|e| e.mode == "install" && !e.start),
        "the install ended before the agent was killed: make it longer"
    );

    // The same agent, started again on its state directory, and at once the operator retries.
    w.agent = start_windows_agent(&w.server, &w.dir, NODE).unwrap();
    let at_once = w.ctl(&["retry", &run_id, "--node", NODE, "--step", "upgrade-master"]);
    println!(
        "the retry right after the restart: {:?} {}",
        at_once.status.code(),
        String::from_utf8_lossy(&at_once.stderr).trim()
    );
    // The retry is accepted only once the interrupted attempt is failed; until then it is refused
    // (the step is running). Retried at once and again until accepted.
    let mut refusals = u32::from(!at_once.status.success());
    if !at_once.status.success() {
        eventually(
            Duration::from_secs(u64::from(SETUP_MS / 1000) + 20),
            "the retry accepted",
            || {
                let o = w.ctl(&["retry", &run_id, "--node", NODE, "--step", "upgrade-master"]);
                if o.status.success() {
                    return Some(());
                }
                refusals += 1;
                let stderr = String::from_utf8_lossy(&o.stderr);
                assert!(
                    stderr.contains("no failed or pending step") || stderr.contains("not failed"),
                    "the retry refused for another reason: {o:?}\n{}",
                    w.logs()
                );
                None
            },
        );
    }
    let log_at_retry = w.fixture_log();
    println!(
        "retry accepted after {refusals} refusal(s), {:?} after the run started",
        began.elapsed()
    );
    // The attempt was reported interrupted (so retryable) only after the orphaned install ended.
    let first_end = log_at_retry
        .iter()
        .find(|e| e.mode == "install" && !e.start && e.pid == first.pid)
        .unwrap_or_else(|| {
            panic!(
                "the retry was accepted while the first install still ran: {log_at_retry:#?}\n{}",
                w.logs()
            )
        })
        .clone();
    // (Wine's GetSystemTimePreciseAsFileTime is the Linux clock, so the two times compare.)
    assert!(
        first_end.ticks > killed_at,
        "the first install ran on after the agent was killed: {first_end:?}"
    );

    // The master's agent detached (its stream ended with the killed process): the coordinator halted
    // the environment (coordinator/core/src/engine: `master_lost`). The master is back, so the retry
    // lifted that too: no resume is needed (issue 18, item 8).
    let o = w.ctl(&["resume", &run_id]);
    assert!(!o.status.success(), "nothing left to resume: {o:?}");
    let run = w.wait_final(&run_id, Duration::from_secs(40));
    assert_eq!(run["state"], "succeeded", "{run}\n{}", w.logs());
    let upgrade = step_of(&run, "upgrade-master");
    assert_eq!(upgrade["attempts"], 2, "{run}");

    // One installer in all, from the fixture's own log: the orphan had installed the target, and the
    // retry, asking the node first, did not install again (issue 18, item 8).
    let log = w.fixture_log();
    let installs = one_at_a_time(&log, "install");
    assert_eq!(installs, [first.pid], "{log:#?}");
    assert!(
        upgrade["message"].as_str().is_some_and(
            |m| m.starts_with("not installed again: the node already reports ESSO 3.0.7")
        ),
        "{upgrade}"
    );
    assert_eq!(one_at_a_time(&log, "verify").len(), 1, "{log:#?}");
    assert_eq!(one_at_a_time(&log, "backup").len(), 1, "{log:#?}");
    // The first attempt's story, as the agent reported it once its orphan (the installer, under the
    // step host that recorded its exit code) had ended: what the installer printed after the kill,
    // followed in its output file, and its exit code.
    let o = w.ctl(&["logs", &run_id, "--node", NODE, "--step", "upgrade-master"]);
    let printed = String::from_utf8_lossy(&o.stdout);
    for expected in [
        "interrupted: the agent stopped while this step ran (its process ",
        "ran on, and has ended: it exited with code 0",
        "its output follows from ",
        "[100%] installed",
    ] {
        assert!(printed.contains(expected), "{expected:?} in {o:?}");
    }
    let agent_log = read(&w.dir.join("agent.2.log"));
    assert!(
        agent_log.contains("still runs"),
        "the restarted agent found the install still running:\n{agent_log}"
    );
    println!(
        "the kill-and-retry test under Wine took {:?}",
        began.elapsed()
    );
}
