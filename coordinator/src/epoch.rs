//! Coordinator epochs (SPEC §9): every start takes a new, higher epoch, recorded durably in the state
//! directory before the coordinator serves anyone. Agents refuse assignments from an older epoch.

use std::io::Write;
use std::path::Path;

const FILE: &str = "epoch";

/// Reads the last epoch from `state_dir`, records the next one durably, and returns it.
pub fn take_next(state_dir: &Path) -> Result<u64, String> {
    let path = state_dir.join(FILE);
    let last = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().map_err(|_| {
            format!(
                "{}: corrupt epoch file (expected a number, found {:?}); restore it from a backup rather than deleting it",
                path.display(),
                text.trim()
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
    };
    let next = last + 1;
    let tmp = state_dir.join(format!("{FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        writeln!(file, "{next}")?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        // The rename itself must survive a crash: sync the directory where the platform allows it.
        if let Ok(dir) = std::fs::File::open(state_dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    };
    write().map_err(|e| format!("{}: cannot record the new epoch: {e}", path.display()))?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_start_takes_a_higher_epoch() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(super::take_next(dir.path()).unwrap(), 1);
        assert_eq!(super::take_next(dir.path()).unwrap(), 2);
        std::fs::write(dir.path().join("epoch"), "garbage").unwrap();
        assert!(
            super::take_next(dir.path())
                .unwrap_err()
                .contains("corrupt epoch file")
        );
    }
}
