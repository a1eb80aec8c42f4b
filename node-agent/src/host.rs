//! The machine the agent runs on, as far as steps need it: which process a step started (its id *and*
//! its start time: Windows reuses process ids within seconds), whether that process or anything it
//! started still runs, containing and ending a step's whole process tree, and which boot this is.
//!
//! Processes are read through `sysinfo`, process trees are Windows job objects (`win32job`) or Unix
//! process groups; nothing here parses a tool's output.

use std::path::Path;

use sysinfo::{Pid, ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System};

/// A process as the operating system names it: its id and when it started (seconds since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: u32,
    pub started: u64,
}

/// The process with this id, as it is now; `None` when there is none (or it is a zombie).
pub fn identify(pid: u32) -> Option<ProcessId> {
    let sysinfo_pid = Pid::from_u32(pid);
    processes(ProcessesToUpdate::Some(&[sysinfo_pid]))?
        .process(sysinfo_pid)
        .filter(|p| p.status() != ProcessStatus::Zombie)
        .map(|p| ProcessId {
            pid,
            started: p.start_time(),
        })
}

/// Whether `root` (with `started` 0: any process with its id) or a process it started still runs.
/// Its descendants are its process group on Unix (the runner makes each step a group); on Windows, the
/// processes whose parent chain leads to it, each started no earlier than its parent (Windows does
/// not re-parent orphans, and a reused id belongs to a later process). Where that is ambiguous (an
/// old journal row without a start time) it counts as alive: a caller waits a little longer rather
/// than start a second installer beside the first. Only when the processes cannot be read at all does
/// it say no (logged).
pub fn tree_alive(root: ProcessId) -> bool {
    let Some(system) = processes(ProcessesToUpdate::All) else {
        return false;
    };
    let live = |p: &&sysinfo::Process| p.status() != ProcessStatus::Zombie;
    let is_root = |p: &sysinfo::Process| {
        p.pid().as_u32() == root.pid && (root.started == 0 || p.start_time() == root.started)
    };
    if system.processes().values().filter(live).any(is_root) {
        return true;
    }
    #[cfg(unix)]
    {
        let Ok(group) = i32::try_from(root.pid) else {
            return false;
        };
        // The root's id, held by another process now, is not the group's.
        let others = |p: &&sysinfo::Process| p.pid().as_u32() != root.pid;
        system
            .processes()
            .values()
            .filter(live)
            .filter(others)
            .any(|p| {
                i32::try_from(p.pid().as_u32()).is_ok_and(|pid| {
                    nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid)))
                        .is_ok_and(|g| g.as_raw() == group)
                })
            })
    }
    #[cfg(not(unix))]
    {
        descendants(&system, root).next().is_some()
    }
}

/// The live processes `root` started, and those they started, by parent links (Windows does not
/// re-parent orphans): each started no earlier than its parent, so that a process that reused an
/// ended parent's id does not count.
#[cfg(not(unix))]
fn descendants(system: &System, root: ProcessId) -> impl Iterator<Item = &sysinfo::Process> {
    let mut tree: Vec<ProcessId> = vec![root];
    let mut found: Vec<&sysinfo::Process> = Vec::new();
    loop {
        let before = tree.len();
        for p in system.processes().values() {
            if p.status() == ProcessStatus::Zombie {
                continue;
            }
            let me = ProcessId {
                pid: p.pid().as_u32(),
                started: p.start_time(),
            };
            let child_of_tree = p.parent().is_some_and(|parent| {
                tree.iter().any(|t| {
                    t.pid == parent.as_u32() && (t.started == 0 || me.started >= t.started)
                })
            });
            if child_of_tree && !tree.contains(&me) {
                tree.push(me);
                found.push(p);
            }
        }
        if tree.len() == before {
            return found.into_iter();
        }
    }
}

/// A step's process and everything it starts, held so that a timeout or a cancel ends all of it: a
/// Windows job object (a grandchild of setup cannot slip out of it), a process group on Unix. The
/// job does not end its processes when the agent exits (an installer outlives the agent that started
/// it); only [`Tree::kill`] does.
pub struct Tree {
    pid: Option<u32>,
    #[cfg(windows)]
    job: Option<win32job::Job>,
}

