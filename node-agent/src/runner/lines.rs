//! Lines of a program's output, bounded: a line over [`LINE_MAX`] keeps its first bytes and a
//! marker with its length (and where the whole of it is), so that neither the agent's memory nor
//! anything it sends grows with a line. Read from a pipe (tools whose output is secret, programs
//! outside a step) or followed in a file the program writes (`files`).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use tokio::io::AsyncReadExt;

use crate::limits::{self, LINE_MAX};

/// The most one read of a followed file takes, in bytes and in lines (then its lines are sent on
/// before more is read)…
pub const READ_MAX: usize = 1024 * 1024;
const READ_LINES_MAX: usize = 16 * 1024;
/// …in chunks of this many bytes.
const CHUNK: usize = 16 * 1024;

/// Splits bytes into lines, each capped.
#[derive(Debug)]
pub struct Splitter {
    buf: Vec<u8>,
    /// Bytes of the current line so far (more than `buf` holds once it is over the cap).
    len: usize,
    /// Said after a cut line's marker (e.g. where the full output is).
    note: String,
}

impl Splitter {
    pub fn new(note: String) -> Self {
        Self {
            buf: Vec::new(),
            len: 0,
            note,
        }
    }

    /// The lines `bytes` completes, appended to `lines`; returns how many bytes of `bytes` the
    /// complete lines ended at (the rest is an unfinished line).
    pub fn feed(&mut self, bytes: &[u8], lines: &mut Vec<String>) -> usize {
        let mut consumed = 0;
        let mut rest = bytes;
        while let Some(at) = rest.iter().position(|&b| b == b'\n') {
            self.take(&rest[..at]);
            lines.push(self.line());
            consumed += at + 1;
            rest = &rest[at + 1..];
        }
        self.take(rest);
        consumed
    }

    /// The unfinished line at the end of the output, if any: a line too.
    pub fn finish(&mut self) -> Option<String> {
        (self.len > 0).then(|| self.line())
    }

    fn take(&mut self, part: &[u8]) {
        let room = (LINE_MAX + 1).saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&part[..part.len().min(room)]);
        self.len += part.len();
    }

    fn line(&mut self) -> String {
        // Windows tools write CRLF and sometimes a legacy code page: keep what is readable.
        let mut len = self.len;
        if self.buf.len() == len && self.buf.last() == Some(&b'\r') {
            self.buf.pop();
            len -= 1;
        }
        let line = if len > LINE_MAX {
            self.buf.truncate(LINE_MAX);
            limits::marked(&String::from_utf8_lossy(&self.buf), len, &self.note)
        } else {
            String::from_utf8_lossy(&self.buf).into_owned()
        };
        self.buf.clear();
        self.len = 0;
        line
    }
}

/// One of the program's pipes.
pub struct Pipe<R> {
    pipe: R,
    splitter: Splitter,
    chunk: Vec<u8>,
}

impl<R: tokio::io::AsyncRead + Unpin> Pipe<R> {
    pub fn new(pipe: R) -> Self {
        Self {
            pipe,
            splitter: Splitter::new(String::new()),
            chunk: vec![0; 64 * 1024],
        }
    }

    /// The lines of the next bytes that come (maybe none, a line being unfinished); `None` once the
    /// pipe closed and its last line was given. Cancel-safe: a read is the only await.
    pub async fn read(&mut self) -> Option<Vec<String>> {
        let mut lines = Vec::new();
        match self.pipe.read(&mut self.chunk).await {
            Ok(0) | Err(_) => lines.push(self.splitter.finish()?),
            Ok(n) => {
                self.splitter.feed(&self.chunk[..n], &mut lines);
            }
        }
        Some(lines)
    }
}

/// A file a program writes, followed from where the agent last read it.
pub struct Followed {
    file: std::fs::File,
    splitter: Splitter,
    /// Where the complete lines read so far end.
    pub consumed: u64,
}

impl Followed {
    /// Follows `path` from `from` bytes (its lines before were read already).
    pub fn open(path: &Path, from: u64) -> std::io::Result<Self> {
        let mut file = std::fs::File::open(path)?;
        file.seek(SeekFrom::Start(from))?;
        Ok(Self {
            file,
            splitter: Splitter::new(format!("full output: {}", path.display())),
            consumed: from,
        })
    }

