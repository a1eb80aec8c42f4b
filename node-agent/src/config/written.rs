//! agent.toml as a program writes it: for the demo's agents, the end-to-end tests' (on Linux, and
//! Windows agents under Wine) and the scale benchmark's. [`super`] reads the file; this is the one
//! writer of its keys. What differs between those agents (paths, which programs stand in for the
//! ESSO tools, their environment, lines a test adds) comes as parameters.
//!
//! Every value is written as a TOML basic string, escaped, so a Windows path needs nothing special.

use std::path::Path;

use crate::catalogue::ActionName;

/// `text` as a TOML basic string: in double quotes, with `\`, `"` and control characters escaped.
pub fn string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The inside of an action's `env = { … }`: `NAME = "value", …` (callers may append `, MORE = "…"`).
pub fn env(vars: &[(&str, &str)]) -> String {
    vars.iter()
        .map(|(name, value)| format!("{name} = {}", string(value)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The start of agent.toml: the node, its coordinator, its state directory, its certificates, and
/// how quickly it reconnects when not the default. Relative paths are relative to the file.
pub struct Head<'a> {
    pub node: &'a str,
    /// `https://host:port`.
    pub coordinator: &'a str,
    pub state_dir: &'a str,
    pub ca: &'a str,
    pub cert: &'a str,
    pub key: &'a str,
    /// `[reconnect]`'s `initial` and `max`, such as `("100ms", "500ms")`.
    pub reconnect: Option<(&'a str, &'a str)>,
}

impl Head<'_> {
    /// The keys, then `[tls]` and `[reconnect]`: top-level keys of a caller's own go before it.
    pub fn render(&self) -> String {
        let mut out = format!(
            "node = {}\ncoordinator = {}\nstate_dir = {}\n[tls]\nca = {}\ncert = {}\nkey = {}\n",
            string(self.node),
            string(self.coordinator),
            string(self.state_dir),
            string(self.ca),
            string(self.cert),
            string(self.key),
        );
        if let Some((initial, max)) = self.reconnect {
            out.push_str(&format!(
                "[reconnect]\ninitial = {}\nmax = {}\n",
                string(initial),
                string(max)
            ));
        }
        out
    }
}

/// `[secrets]` with the file holding the password of the secret's backup.
pub fn secrets(backup_password_file: &str) -> String {
    format!(
        "[secrets]\nbackup_password_file = {}\n",
        string(backup_password_file)
    )
}

/// `[actions.NAME]`: an action run by a program the file names instead of the built-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub name: ActionName,
    pub program: String,
    /// Argument templates, `{placeholder}`s included.
    pub args: Vec<String>,
    /// More lines of the table, as written (`timeout = "5s"`, or `args` of the caller's own).
    pub lines: String,
    /// The inside of `env = { … }` ([`env`]); none when empty.
    pub env: String,
}

impl Action {
    pub fn new(name: ActionName, program: &str) -> Self {
        Self {
            name,
            program: program.to_string(),
            args: Vec::new(),
            lines: String::new(),
            env: String::new(),
        }
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.args = args.iter().map(|a| (*a).to_string()).collect();
        self
    }

    pub fn lines(mut self, lines: &str) -> Self {
        self.lines = lines.to_string();
        self
    }

    pub fn env(mut self, env: &str) -> Self {
        self.env = env.to_string();
        self
    }

    pub fn render(&self) -> String {
        let mut out = format!(
            "[actions.{}]\nprogram = {}\n",
            self.name,
            string(&self.program)
        );
        if !self.args.is_empty() {
            let args: Vec<String> = self.args.iter().map(|a| string(a)).collect();
            out.push_str(&format!("args = [{}]\n", args.join(", ")));
        }
        if !self.lines.is_empty() {
            out.push_str(&self.lines);
            if !self.lines.ends_with('\n') {
                out.push('\n');
            }
        }
        if !self.env.is_empty() {
            out.push_str(&format!("env = {{ {} }}\n", self.env));
        }
        out
    }
}

/// The upgrade's four actions (`facts`, `backup_secret`, `install_sso`, `verify_sso`, in that
/// order) over the simulated ESSO tools in `tools`: the shell scripts `esso-facts`, `ssoconfig`,
/// `esso-setup` and `esso-verify` of `tests/fixtures`, which the demo carries. No environment yet.
pub fn simulated_esso(tools: &Path) -> [Action; 4] {
    let tool = |name: &str| tools.join(name).display().to_string();
    [
        Action::new(ActionName::Facts, &tool("esso-facts")),
        Action::new(ActionName::BackupSecret, &tool("ssoconfig"))
            .args(&["-backupSecret", "{backup_file}"]),
        Action::new(ActionName::InstallSso, &tool("esso-setup")).args(&["{target_version}"]),
        Action::new(ActionName::VerifySso, &tool("esso-verify")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentConfig;

    #[test]
    fn what_is_written_reads_back_windows_paths_and_quotes_included() {
        let head = Head {
            node: "W1",
            coordinator: "https://127.0.0.1:7443",
            state_dir: "state",
            ca: r"tls\ca.pem",
            cert: r"tls\agent.pem",
            key: r"tls\agent-key.pem",
            reconnect: Some(("100ms", "500ms")),
        };
        let [facts, backup, install, verify] = simulated_esso(Path::new("/opt/tools"));
        let text = "shutdown_timeout = \"3s\"\n".to_string()
            + &head.render()
            + &secrets(r#"Z:\secrets\the "backup" password"#)
            + &facts
                .env(&(env(&[("FAKE_ESSO_HOME", r"Z:\esso")]) + ", FAKE_SETUP_EXIT = \"67\""))
                .render()
            + &backup.render()
            + &install.lines("timeout = \"5s\"").render()
            + &verify.render();
        let c = AgentConfig::parse(Path::new("/etc/ssofleet/agent.toml"), &text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(c.node, "w1");
        assert_eq!(c.coordinator, "https://127.0.0.1:7443");
        assert_eq!(c.tls.ca, Path::new("/etc/ssofleet").join(r"tls\ca.pem"));
        assert_eq!(c.reconnect_max, std::time::Duration::from_millis(500));
        assert_eq!(c.shutdown_timeout, std::time::Duration::from_secs(3));
        assert_eq!(
            c.backup_password_file,
            Some(Path::new("/etc/ssofleet").join(r#"Z:\secrets\the "backup" password"#))
        );
        let facts = &c.actions[&ActionName::Facts];
        assert_eq!(facts.program, Path::new("/opt/tools/esso-facts"));
        assert_eq!(facts.env["FAKE_ESSO_HOME"], r"Z:\esso");
        assert_eq!(facts.env["FAKE_SETUP_EXIT"], "67");
        let backup = &c.actions[&ActionName::BackupSecret];
        assert_eq!(backup.args, ["-backupSecret", "{backup_file}"]);
        let install = &c.actions[&ActionName::InstallSso];
        assert_eq!(install.args, ["{target_version}"]);
        assert_eq!(install.timeout, Some(std::time::Duration::from_secs(5)));
        assert!(c.actions.contains_key(&ActionName::VerifySso));
    }

    #[test]
    fn strings_escape_what_toml_requires() {
        assert_eq!(string("plain"), "\"plain\"");
        assert_eq!(string(r#"a\b"c"#), r#""a\\b\"c""#);
        assert_eq!(string("a\nb\u{1}"), "\"a\\nb\\u0001\"");
    }
}