impl Tree {
    /// Puts `child` (just started) in a tree of its own. Where Windows refuses the job, the tree is
    /// still ended by parent links, and a warning says so.
    pub fn contain(child: &tokio::process::Child) -> Self {
        #[cfg(windows)]
        {
            let job = child.raw_handle().and_then(|handle| {
                let job = win32job::Job::create()
                    .and_then(|job| job.assign_process(handle as isize).map(|()| job));
                job.map_err(|e| {
                    tracing::warn!("cannot put the step's process in a job object ({e}); a timeout ends its tree by parent links")
                })
                .ok()
            });
            Self {
                pid: child.id(),
                job,
            }
        }
        #[cfg(not(windows))]
        {
            // The runner started it as the leader of its own process group.
            Self { pid: child.id() }
        }
    }

    /// Ends every process of the tree, then the child itself.
    pub fn kill(self, child: &mut tokio::process::Child) {
        #[cfg(unix)]
        if let Some(group) = self.pid.and_then(|id| i32::try_from(id).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(group),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        #[cfg(windows)]
        {
            // Closing a job marked kill-on-close ends every process in it, at once.
            let mut closed = false;
            if let Some(job) = self.job {
                let mut info = win32job::ExtendedLimitInfo::new();
                info.limit_kill_on_job_close();
                match job.set_extended_limit_info(&info) {
                    Ok(()) => closed = true,
                    Err(e) => tracing::warn!(
                        "cannot end the step's job object ({e}); ending its tree by parent links"
                    ),
                }
            }
            if !closed
                && let Some(pid) = self.pid
                && let Some(system) = processes(ProcessesToUpdate::All)
            {
                let root = ProcessId { pid, started: 0 };
                for p in descendants(&system, root) {
                    p.kill();
                }
            }
        }
        let _ = child.start_kill();
    }
}

/// Which boot the machine is in, or why that cannot be told.
/// - Windows: when the Service Control Manager (`services.exe`) started. It starts once per boot and
///   cannot end without the system stopping (a critical process), so its start time changes exactly
///   when the server restarts. (Under Wine it is the prefix's `services.exe`: restarting the prefix
///   is the test tier's reboot.)
/// - Elsewhere (the Linux tests): what the `[tools] boot_id` stand-in prints, or Linux's own
///   `/proc/sys/kernel/random/boot_id`.
pub async fn boot_id(stand_in: Option<&Path>) -> Result<String, String> {
    #[cfg(windows)]
    {
        let _ = stand_in;
        tokio::task::spawn_blocking(scm_started)
            .await
            .map_err(|e| format!("cannot read the processes: {e}"))?
    }
    #[cfg(not(windows))]
    match stand_in {
        Some(program) => {
            let output = tokio::process::Command::new(program)
                .stdin(std::process::Stdio::null())
                .output()
                .await
                .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
            let id = String::from_utf8_lossy(&output.stdout).trim().to_string();
            if !output.status.success() || id.is_empty() {
                return Err(format!(
                    "{} printed no boot id ({})",
                    program.display(),
                    output.status
                ));
            }
            Ok(id)
        }
        None => tokio::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .await
            .map(|id| id.trim().to_string())
            .map_err(|e| format!("cannot read /proc/sys/kernel/random/boot_id: {e}")),
    }
}

/// The processes `which` names (their ids, parents, start times); `None`, logged, when the system
/// cannot be read at all.
fn processes(which: ProcessesToUpdate<'_>) -> Option<System> {
    match System::new() {
        Ok(mut system) => {
            system.refresh_processes_specifics(which, true, ProcessRefreshKind::nothing());
            Some(system)
        }
        Err(e) => {
            tracing::warn!("cannot read this machine's processes: {e}");
            None
        }
    }
}

#[cfg(windows)]
fn scm_started() -> Result<String, String> {
    processes(ProcessesToUpdate::All)
        .ok_or("cannot read this machine's processes")?
        .processes()
        .values()
        .filter(|p| p.name().eq_ignore_ascii_case("services.exe"))
        .map(|p| p.start_time())
        .filter(|&started| started > 0)
        .min()
        .map(|started| format!("scm-started-{started}"))
        .ok_or_else(|| "no services.exe runs, or its start time cannot be read".to_string())
}

/// The processes the tests start: this test binary itself, asked to run only [`tests::helper`],
/// which then sleeps, or starts a sleeping copy of itself and exits (a grandchild outliving its
/// parent). The same on Linux and under Wine.
#[cfg(test)]
pub(crate) mod testing {
    pub(crate) const SLEEP: &str = "sleep";
    pub(crate) const ORPHAN: &str = "orphan";