    /// The lines written since the last read, about [`READ_MAX`] bytes of them at most (the rest at the
    /// next call: memory does not grow with what a program printed while nobody read). `to_end`: the
    /// program ended, so its unfinished last line is a line too once the end is reached. Whether the
    /// end was reached (a local file: reading what is there does not wait).
    pub fn read(&mut self, lines: &mut Vec<String>, to_end: bool) -> bool {
        let mut chunk = vec![0u8; CHUNK];
        let (mut taken, before) = (0, lines.len());
        let at_end = loop {
            if taken >= READ_MAX || lines.len() - before >= READ_LINES_MAX {
                break false;
            }
            match self.file.read(&mut chunk) {
                Ok(0) | Err(_) => break true,
                Ok(n) => {
                    taken += n;
                    let ended = self.splitter.feed(&chunk[..n], lines);
                    if ended > 0 {
                        // Up to the end of this chunk's last line.
                        self.consumed = self.read_so_far(n, ended);
                    }
                }
            }
        };
        if at_end && to_end {
            lines.extend(self.splitter.finish());
            self.consumed = self.file.stream_position().unwrap_or(self.consumed);
        }
        at_end
    }

    fn read_so_far(&mut self, n: usize, ended: usize) -> u64 {
        let unfinished = u64::try_from(n - ended).unwrap_or(0);
        match self.file.stream_position() {
            Ok(position) => position.saturating_sub(unfinished),
            // Not expected of a local file: the chunk's lines end at least where the last ones did.
            Err(_) => self.consumed,
        }
    }
}

/// `line` with the secret (when there is one) replaced by `[redacted]`: what a program prints of
/// the secret on its standard input never goes further than this.
pub fn redact(line: String, secret: Option<&str>) -> String {
    match secret.filter(|s| !s.is_empty()) {
        Some(secret) if line.contains(secret) => line.replace(secret, "[redacted]"),
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_a_long_one_is_capped_with_its_length() {
        let mut s = Splitter::new("full output: f".into());
        let mut lines = Vec::new();
        assert_eq!(s.feed(b"one\r\ntw", &mut lines), 5);
        assert_eq!(lines, ["one"]);
        s.feed(b"o\n", &mut lines);
        let long = vec![b'x'; 5 << 20];
        for part in long.chunks(1000) {
            s.feed(part, &mut lines);
        }
        s.feed(b"\nlast", &mut lines);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1], "two");
        assert!(lines[2].starts_with(&"x".repeat(LINE_MAX)));
        assert!(
            lines[2].ends_with("x… truncated, 5242880 bytes (full output: f)"),
            "{}",
            &lines[2][LINE_MAX - 5..]
        );
        assert_eq!(s.finish().as_deref(), Some("last"));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn a_followed_file_gives_what_was_written_since_and_where_its_lines_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.out");
        std::fs::write(&path, "a\nb").unwrap();
        let mut followed = Followed::open(&path, 0).unwrap();
        let mut lines = Vec::new();
        assert!(followed.read(&mut lines, false));
        assert_eq!(
            (lines.as_slice(), followed.consumed),
            (&["a".to_string()][..], 2)
        );
        std::fs::write(&path, "a\nbc\nd").unwrap();
        followed.read(&mut lines, false);
        assert_eq!(lines, ["a", "bc"]);
        assert_eq!(followed.consumed, 5);
        // From the recorded position, another reader gets only what followed.
        let mut again = Followed::open(&path, followed.consumed).unwrap();
        let mut rest = Vec::new();
        assert!(again.read(&mut rest, true));
        assert_eq!(rest, ["d"]);
        assert_eq!(again.consumed, 6);
    }

    #[test]
    fn a_big_file_is_read_a_bounded_part_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.out");
        let line = format!("{}\n", "x".repeat(999));
        std::fs::write(&path, line.repeat(3000)).unwrap();
        let mut followed = Followed::open(&path, 0).unwrap();
        let mut calls = 0;
        let mut total = 0;
        loop {
            let mut lines = Vec::new();
            let done = followed.read(&mut lines, true);
            calls += 1;
            assert!(lines.len() <= READ_MAX / 1000 + 64, "{}", lines.len());
            total += lines.len();
            if done {
                break;
            }
        }
        assert_eq!((total, followed.consumed), (3000, 3_000_000));
        assert!(calls >= 3, "{calls}");
    }
}
