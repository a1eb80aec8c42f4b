//! The step host: a program that must outlive the agent (`CommandSpec::outlives_agent`: installs,
//! ESSO's configuration, the migration utility) runs under a tiny process of the agent's own
//! executable, `fleet-agent --step-host`, which starts it with the output files as its standard
//! output and error (or its own pipes, passed on, for a program whose output must not reach a file:
//! `CommandSpec::piped`; its standard input, the secret's pipe, passed on as it is), waits for it and
//! writes its exit code to the exit file (whole or not at all). A restarted agent cannot wait for a
//! process it did not start (Unix), and on Windows the code is lost once no handle is open: the exit
//! file is how it learns the outcome. The host is the root of the step's process tree (its group,
//! its job object), so a timeout still ends all of it. On Windows it runs in a process group and a
//! console of its own, without a window: a Ctrl-C in the console of an agent started by hand does not
//! reach it (it would end without recording the exit), and under the service no console window
//! opens for each step.
//!
//! What to run comes in one environment variable (never a secret: those go to standard input), so
//! that the unit tests' binary can play the host too (`host::testing`'s way of re-running itself).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::files::{Exit, Program, write_atomic};

/// The agent's argument that makes it a step host.
pub const ARG: &str = "--step-host";
const SPEC: &str = "FLEET_STEP_HOST";

/// The host's command for `program` with `args`, whose files are `files` (`piped`: its output goes
/// to the host's standard output and error, not to the files).
pub fn command(
    files: &Program,
    piped: bool,
    program: &Path,
    args: &[String],
) -> std::io::Result<tokio::process::Command> {
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    #[cfg(windows)]
    {
        // CREATE_NEW_PROCESS_GROUP (0x200) | CREATE_NO_WINDOW (0x0800_0000), winbase.h. The job
        // object (`host::Tree`) is assigned after the start, as for any step's program.
        const CREATE_NEW_PROCESS_GROUP: u32 = 0x0000_0200;
        const CREATE_NO_WINDOW: u32 = 0x0800_0000;
        command.creation_flags(CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW);
    }
    #[cfg(not(test))]
    command.arg(ARG);
    #[cfg(test)]
    command.args([
        "--exact",
        "runner::step_host::tests::host",
        "--ignored",
        "--test-threads=1",
    ]);
    // Empty output paths: the host's own standard output and error are passed on.
    let (out, err) = if piped {
        (PathBuf::new(), PathBuf::new())
    } else {
        (files.out(), files.err())
    };
    let parts = [out, err, files.exit(), program.to_path_buf()]
        .into_iter()
        .map(PathBuf::into_os_string)
        .chain(args.iter().map(OsString::from));
    command.env(SPEC, encode(parts)?);
    Ok(command)
}

/// When this process was started as a step host ([`ARG`] its first argument), runs it and exits;
/// otherwise returns. Every program that runs agents calls it first: `fleet-agent`, and those that
/// run agents in their own process (`fleetctl demo`, the scale benchmark's agent hosts), since a
/// step host is the current executable.
pub fn run_if_asked() {
    if std::env::args_os().nth(1).is_some_and(|a| a == ARG) {
        std::process::exit(main());
    }
}

/// `fleet-agent --step-host`: runs the program its environment names and records its exit; the
/// process's exit code is the program's (1 when it could not be read at all).
pub fn main() -> i32 {
    let Some(parts) = std::env::var_os(SPEC).and_then(|s| decode(&s)) else {
        eprintln!("fleet-agent: {ARG} is started by the agent, for a step's program");
        return 2;
    };
    let [out, err, exit, program, args @ ..] = parts.as_slice() else {
        return 2;
    };
    let exit = PathBuf::from(exit);
    let outcome = run(Path::new(out), Path::new(err), Path::new(program), args);
    let code = outcome.code().unwrap_or(1);
    if let Err(e) = write_atomic(&exit, &outcome.line()) {
        eprintln!("fleet-agent: cannot write {}: {e}", exit.display());
    }
    code
}

fn run(out: &Path, err: &Path, program: &Path, args: &[String]) -> Exit {
    let mut command = Command::new(program);
    command.args(args).env_remove(SPEC);
    // Empty paths: the host's own output (the agent's pipes) is inherited.
    if !out.as_os_str().is_empty() {
        let open = |path: &Path| std::fs::OpenOptions::new().append(true).open(path);
        match (open(out), open(err)) {
            (Ok(stdout), Ok(stderr)) => command.stdout(stdout).stderr(stderr),
            (Err(e), _) | (_, Err(e)) => {
                return Exit::NotStarted(format!("cannot open its output files: {e}"));
            }
        };
    }
    let started = command.status();
    match started {
        Err(e) => Exit::NotStarted(format!("cannot start {}: {e}", program.display())),
        Ok(status) => match status.code() {
            Some(code) => Exit::Code(code),
            None => Exit::NoCode(format!("({status})")),
        },
    }
}

/// The parts as one string: each as its length in bytes, a colon, and itself.
fn encode(parts: impl Iterator<Item = OsString>) -> std::io::Result<String> {
    let mut spec = String::new();
    for part in parts {
        let part = part.into_string().map_err(|p| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} is not valid Unicode", p.to_string_lossy()),
            )
        })?;
        spec.push_str(&format!("{}:{part}", part.len()));
    }
    Ok(spec)
}

fn decode(spec: &std::ffi::OsStr) -> Option<Vec<String>> {
    let mut rest = spec.to_str()?;
    let mut parts = Vec::new();
    while !rest.is_empty() {
        let (len, after) = rest.split_once(':')?;
        let len: usize = len.parse().ok()?;
        let part = after.get(..len)?;
        parts.push(part.to_string());
        rest = &after[len..];
    }
    Some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Not a test: the step host, as the runner's tests start it (this binary, re-run).
    #[test]
    #[ignore = "started by the runner's tests"]
    fn host() {
        std::process::exit(main());
    }

    #[test]
    fn the_spec_round_trips() {
        let parts = ["a:b", "", "é 12:", "-x"];
        let spec = encode(parts.iter().map(OsString::from)).unwrap();
        assert_eq!(decode(std::ffi::OsStr::new(&spec)).unwrap(), parts);
        assert_eq!(decode(std::ffi::OsStr::new("5:ab")), None);
    }
}
