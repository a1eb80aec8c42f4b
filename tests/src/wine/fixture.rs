//! esso-fixture.exe (tests/wine/fixture.c) as the Windows agent's actions: a Windows program
//! speaking the agent's line protocol, which appends its raw command line (GetCommandLineW), its
//! process id and "start"/"end" to a log of its own, and keeps a simulated ESSO's version in a file.

use std::path::{Path, PathBuf};

use fleet_agent::catalogue::ActionName;
use fleet_agent::config::written::{self, Action};

use super::{NODE, WineFleet, read, windows_bin_or_skip, windows_path};
use crate::Fleet;

/// What the fixture's scenarios need of `tests/wine/build`.
pub const FIXTURE_BINS: [&str; 3] = [
    "fleet-agent.exe",
    "bcryptprimitives.dll",
    "esso-fixture.exe",
];

/// The fixture's log, as [`WineFleet::start`] takes it.
pub const FIXTURE_LOG: (&str, &str) = ("fixture log", "fixture.log");

/// One line of the fixture's log: `<ticks> <pid> <mode> start|end <command line>`.
#[derive(Debug, Clone)]
pub struct FixtureEvent {
    /// 100 ns ticks since 1601 (GetSystemTimePreciseAsFileTime).
    pub ticks: u64,
    pub pid: u32,
    pub mode: String,
    pub start: bool,
    pub cmdline: String,
}

impl WineFleet {
    /// The fleet (an installer, a `backups/` folder), the coordinator and a Wine prefix for the
    /// fixture's scenarios (see [`WineFleet::start`]), and `tests/wine/build`'s folder; `None` when the
    /// Windows tier cannot run here.
    pub fn with_fixture(wine_log: Option<&str>) -> Option<(Self, PathBuf)> {
        let bin = windows_bin_or_skip(&FIXTURE_BINS)?;
        let fleet = Fleet::new().expect("a fleet");
        let backups = fleet.path("backups");
        std::fs::create_dir_all(&backups).expect("backups/");
        let installer = fleet
            .write("media/Setup.exe", "simulated ESSO installer 3.0.7\n")
            .expect("the installer");
        let wine = Self::start(fleet, &installer, &backups, FIXTURE_LOG, wine_log);
        Some((wine, bin))
    }

    /// The fixture's log, in the order the lines were appended.
    pub fn fixture_log(&self) -> Vec<FixtureEvent> {
        read(&self.fleet.path("fixture.log"))
            .lines()
            .map(|line| {
                let mut parts = line.splitn(5, ' ');
                let mut next = || {
                    parts
                        .next()
                        .unwrap_or_else(|| panic!("short line {line:?}"))
                };
                FixtureEvent {
                    ticks: next().parse().expect("the ticks"),
                    pid: next().parse().expect("the pid"),
                    mode: next().to_string(),
                    start: next() == "start",
                    cmdline: next().to_string(),
                }
            })
            .collect()
    }
}

/// agent.toml's `[secrets]` and `[actions.*]` for the fixture of `bin` (the folder of
/// `tests/wine/build`): the simulated ESSO at 3.0.6, a backup password, the install taking
/// `setup_ms`; `install` is the install action's lines after its `program`.
pub fn fixture_actions(fleet: &Fleet, bin: &Path, setup_ms: u32, install: &str) -> String {
    let home = fleet.path(&format!("agents/{NODE}/esso"));
    std::fs::create_dir_all(&home).expect("the simulated ESSO's folder");
    std::fs::write(home.join("version"), "3.0.6\n").expect("the simulated ESSO's version");
    let password = fleet
        .write(
            &format!("agents/{NODE}/backup-password"),
            "correct horse battery\n",
        )
        .expect("the backup password");
    let fixture = windows_path(&bin.join("esso-fixture.exe"));
    let env = written::env(&[
        ("FIXTURE_HOME", &windows_path(&home)),
        ("FIXTURE_LOG", &windows_path(&fleet.path("fixture.log"))),
        ("FIXTURE_SETUP_MS", &setup_ms.to_string()),
    ]);
    let actions = [
        Action::new(ActionName::Facts, &fixture).args(&["facts"]),
        Action::new(ActionName::BackupSecret, &fixture).args(&[
            "backup",
            "-backupSecret",
            "{backup_file}",
        ]),
        Action::new(ActionName::InstallSso, &fixture).lines(install),
        Action::new(ActionName::VerifySso, &fixture).args(&["verify"]),
    ];
    written::secrets(&windows_path(&password))
        + &actions.map(|action| action.env(&env).render()).concat()
}
