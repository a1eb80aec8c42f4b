//! Reading TOML configuration with positions: every problem names the line and the key path, for the
//! inventory (`fleet.toml`) and the agent's `agent.toml` alike.

use serde::de::DeserializeOwned;

/// One problem in a configuration file: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based; 0 when the file could not be read at all.
    pub line: usize,
    /// The key path, e.g. `environment[1].members[0]` (array indexes count from 0).
    pub key: String,
    pub message: String,
}

impl Problem {
    /// `FILE: line N, key K: message`, the one format every configuration error uses.
    pub fn display_in(&self, file: &std::path::Path) -> String {
        let file = file.display();
        match (self.line, self.key.is_empty()) {
            (0, _) => format!("{file}: {}", self.message),
            (line, true) => format!("{file}: line {line}: {}", self.message),
            (line, false) => format!("{file}: line {line}, key {}: {}", self.key, self.message),
        }
    }
}

/// An invalid configuration file: every problem found, each naming the file, line and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: std::path::PathBuf,
    pub problems: Vec<Problem>,
}

impl ConfigError {
    pub fn new(file: &std::path::Path, problems: Vec<Problem>) -> Self {
        Self {
            file: file.to_path_buf(),
            problems,
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines: Vec<String> = self
            .problems
            .iter()
            .map(|p| p.display_in(&self.file))
            .collect();
        f.write_str(&lines.join("\n"))
    }
}

impl std::error::Error for ConfigError {}

/// Reads a configuration file as text; an unreadable file is a [`ConfigError`] naming it.
pub fn read_file(path: &std::path::Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            path,
            vec![Problem {
                line: 0,
                key: String::new(),
                message: format!("cannot read the file: {e}"),
            }],
        )
    })
}

/// The lines of a file, indexed once: a checker that names the line of every key it reports (tens of
/// thousands of nodes) finds each in logarithmic time, not by scanning from the start.
pub struct LineIndex {
    /// The byte offset of every line end.
    ends: Vec<usize>,
}

impl LineIndex {
    pub fn new(text: &str) -> Self {
        Self {
            ends: text
                .bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i)
                .collect(),
        }
    }

    /// The 1-based line of byte `offset`.
    pub fn line(&self, offset: usize) -> usize {
        self.ends.partition_point(|&end| end < offset) + 1
    }
}

/// The 1-based line of byte `offset` in `text` (one lookup; [`LineIndex`] for many).
pub fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Deserializes `text`; a syntax or type error becomes a [`Problem`] with its line and key path.
pub fn deserialize<T: DeserializeOwned>(text: &str) -> Result<T, Problem> {
    let de = toml::Deserializer::parse(text).map_err(|e| Problem {
        line: e.span().map_or(1, |s| line_of(text, s.start)),
        key: String::new(),
        message: format!("TOML syntax: {}", e.message().trim()),
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        // `Spanned<T>` deserializes through a private wrapper field; it is no key of the file.
        let path = e
            .path()
            .to_string()
            .split('.')
            .filter(|segment| !segment.starts_with("$__serde_spanned"))
            .collect::<Vec<_>>()
            .join(".");
        let inner = e.into_inner();
        let message = inner.message().trim().to_string();
        let message = match message.strip_prefix("unknown field ") {
            Some(rest) => format!("unknown key {rest}"),
            None => toml_terms(&message),
        };
        let mut key = if path == "." { String::new() } else { path };
        // A missing key is named by the message, not the path (which stops at its table).
        if let Some(missing) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            key = if key.is_empty() {
                missing.to_string()
            } else {
                format!("{key}.{missing}")
            };
        }
        Problem {
            line: inner.span().map_or(1, |s| line_of(text, s.start)),
            key,
            message,
        }
    })
}

/// serde speaks of Rust types; the reader of the message wrote TOML.
fn toml_terms(message: &str) -> String {
    message
        .replace("expected i64", "expected an integer")
        .replace("expected u16", "expected an integer")
        .replace("expected a sequence", "expected an array")
        .replace("expected a map", "expected a table")
        .replace("struct ", "table ")
}

#[cfg(test)]
mod line_tests {
    use super::*;

    #[test]
    fn the_index_finds_the_same_lines_as_a_scan() {
        let text = "a = 1\n\nb = 2\r\nc = 3";
        let index = LineIndex::new(text);
        for offset in 0..=text.len() + 3 {
            assert_eq!(index.line(offset), line_of(text, offset), "offset {offset}");
        }
    }
}
