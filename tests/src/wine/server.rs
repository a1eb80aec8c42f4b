//! A Wine prefix as one Windows "server": `wine` in it, the program that keeps it up, and its
//! processes as Linux sees them.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};

/// A Wine prefix of its own (one "server"), killed when dropped.
pub struct WineServer {
    pub prefix: tempfile::TempDir,
}

impl Default for WineServer {
    fn default() -> Self {
        Self::new()
    }
}

impl WineServer {
    pub fn new() -> Self {
        Self {
            prefix: tempfile::tempdir().expect("a temporary directory for the Wine prefix"),
        }
    }

    /// `wine` in this prefix, quiet, with no Mono or Gecko installer prompts.
    pub fn command(&self, cwd: &Path) -> Command {
        let mut command = Command::new("wine");
        command
            .current_dir(cwd)
            .env("WINEPREFIX", self.prefix.path())
            .env("WINEDEBUG", "-all")
            // No Mono or Gecko installer prompts in a fresh prefix.
            .env("WINEDLLOVERRIDES", "mscoree,mshtml=");
        command
    }

    pub fn wine(&self, args: &[&str], cwd: &Path) -> Output {
        self.command(cwd).args(args).output().expect("wine runs")
    }

    /// Wine's own `reg` / `sc`, as an administrator would prepare the server.
    pub fn run(&self, args: &[&str]) {
        let o = self.wine(args, self.prefix.path());
        assert!(o.status.success(), "wine {args:?}: {o:?}");
    }

    /// `reg add <key> [/v <value> /d <data>] <view> /f` (`view`: `/reg:32` or `/reg:64`).
    pub fn reg_add(&self, key: &str, value: Option<(&str, &str)>, view: &str) {
        let mut args = vec!["reg", "add", key];
        if let Some((value, data)) = value {
            args.extend(["/v", value, "/d", data]);
        }
        args.extend([view, "/f"]);
        self.run(&args);
    }

    /// Makes the prefix (Wine's first start of a prefix takes seconds): drive_c exists after. With
    /// `log`, what Wine prints goes to that file (created), with `FLEET_WINEDEBUG` as its `WINEDEBUG`.
    pub fn make(&self, log: Option<&Path>) {
        let Some(log) = log else {
            self.run(&["cmd", "/c", "exit"]);
            return;
        };
        // Its standard output and error are a file, not pipes: the prefix's own processes
        // (services.exe, the service manager, among them) inherit them, and a pipe would hold
        // `output()` until the whole prefix shut down. The file keeps what they print (and what
        // the service prints) for failure messages.
        let file = std::fs::File::create(log).expect("Wine's log file");
        let mut init = self.command(self.prefix.path());
        init.args(["cmd", "/c", "exit"])
            .stdout(file.try_clone().expect("Wine's log file"))
            .stderr(file);
        if let Some(debug) = std::env::var_os("FLEET_WINEDEBUG") {
            init.env("WINEDEBUG", debug);
        }
        let status = init.status().expect("wine runs");
        assert!(status.success(), "wine cmd /c exit: {status}");
    }

    /// `wineserver -k`: everything in the prefix ends (for a "reboot", a new start of the prefix).
    pub fn kill(&self) -> std::io::Result<ExitStatus> {
        Command::new("wineserver")
            .arg("-k")
            .env("WINEPREFIX", self.prefix.path())
            .status()
    }

    /// The Linux processes of this prefix whose (Windows) command line satisfies `matches`:
    /// (pid, command line). Under Wine a Windows program's /proc cmdline is its Windows command
    /// line, and its environment carries the prefix.
    pub fn processes(&self, matches: impl Fn(&str) -> bool) -> Vec<(u32, String)> {
        let wanted = format!("WINEPREFIX={}", self.prefix.path().display());
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                if !matches(&cmdline) {
                    return None;
                }
                let environ = std::fs::read(e.path().join("environ")).ok()?;
                let in_prefix = environ
                    .split(|b| *b == 0)
                    .any(|var| var == wanted.as_bytes());
                in_prefix.then_some((pid, cmdline))
            })
            .collect()
    }

    /// The prefix's fleet-agent.exe processes. (Their argv[0] is the Windows path, unquoted: with
    /// the service's path, `C:\Program Files\ssofleet\fleet-agent.exe`, space included.) Not the
    /// step hosts (`fleet-agent.exe --step-host`): they run an install's program and outlive the
    /// agent by design.
    pub fn agent_processes(&self) -> Vec<(u32, String)> {
        self.processes(|cmdline| {
            cmdline.to_ascii_lowercase().contains("fleet-agent.exe ")
                && !cmdline.contains("--step-host")
        })
    }
}

impl Drop for WineServer {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// A Windows program that does nothing but keep the prefix up, as a booted (logged-on) server is up:
/// `wine cmd` reading a standard input that stays open until dropped.
///
/// Wine is not Windows here. Observed with Wine 8.0: once the last process started with `wine` in
/// a prefix has ended, the prefix shuts down within seconds (its services.exe, and the service it
/// started, with it): the running service does not keep it up. Without this, `sc start` starts the
/// agent, and ~2 s after `sc` exits the service is gone without a word in its log (it attached,
/// then the coordinator saw its stream break), and `sc query` then shows STOPPED with exit code 1077
/// (ERROR_SERVICE_NEVER_STARTED: a fresh services.exe). Likewise the services end when an agent
/// alone restarts, unless this keeps the prefix up.
pub struct Session(Child);

impl Session {
    /// Starts it in `server`; what it prints is appended to `log`, or dropped.
    pub fn start(server: &WineServer, log: Option<&Path>) -> Self {
        let (stdout, stderr) = match log {
            Some(log) => {
                let file = std::fs::OpenOptions::new()
                    .append(true)
                    .open(log)
                    .expect("Wine's log file");
                (
                    Stdio::from(file.try_clone().expect("Wine's log file")),
                    Stdio::from(file),
                )
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let child = server
            .command(server.prefix.path())
            .arg("cmd")
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("wine cmd");
        Self(child)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
