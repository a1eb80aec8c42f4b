//! Where a step's programs write: `<state_dir>/steps/<attempt_id>/<n>.out` and `<n>.err`, the n-th
//! program of the attempt, never a pipe, so that a program outlives its agent (nothing it writes to
//! dies with the agent) and the full output stays on the server when the log carries only the
//! capped lines. A program run under the step host (`step_host`) also has `<n>.pos`, how far the
//! agent has read and journaled its output, and at its end `<n>.exit`, its exit code: what a
//! restarted agent follows and reports (`crate::orphan`). The journal deletes an attempt's folder
//! when it forgets the attempt, and an old folder of an attempt it does not have.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The folder of one attempt's programs' output (its id made safe as a file name).
pub fn attempt_dir(state_dir: &Path, attempt_id: &str) -> PathBuf {
    let name: String = attempt_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    state_dir.join("steps").join(name)
}

/// Deletes an attempt's output folder (the journal forgot the attempt).
pub fn remove_attempt(state_dir: &Path, attempt_id: &str) {
    let dir = attempt_dir(state_dir, attempt_id);
    if let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("cannot delete {}: {e}", dir.display());
    }
}

/// Deletes the attempts' output folders whose attempt is not in `known` (its delete failed, or the
/// journal lost it) and that were not changed for `older_than`.
pub fn remove_unknown_attempts(
    state_dir: &Path,
    known: &[String],
    older_than: std::time::Duration,
) {
    let known: std::collections::HashSet<PathBuf> =
        known.iter().map(|id| attempt_dir(state_dir, id)).collect();
    let Ok(entries) = std::fs::read_dir(state_dir.join("steps")) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let dir = entry.path();
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age >= older_than);
        if old
            && dir.is_dir()
            && !known.contains(&dir)
            && let Err(e) = std::fs::remove_dir_all(&dir)
        {
            tracing::warn!("cannot delete {}: {e}", dir.display());
        }
    }
}

/// One program's files, `<dir>/<n>.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    stem: PathBuf,
}

impl Program {
    pub fn out(&self) -> PathBuf {
        self.stem.with_extension("out")
    }
    pub fn err(&self) -> PathBuf {
        self.stem.with_extension("err")
    }
    pub fn exit(&self) -> PathBuf {
        self.stem.with_extension("exit")
    }
    pub fn pos(&self) -> PathBuf {
        self.stem.with_extension("pos")
    }

    /// The next program of the attempt whose folder is `dir` (created), its files created empty.
    pub fn next(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let n = numbers(dir).max().unwrap_or(0) + 1;
        let program = Self {
            stem: dir.join(n.to_string()),
        };
        std::fs::File::create(program.out())?;
        std::fs::File::create(program.err())?;
        Ok(program)
    }

    /// The attempt's last program, if it ran under the step host (it has a `.pos`).
    pub fn last_hosted(dir: &Path) -> Option<Self> {
        let n = numbers(dir).max()?;
        let program = Self {
            stem: dir.join(n.to_string()),
        };
        program.pos().exists().then_some(program)
    }

    /// How far the agent read the output: (stdout, stderr) bytes; (0, 0) when unknown.
    pub fn read_pos(&self) -> (u64, u64) {
        let text = std::fs::read_to_string(self.pos()).unwrap_or_default();
        let mut parts = text
            .split_whitespace()
            .map(|p| p.parse::<u64>().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    }

    /// Not synced to the disk: after a crash of the machine the worst is lines sent twice.
    pub fn write_pos(&self, (out, err): (u64, u64)) -> std::io::Result<()> {
        write_whole(&self.pos(), &format!("{out} {err}\n"), false)
    }

    /// How much of the attempt's output the agent read before this program's position: the whole of
    /// the attempt's earlier programs' files, and this one's up to its position (bytes).
    pub fn read_before(&self) -> u64 {
        let (out, err) = self.read_pos();
        let dir = self.stem.parent().unwrap_or(Path::new(""));
        let this = self
            .stem
            .file_name()
            .and_then(|n| n.to_str()?.parse::<u32>().ok());
        let earlier: u64 = numbers(dir)
            .filter(|&n| this.is_some_and(|this| n < this))
            .flat_map(|n| ["out", "err"].map(|ext| dir.join(n.to_string()).with_extension(ext)))
            .filter_map(|path| std::fs::metadata(path).ok())
            .map(|m| m.len())
            .sum();
        earlier.saturating_add(out).saturating_add(err)
    }

    /// The program's exit, once the step host recorded it.
    pub fn read_exit(&self) -> Option<Exit> {
        Exit::parse(&std::fs::read_to_string(self.exit()).ok()?)
    }
}

/// The numbers of the programs with files in `dir`.
fn numbers(dir: &Path) -> impl Iterator<Item = u32> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            name.strip_suffix(".out")?.parse::<u32>().ok()
        })
}

/// How a program under the step host ended, as its exit file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Its exit code.
    Code(i32),
    /// Ended by a signal (Unix), or no code.
    NoCode(String),
    /// It could not be started at all.
    NotStarted(String),
}

impl Exit {
    pub fn code(&self) -> Option<i32> {
        match self {
            Self::Code(code) => Some(*code),
            _ => None,
        }
    }

    fn parse(text: &str) -> Option<Self> {
        let text = text.trim_end_matches(['\r', '\n']);
        if let Some(code) = text.strip_prefix("code ") {
            return code.trim().parse().ok().map(Self::Code);
        }
        if let Some(how) = text.strip_prefix("ended ") {
            return Some(Self::NoCode(how.to_string()));
        }
        text.strip_prefix("not-started ")
            .map(|why| Self::NotStarted(why.to_string()))
    }

    pub fn line(&self) -> String {
        match self {
            Self::Code(code) => format!("code {code}\n"),
            Self::NoCode(how) => format!("ended {how}\n"),
            Self::NotStarted(why) => format!("not-started {why}\n"),
        }
    }
}

/// Writes `path` whole or not at all, on the disk before it is renamed into place: a reader never
/// sees half of it.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    write_whole(path, text, true)
}

fn write_whole(path: &Path, text: &str, sync: bool) -> std::io::Result<()> {
    let temp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(text.as_bytes())?;
        if sync {
            file.sync_all()?;
        }
    }
    std::fs::rename(&temp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_numbered_and_their_exit_and_position_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let steps = attempt_dir(dir.path(), "../a/b");
        assert_eq!(steps, dir.path().join("steps").join("___a_b"));
        let first = Program::next(&steps).unwrap();
        assert!(first.out().ends_with("1.out") && first.out().exists());
        assert_eq!(Program::last_hosted(&steps), None, "not hosted");
        let second = Program::next(&steps).unwrap();
        second.write_pos((12, 3)).unwrap();
        assert_eq!(Program::last_hosted(&steps), Some(second.clone()));
        assert_eq!(second.read_pos(), (12, 3));
        std::fs::write(first.out(), "0123456789").unwrap();
        assert_eq!(second.read_before(), 10 + 12 + 3);
        assert_eq!(second.read_exit(), None);
        for exit in [
            Exit::Code(3010),
            Exit::Code(-1),
            Exit::NoCode("by signal 9".into()),
            Exit::NotStarted("no such file".into()),
        ] {
            write_atomic(&second.exit(), &exit.line()).unwrap();
            assert_eq!(second.read_exit(), Some(exit));
        }
        remove_attempt(dir.path(), "../a/b");
        assert!(!steps.exists());
    }
}
