//! The Windows tier, the built-in actions: the agent built for Windows (`tests/wine/build`) runs under
//! Wine against the real Linux coordinator and upgrades its master with its OWN Windows code: the facts
//! and the verification read the registry and the service controller through Windows' APIs (a Wine
//! prefix prepared with Wine's own `reg add` and `sc create`), the backup runs powershell.exe with the
//! agent's shipped script and the password on its standard input, the verification runs
//! `ssomanage -displaydb` and `wevtutil qe`, the reboot `shutdown /r`. Those tools are the small Windows
//! programs of tests/wine/tools.c, each logging its raw command line (GetCommandLineW).
//!
//! Only the install is configured (`[actions.install_sso]`): Microsoft supports no silent upgrade of
//! BizTalk/ESSO, so the built-in install of an upgrade is attended (`fleetctl approve`, no Windows code
//! of the agent's at all). A configured install keeps every other built-in (facts, backup, verify,
//! the reboot), and lets the install ask for a reboot. The "installer" is tools.c's `setup.exe`: it
//! stops ENTSSO through the service controller, writes the new version in the registry and starts
//! ENTSSO again (or leaves it for the reboot, exit 3010).
//!
//! Wine is not Windows: no ENTSSO, no MSDTC, no PowerShell. ENTSSO and MSDTC are tools.c's
//! `entsso-standin.exe`, a real Windows service (StartServiceCtrlDispatcher) with a short start-pending
//! phase; ESSO's event 10534 is recorded by it when it reaches RUNNING, in a file wevtutil's stand-in
//! reads (Wine's event log does not keep events). A "reboot" is `wineserver -k` and a new start of the
//! prefix: its services.exe starts again, which is the agent's boot id on Windows (`host::boot_id`).
//! Under Wine, the prefix's system processes (services.exe and the services) also end when the last
//! program in it ends; a "session" program (`cmd.exe` waiting on its standard input) keeps the prefix
//! up while the agent alone restarts, as a logged-on server stays up on Windows.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_tests::wine::{
    NODE, WineFleet, lay_out_windows_agent_in, read, start_windows_agent_with, step_of,
    windows_agent_toml, windows_bin_or_skip, windows_path,
};
use fleet_tests::{Fleet, PATIENCE, Process, eventually};

const PASSWORD: &str = "correct horse battery";
const ENTSSO_KEY: &str = r"HKLM\SOFTWARE\Microsoft\ENTSSO";
const BIZTALK_KEY: &str = r"HKLM\SOFTWARE\Microsoft\BizTalk Server\3.0";

/// The programs tools.c is built as.
const TOOLS: [&str; 6] = [
    "powershell.exe",
    "ssomanage.exe",
    "wevtutil.exe",
    "shutdown.exe",
    "setup.exe",
    "entsso-standin.exe",
];

/// One line of the stand-ins' log.
#[derive(Debug, Clone)]
struct Call {
    tool: String,
    pid: u32,
    kind: String,
    text: String,
}

/// Dropped in field order: the agent, then the rest (the session, the prefix, the coordinator, the
/// files).
struct BuiltinsFleet {
    agent: Process,
    /// The fleet, the coordinator and the prefix; the agent's folder is `Program Files/ssofleet agent`.
    wine: WineFleet,
    /// Where powershell.exe, wevtutil.exe and shutdown.exe are: `Windows Tools`.
    tools: PathBuf,
    /// ESSO's folder: `Common Files/Enterprise Single Sign-On` (ssomanage.exe, the interop DLL).
    esso: PathBuf,
    installer: PathBuf,
}

impl Deref for BuiltinsFleet {
    type Target = WineFleet;
    fn deref(&self) -> &WineFleet {
        &self.wine
    }
}

impl DerefMut for BuiltinsFleet {
    fn deref_mut(&mut self) -> &mut WineFleet {
        &mut self.wine
    }
}

