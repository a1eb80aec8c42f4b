//! The agent's local action catalogue (SPEC §6): the closed list of actions it can run, and the
//! placeholders their argument templates may use. Nothing received over the network becomes a command
//! line: the coordinator names an action and supplies placeholder values; the command is the agent's own.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use fleet_proto::pb;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ActionName {
    Facts,
    BackupSecret,
    InstallSso,
    ConfigureSso,
    VerifySso,
    BackupSecurityData,
    ExportEncryptionKey,
    CopyMigrationUtility,
    RunMigration,
}

impl ActionName {
    pub const ALL: [ActionName; 9] = [
        ActionName::Facts,
        ActionName::BackupSecret,
        ActionName::InstallSso,
        ActionName::ConfigureSso,
        ActionName::VerifySso,
        ActionName::BackupSecurityData,
        ActionName::ExportEncryptionKey,
        ActionName::CopyMigrationUtility,
        ActionName::RunMigration,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionName::Facts => "facts",
            ActionName::BackupSecret => "backup_secret",
            ActionName::InstallSso => "install_sso",
            ActionName::ConfigureSso => "configure_sso",
            ActionName::VerifySso => "verify_sso",
            ActionName::BackupSecurityData => "backup_security_data",
            ActionName::ExportEncryptionKey => "export_encryption_key",
            ActionName::CopyMigrationUtility => "copy_migration_utility",
            ActionName::RunMigration => "run_migration",
        }
    }

    pub fn from_proto(action: pb::Action) -> Option<Self> {
        Some(match action {
            pb::Action::Unspecified => return None,
            pb::Action::Facts => ActionName::Facts,
            pb::Action::BackupSecret => ActionName::BackupSecret,
            pb::Action::InstallSso => ActionName::InstallSso,
            pb::Action::ConfigureSso => ActionName::ConfigureSso,
            pb::Action::VerifySso => ActionName::VerifySso,
            pb::Action::BackupSecurityData => ActionName::BackupSecurityData,
            pb::Action::ExportEncryptionKey => ActionName::ExportEncryptionKey,
            pb::Action::CopyMigrationUtility => ActionName::CopyMigrationUtility,
            pb::Action::RunMigration => ActionName::RunMigration,
        })
    }
}

impl fmt::Display for ActionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ActionName {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ActionName::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or(())
    }
}

/// The placeholders an argument template may use.
pub const PLACEHOLDERS: [&str; 8] = [
    "node",
    "run_id",
    "environment",
    "target_version",
    "installer",
    "backup_file",
    "backup_dir",
    "master",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown placeholder {{{0}}}")]
    Unknown(String),
    #[error("unclosed '{{' (write '{{{{' for a literal brace)")]
    Unclosed,
    #[error("placeholder {{{0}}} has no value for this step")]
    NoValue(String),
}

/// Checks a template's placeholders without values (at configuration load).
pub fn check_template(template: &str) -> Result<(), TemplateError> {
    walk(template, |name| {
        if PLACEHOLDERS.contains(&name) {
            Ok(String::new())
        } else {
            Err(TemplateError::Unknown(name.to_string()))
        }
    })
    .map(|_| ())
}

/// Expands `{name}` placeholders with `values`; `{{` and `}}` stand for literal braces.
pub fn expand(template: &str, values: &BTreeMap<String, String>) -> Result<String, TemplateError> {
    walk(template, |name| {
        if !PLACEHOLDERS.contains(&name) {
            return Err(TemplateError::Unknown(name.to_string()));
        }
        values
            .get(name)
            .cloned()
            .ok_or_else(|| TemplateError::NoValue(name.to_string()))
    })
}

fn walk(
    template: &str,
    mut value: impl FnMut(&str) -> Result<String, TemplateError>,
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{") {
            out.push('{');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}").or_else(|| tail.strip_prefix('}')) {
            out.push('}');
            rest = after;
        } else {
            let end = tail.find('}').ok_or(TemplateError::Unclosed)?;
            out.push_str(&value(&tail[1..end])?);
            rest = &tail[end + 1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_placeholders_and_escapes() {
        let values: BTreeMap<String, String> = [("node", "n1"), ("backup_dir", r"\\b\sso")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            expand("{backup_dir}\\{node}.bak", &values).unwrap(),
            r"\\b\sso\n1.bak"
        );
        assert_eq!(expand("{{literal}}", &values).unwrap(), "{literal}");
        assert_eq!(
            expand("{run_id}", &values).unwrap_err(),
            TemplateError::NoValue("run_id".into())
        );
        assert_eq!(
            expand("{x}", &values).unwrap_err(),
            TemplateError::Unknown("x".into())
        );
        assert_eq!(
            expand("{node", &values).unwrap_err(),
            TemplateError::Unclosed
        );
        assert!(check_template("-backupSecret {backup_file}").is_ok());
    }

    #[test]
    fn action_names_round_trip() {
        for a in ActionName::ALL {
            assert_eq!(a.as_str().parse::<ActionName>(), Ok(a));
        }
        assert!("reboot".parse::<ActionName>().is_err());
    }
}