    pub(crate) fn helper(mode: &str) -> std::process::Command {
        let mut c = std::process::Command::new(std::env::current_exe().unwrap());
        c.args([
            "--exact",
            "host::tests::helper",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FLEET_TEST_HELPER", mode)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
        c
    }

    /// The grandchild's id in a line an `ORPHAN` helper printed.
    pub(crate) fn grandchild(line: &str) -> Option<u32> {
        let (_, after) = line.split_once("grandchild=")?;
        after.split_whitespace().next()?.parse().ok()
    }

    /// Reads an `ORPHAN` helper's output up to the grandchild's id (not to its end: on Windows the
    /// grandchild inherits the pipe, which stays open while it runs).
    pub(crate) fn read_grandchild(stdout: impl std::io::Read) -> u32 {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| grandchild(&line))
            .unwrap()
    }

    /// Ends the helper with this id (a grandchild the test no longer needs).
    pub(crate) fn kill(pid: u32) {
        if let Some(system) = super::processes(sysinfo::ProcessesToUpdate::All)
            && let Some(p) = system.process(sysinfo::Pid::from_u32(pid))
        {
            p.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{ORPHAN, SLEEP, helper as start};
    use super::*;

    /// Not a test: what [`testing::helper`] runs.
    #[test]
    #[ignore = "started by the process tests"]
    fn helper() {
        match std::env::var("FLEET_TEST_HELPER").as_deref() {
            Ok(SLEEP) => std::thread::sleep(std::time::Duration::from_secs(60)),
            // Left running on purpose: the grandchild outlives this process.
            #[allow(clippy::zombie_processes)]
            Ok(ORPHAN) => {
                let grandchild = start(SLEEP)
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap();
                println!("grandchild={}", grandchild.id());
            }
            _ => {}
        }
    }

    #[tokio::test]
    async fn killing_a_tree_ends_the_grandchild_that_outlived_its_parent() {
        #[cfg_attr(not(unix), allow(unused_mut))]
        let mut command = start(ORPHAN);
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = tokio::process::Command::from(command).spawn().unwrap();
        let tree = Tree::contain(&child);
        let root = identify(child.id().unwrap()).unwrap();
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
            child.stdout.take().unwrap(),
        ));
        let mut grandchild = None;
        while let Some(line) = lines.next_line().await.unwrap() {
            grandchild = super::testing::grandchild(&line);
            if grandchild.is_some() {
                break;
            }
        }
        let grandchild = grandchild.unwrap();
        assert!(child.wait().await.unwrap().success());
        assert!(identify(grandchild).is_some());
        assert!(tree_alive(root), "the grandchild keeps the tree alive");
        tree.kill(&mut child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while tree_alive(root) && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(!tree_alive(root), "the grandchild {grandchild} was ended");
    }

    #[test]
    fn this_process_is_identified_and_alive_and_a_later_start_time_is_another_process() {
        let me = identify(std::process::id()).unwrap();
        assert!(me.started > 0);
        assert!(tree_alive(me));
        // The same id with another start time is a process that reused the id: not this one, and
        // (this test's process having no children) nothing of its tree runs.
        let reused = ProcessId {
            started: me.started + 3600,
            ..me
        };
        assert!(!tree_alive(reused));
    }

    #[test]
    fn an_ended_process_and_its_ended_tree_are_not_alive() {
        let child = start("").spawn().unwrap();
        let pid = child.id();
        let _ = child.wait_with_output();
        assert_eq!(identify(pid), None);
        assert!(!tree_alive(ProcessId { pid, started: 0 }));
    }

    #[tokio::test]
    async fn the_boot_id_is_read_and_stable() {
        let first = boot_id(None).await.unwrap();
        assert!(!first.is_empty());
        assert_eq!(boot_id(None).await.unwrap(), first);
    }
}