impl BuiltinsFleet {
    /// The fleet, the coordinator, a Wine prefix prepared as an ESSO 3.0.6 master secret server, and
    /// the Windows agent in it, attached. `setup_exit`: what the installer exits with.
    fn start(setup_exit: u32) -> Option<Self> {
        let bin = windows_bin_or_skip(
            &[&["fleet-agent.exe", "bcryptprimitives.dll"][..], &TOOLS[..]].concat(),
        )?;
        let fleet = Fleet::new().unwrap();
        // Windows paths with spaces, as on a real server.
        let rel = "Program Files/ssofleet agent";
        let dir = fleet.path(rel);
        let tools = fleet.path("Windows Tools/System32");
        let esso = fleet.path("Common Files/Enterprise Single Sign-On");
        let backups = fleet.path("SSO Backups/dev env");
        let installer = fleet.path("media/BizTalk Server 2020/Setup.exe");
        for d in [&dir, &tools, &esso, &backups, installer.parent().unwrap()] {
            std::fs::create_dir_all(d).unwrap();
        }
        for tool in ["powershell.exe", "wevtutil.exe", "shutdown.exe"] {
            std::fs::copy(bin.join(tool), tools.join(tool)).unwrap();
        }
        for tool in ["ssomanage.exe", "entsso-standin.exe"] {
            std::fs::copy(bin.join(tool), esso.join(tool)).unwrap();
        }
        std::fs::write(
            esso.join("Microsoft.EnterpriseSingleSignOn.Interop.dll"),
            "stand-in: the backup script's -InteropDll must exist\n",
        )
        .unwrap();
        std::fs::copy(bin.join("setup.exe"), &installer).unwrap();

        let mut wine = WineFleet::start(
            fleet,
            &installer,
            &backups,
            ("stand-ins", "standin.log"),
            None,
        );
        wine.dir = dir;
        let (server, fleet) = (&wine.server, &wine.fleet);
        // ESSO 3.0.6.0 where KB 2908466 says (the 32-bit view's Server and Administration), the
        // master secret server's SSOSS key, BizTalk's key.
        for value in ["Server", "Administration"] {
            server.reg_add(ENTSSO_KEY, Some((value, "3.0.6.0")), "/reg:32");
        }
        server.reg_add(&format!(r"{ENTSSO_KEY}\SSOSS"), None, "/reg:32");
        server.reg_add(
            BIZTALK_KEY,
            Some(("ProductVersion", "3.13.717.0")),
            "/reg:32",
        );
        // ENTSSO and MSDTC: the stand-in service, automatic (it starts with the "boot").
        let standin = windows_path(&esso.join("entsso-standin.exe"));
        let log = windows_path(&fleet.path("standin.log"));
        let events = windows_path(&fleet.path("events.txt"));
        for (name, binpath) in [
            ("ENTSSO", format!("\"{standin}\" ENTSSO {log} {events}")),
            ("MSDTC", format!("\"{standin}\" MSDTC {log}")),
        ] {
            server.run(&["sc", "create", name, "binpath=", &binpath, "start=", "auto"]);
        }
        let before = read(&fleet.path("standin.log")).lines().count();
        wine.start_session();
        wait_for_services(&wine.fleet, before);

        let password = wine
            .fleet
            .write("secrets/backup password.txt", &format!("{PASSWORD}\n"))
            .unwrap();
        let config = format!(
            "reboot = \"if-required\"\n{}[secrets]
backup_password_file = '{password}'
[tools]
powershell = '{powershell}'
wevtutil = '{wevtutil}'
shutdown = '{shutdown}'
esso_dir = '{esso_dir}'
[actions.install_sso]
program = '{setup}'
args = [\"{{target_version}}\"]
env = {{ STANDIN_SETUP_EXIT = \"{setup_exit}\" }}
",
            windows_agent_toml(NODE, &wine.coordinator.url()),
            password = windows_path(&password),
            powershell = windows_path(&tools.join("powershell.exe")),
            wevtutil = windows_path(&tools.join("wevtutil.exe")),
            shutdown = windows_path(&tools.join("shutdown.exe")),
            esso_dir = windows_path(&esso),
            setup = windows_path(&installer),
        );
        lay_out_windows_agent_in(&wine.fleet, &bin, NODE, rel, &config).unwrap();
        let agent = start_agent(&wine);
        let w = Self {
            agent,
            wine,
            tools,
            esso,
            installer,
        };
        w.wait_attached();
        Some(w)
    }

    fn calls(&self) -> Vec<Call> {
        read(&self.fleet.path("standin.log"))
            .lines()
            .map(|line| {
                let mut parts = line.splitn(4, '\t');
                let mut next = || {
                    parts
                        .next()
                        .unwrap_or_else(|| panic!("short line {line:?}"))
                        .to_string()
                };
                Call {
                    tool: next(),
                    pid: next().parse().unwrap(),
                    kind: next(),
                    text: next(),
                }
            })
            .collect()
    }

    /// The raw command lines of `tool`, in order.
    fn cmdlines(&self, tool: &str) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.tool == tool && c.kind == "cmdline")
            .map(|c| c.text)
            .collect()
    }
}

/// Starts fleet-agent.exe in its folder under Wine, its tools' log and events named in its
/// environment (Wine passes the Unix environment on to Windows programs, and the agent to its tools).
fn start_agent(w: &WineFleet) -> Process {
    start_windows_agent_with(
        &w.server,
        &w.dir,
        NODE,
        &[
            ("STANDIN_LOG", windows_path(&w.fleet.path("standin.log"))),
            ("STANDIN_EVENTS", windows_path(&w.fleet.path("events.txt"))),
            ("STANDIN_SECRET_SERVER", "W1".to_string()),
        ],
        // As the Windows service runs it (deploy/windows/install-agent.ps1): the configuration's
        // absolute path, so that the state folder the tools are given is absolute too.
        &windows_path(&w.dir.join("agent.toml")),
    )
    .unwrap()
}

/// Polls `check` (as `fleet_tests::eventually`) until it returns `Some`; on a timeout the message
/// carries the run and the logs.
fn until<T>(
    w: &BuiltinsFleet,
    run_id: &str,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "timed out after {PATIENCE:?} waiting for: {what}\n{}\n{}",
            w.run(run_id),
            w.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How many times ssomanage -displaydb ran since the installer started (the facts before it run it
/// too, for the SSO Administrators group).
fn verifications(w: &BuiltinsFleet) -> usize {
    w.calls()
        .into_iter()
        .skip_while(|c| c.tool != "setup")
        .filter(|c| c.tool == "ssomanage" && c.kind == "cmdline")
        .count()
}

/// Waits until ENTSSO and MSDTC (the stand-in) run in the prefix's current "boot": both reported
/// RUNNING after the stand-ins' log had `since` lines.
fn wait_for_services(fleet: &Fleet, since: usize) {
    eventually(PATIENCE, "ENTSSO and MSDTC running", || {
        let log = read(&fleet.path("standin.log"));
        let tail: Vec<&str> = log.lines().skip(since).collect();
        ["running ENTSSO", "running MSDTC"]
            .iter()
            .all(|s| tail.iter().any(|l| l.ends_with(&format!("\tstate\t{s}"))))
            .then_some(())
    });
}

/// `"<program>"`, as Rust's standard library quotes a program on a Windows command line.
fn quoted(path: &Path) -> String {
    format!("\"{}\"", windows_path(path))
}

/// The events' lower bound in a wevtutil command line.
fn events_since(cmdline: &str) -> String {
    cmdline
        .split("@SystemTime>='")
        .nth(1)
        .and_then(|t| t.split('\'').next())
        .unwrap_or_else(|| panic!("no @SystemTime in {cmdline}"))
        .to_string()
}

/// The exact wevtutil command line the built-in verification runs, given its lower bound.
fn wevtutil_cmdline(w: &BuiltinsFleet, since: &str) -> String {
    format!(
        "{} qe Application \"/q:*[System[Provider[@Name='ENTSSO'] and TimeCreated[@SystemTime>='{since}']]]\" /rd:true /f:xml /c:50",
        quoted(&w.tools.join("wevtutil.exe"))
    )
}

#[test]
fn the_windows_agent_under_wine_upgrades_its_master_with_its_built_in_actions() {
    let Some(w) = BuiltinsFleet::start(0) else {
        return;
    };
    let started = std::time::Instant::now();
    let (code, run) = w.json(&["upgrade", "--all"]);
    assert_eq!(code, Some(0), "{run}\n{}", w.logs());
    assert_eq!(run["state"], "succeeded", "{run}\n{}", w.logs());
    for step in ["backup-secret", "upgrade-master", "verify-master"] {
        assert_eq!(step_of(&run, step)["state"], "succeeded", "{step}: {run}");
    }
    println!(
        "the built-in upgrade under Wine took {:?}",
        started.elapsed()
    );
    let run_id = run["id"].as_str().unwrap();
    let calls = w.calls();

    // The backup: the agent's script from its state folder, ESSO's interop assembly from esso_dir,
    // the backup written locally first; each path with spaces quoted as Windows splits it.
    let state = windows_path(&w.dir.join("state"));
    let artifact = &step_of(&run, "backup-secret")["artifacts"][0];
    let backup = artifact["path"].as_str().unwrap();
    let name = backup.rsplit('\\').next().unwrap();
    assert!(
        backup.starts_with(&format!(
            "{}\\ssofleet-secret-dev-{NODE}-{run_id}-",
            windows_path(&w.fleet.path("SSO Backups/dev env"))
        )) && name.ends_with(".bak"),
        "{artifact}"
    );
    let powershell = w.cmdlines("powershell");
    let ps = quoted(&w.tools.join("powershell.exe"));
    let expected_backup = format!(
        "{ps} -NoProfile -NonInteractive -ExecutionPolicy Bypass -File \"{state}\\scripts\\backup-secret.ps1\" -BackupFile \"{state}\\secret-backups\\{name}\" -InteropDll \"{}\\Microsoft.EnterpriseSingleSignOn.Interop.dll\"",
        windows_path(&w.esso)
    );
    assert!(
        powershell.contains(&expected_backup),
        "{expected_backup}\nin {powershell:#?}\n{}",
        w.logs()
    );
    // The fitness checks of the built-in facts ran the agent's other script, with the SSO
    // Administrators group ssomanage -displaydb named (ENTSSO running).
    let expected_fitness = format!(
        "{ps} -NoProfile -NonInteractive -ExecutionPolicy Bypass -File \"{state}\\scripts\\fitness.ps1\" -BackupFolder \"{state}\\secret-backups\" -MinFreeBytes 104857600 -SsoAdminGroup \"SSO Administrators\""
    );
    assert!(
        powershell.contains(&expected_fitness),
        "{expected_fitness}\nin {powershell:#?}"
    );
    // The password went to the backup script's standard input only, the reminder after it.
    let stdin: Vec<&Call> = calls
        .iter()
        .filter(|c| c.tool == "powershell" && c.kind == "stdin")
        .collect();
    assert_eq!(stdin.len(), 1, "{calls:#?}");
    // Read by the process that ran the backup script.
    let backup_run = calls
        .iter()
        .find(|c| c.tool == "powershell" && c.kind == "cmdline" && c.text == expected_backup)
        .unwrap();
    assert_eq!(stdin[0].pid, backup_run.pid, "{calls:#?}");
    assert!(
        stdin[0]
            .text
            .starts_with(&format!("{PASSWORD}\\nssofleet backup dev {NODE} ")),
        "{:?}",
        stdin[0]
    );
    for c in calls.iter().filter(|c| c.kind == "cmdline") {
        assert!(!c.text.contains("correct horse"), "the password in {c:?}");
    }
    let agent_logs = w.agent_logs();
    assert!(!agent_logs.contains("correct horse"), "{agent_logs}");
    let printed = w.step_log(run_id, "backup-secret");
    assert!(!printed.contains("correct horse"), "{printed}");
    assert!(
        printed.contains("ISSOConfigSS.BackupSecret wrote the backup"),
        "{printed}"
    );
    let linux = backup.trim_start_matches("Z:").replace('\\', "/");
    assert_eq!(
        read(Path::new(&linux)),
        "simulated master secret backup\r\n"
    );

    // The configured install: the installer's path with spaces, quoted.
    assert_eq!(
        w.cmdlines("setup"),
        [format!("{} 3.0.7", quoted(&w.installer))],
        "{calls:#?}"
    );

    // The verifications (the install's own, then verify-master) read ENTSSO's state through the
    // service controller (the stand-in service restarted by the installer, running again), the
    // version from the registry, the SSO system through ssomanage, ESSO's events through wevtutil.
    let ssomanage = quoted(&w.esso.join("ssomanage.exe"));
    let after_install: Vec<&Call> = calls
        .iter()
        .skip_while(|c| !(c.tool == "setup" && c.kind == "cmdline"))
        .collect();
    let displaydb = after_install
        .iter()
        .filter(|c| c.tool == "ssomanage" && c.kind == "cmdline")
        .map(|c| c.text.clone())
        .collect::<Vec<_>>();
    // One verification, verify-master's (the install asked for no reboot or approval).
    assert_eq!(displaydb, [format!("{ssomanage} -displaydb")], "{calls:#?}");
    // The installer stopped ENTSSO; a new ENTSSO process went through START_PENDING to RUNNING
    // before verification read the SSO system.
    let states: Vec<String> = after_install
        .iter()
        .filter(|c| c.kind == "state" || c.tool == "ssomanage")
        .map(|c| format!("{} {}", c.tool, c.text))
        .collect();
    let position = |what: &str| {
        states
            .iter()
            .position(|s| s.starts_with(what))
            .unwrap_or_else(|| panic!("{what:?} in {states:#?}"))
    };
    assert!(
        position("entsso-standin stopped ENTSSO") < position("setup stopped ENTSSO"),
        "{states:#?}"
    );
    assert!(position("setup installed 3.0.7.0") < position("setup started ENTSSO"));
    let running = states
        .iter()
        .rposition(|s| s == "entsso-standin running ENTSSO")
        .unwrap();
    assert!(position("setup started ENTSSO") < running, "{states:#?}");
    assert!(running < position("ssomanage "), "{states:#?}");
    let wevtutil: Vec<String> = w.cmdlines("wevtutil");
    assert_eq!(wevtutil.len(), 1, "{calls:#?}");
    for cmdline in &wevtutil {
        let since = events_since(cmdline);
        assert_eq!(cmdline, &wevtutil_cmdline(&w, &since));
    }
    let events = read(&w.fleet.path("events.txt"));
    let restarted_at = events.lines().last().unwrap().split(' ').next().unwrap();
    for step in ["verify-master"] {
        let log = w.step_log(run_id, step);
        for line in [
            "service=running".to_string(),
            "version=3.0.7.0".to_string(),
            "master_secret_server=true".to_string(),
            "secret_server=W1".to_string(),
            "sso_enabled=yes".to_string(),
            // ESSO's event from the ENTSSO the installer restarted, read through wevtutil.
            format!("esso_health_event=10534 at {restarted_at}"),
        ] {
            assert!(log.contains(&line), "{step}: {line:?} in\n{log}");
        }
    }
    assert!(
        w.cmdlines("shutdown").is_empty(),
        "no reboot was asked for: {calls:#?}"
    );
    println!("the test took {:?}", started.elapsed());
}

#[test]
fn the_windows_agent_under_wine_reboots_the_prefix_and_verifies_after_the_restart() {
    let Some(mut w) = BuiltinsFleet::start(3010) else {
        return;
    };
    let started = std::time::Instant::now();
    let run_id = w.upgrade_detached();

    // The installer exited 3010: the agent restarts the server with shutdown.exe, and waits.
    let shutdown = until(&w, &run_id, "the agent restarting the server", || {
        w.cmdlines("shutdown").into_iter().next()
    });
    assert_eq!(
        shutdown,
        format!(
            "{} /r /t 30 /c \"ssofleet: upgrade-master of run {run_id} needs a reboot to finish the ESSO install\" /d p:4:2",
            quoted(&w.tools.join("shutdown.exe"))
        )
    );
    let run = w.run(&run_id);
    assert_eq!(step_of(&run, "upgrade-master")["state"], "running", "{run}");
    assert_eq!(
        verifications(&w),
        0,
        "no verification before the reboot: {:#?}",
        w.calls()
    );

    // The agent alone restarts, in the same "boot" (the prefix's services.exe runs on): nothing is
    // verified, the step waits for a restart by hand.
    w.agent.kill();
    w.agent = start_agent(&w);
    let run = until(
        &w,
        &run_id,
        "the step waiting for a restart by hand",
        || {
            let run = w.run(&run_id);
            (step_of(&run, "upgrade-master")["state"] == "waiting").then_some(run)
        },
    );
    let message = step_of(&run, "upgrade-master")["message"].to_string();
    assert!(
        message.contains("the server has not restarted"),
        "{message}\n{}",
        w.logs()
    );
    assert_eq!(verifications(&w), 0, "not verified without a reboot");

    // The "reboot": everything in the prefix ends (wineserver -k), then the agent starts in it
    // again: services.exe starts anew, with it ENTSSO (automatic).
    w.agent.kill();
    w.session = None;
    let status = w.server.kill().unwrap();
    assert!(status.success());
    w.agent = start_agent(&w);
    w.start_session();
    let run = w.wait_final(&run_id, Duration::from_secs(40));
    assert_eq!(run["state"], "succeeded", "{run}\n{}", w.logs());
    assert_eq!(step_of(&run, "upgrade-master")["attempts"], 1, "{run}");
    let log = w.step_log(&run_id, "upgrade-master");
    for line in [
        "waiting: the installer exited with 3010: the agent restarts w1",
        "the server restarted after the install: verifying the install (verify_sso)",
        "version=3.0.7.0",
        "service=running",
        "esso_health_event=10534 at ",
    ] {
        assert!(log.contains(line), "{line:?} in\n{log}\n{}", w.logs());
    }
    let after: Vec<Call> = w
        .calls()
        .into_iter()
        .skip_while(|c| c.tool != "shutdown")
        .collect();
    // Both verifications ran after the reboot (the install's, from its journaled assignment, then
    // verify-master; the facts before verify-master may read ssomanage too).
    assert!(
        after
            .iter()
            .filter(|c| c.tool == "ssomanage" && c.kind == "cmdline")
            .count()
            >= 2,
        "{after:#?}"
    );
    let wevtutil: Vec<&Call> = after
        .iter()
        .filter(|c| c.tool == "wevtutil" && c.kind == "cmdline")
        .collect();
    assert_eq!(wevtutil.len(), 2, "{after:#?}");
    for c in wevtutil {
        assert_eq!(c.text, wevtutil_cmdline(&w, &events_since(&c.text)));
    }
    println!("the reboot test under Wine took {:?}", started.elapsed());
}
