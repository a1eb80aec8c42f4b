//! ESSO's configuration file after a fresh install, written from a template (ESSO.md: "Passwords live
//! only in that XML (exported ConfigMain.xml files drop them): write it from a template with the
//! secrets read from files"). The layout is the ESSO feature of BizTalk Server's configuration
//! framework as Microsoft shows it (`biztalk/install-and-config-guides/working-with-the-configuration-
//! framework.md`): `<Feature Name="SSOServer,Engine">`; `<Question ID="IsSecretServer">` whose
//! `<Answer Value="Create">` holds the administrator groups and the new secret's backup file, password
//! and reminder, and `<Answer Value="Join">`; `<NTService ID="ENTSSO">`; `<SQL ID="SSO_DB_ID">`.
//! Attributes the sample carries for the wizard's display (GUIDs, descriptions) are left out: whether
//! `Configuration.exe /S` needs them is to confirm on a real server. Host Integration Server's
//! `ConfigurationWizard.exe /APPLY` file has no documented layout: its built-in is refused.

use crate::config::SsoSettings;
use crate::esso::SsoConfigure;

/// The answers, secrets included, for one configuration.
pub(super) struct Settings {
    domain: String,
    user: String,
    password: String,
    database_server: String,
    database: String,
    admin_group: String,
    affiliate_admin_group: String,
    /// Create only: where the new master secret is backed up, its password and reminder.
    backup: Option<NewSecretBackup>,
}

/// The backup Create makes of the new master secret (its password is the agent's backup password).
pub(super) struct NewSecretBackup {
    pub file: String,
    pub password: String,
    pub reminder: String,
}

impl Settings {
    /// Whether `[sso]` has what the configuration needs (the account, its password file, the SQL
    /// Server), before an install that will need it; the password is not read here.
    pub(super) fn check(sso: &SsoSettings) -> Result<(), String> {
        let missing: Vec<&str> = [
            ("service_account", sso.service_account.is_none()),
            ("service_password_file", sso.service_password_file.is_none()),
            ("database_server", sso.database_server.is_none()),
        ]
        .into_iter()
        .filter(|(_, absent)| *absent)
        .map(|(key, _)| key)
        .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(format!(
            "a fresh install is configured right after it, and [sso] in agent.toml lacks {} (or configure [actions.configure_sso]): nothing was installed",
            missing.join(", ")
        ))
    }

    /// Reads `[sso]` and the service account's password file; `backup` is the new secret's backup
    /// for Create. `Err` names what is missing.
    pub(super) fn read(
        sso: &SsoSettings,
        answer: SsoConfigure,
        backup: Option<NewSecretBackup>,
    ) -> Result<Self, String> {
        let missing = |key: &str| {
            format!(
                "the built-in configure_sso needs [sso] {key} in agent.toml (or configure [actions.configure_sso])"
            )
        };
        let account = sso
            .service_account
            .as_deref()
            .ok_or_else(|| missing("service_account"))?;
        let (domain, user) = match account.split_once('\\') {
            Some((d, u)) if !d.is_empty() && !u.is_empty() => (d.to_string(), u.to_string()),
            _ => {
                return Err(format!(
                    "[sso] service_account {account:?} must be DOMAIN\\user"
                ));
            }
        };
        let file = sso
            .service_password_file
            .as_ref()
            .ok_or_else(|| missing("service_password_file"))?;
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("the ENTSSO account's password file {}: {e}", file.display()))?;
        let password = fleet_proto::names::secret_text(&text).to_string();
        if password.is_empty() {
            return Err(format!(
                "the ENTSSO account's password file {} is empty",
                file.display()
            ));
        }
        let database_server = sso
            .database_server
            .clone()
            .ok_or_else(|| missing("database_server"))?;
        let backup = match answer {
            SsoConfigure::Create => Some(backup.ok_or(
                "creating an SSO system backs up its new master secret: it needs the backup password ([secrets] backup_password_file)",
            )?),
            SsoConfigure::Join => None,
        };
        Ok(Self {
            domain,
            user,
            password,
            database_server,
            database: sso.database.clone(),
            admin_group: sso.admin_group.clone(),
            affiliate_admin_group: sso.affiliate_admin_group.clone(),
            backup,
        })
    }
}

/// XML text: `&`, `<`, `>`, `"` and `'` escaped.
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// BizTalk Server's `Configuration.exe /S` file for the ESSO feature: Create where the settings carry
/// the new secret's backup (only Create's do), Join otherwise.
pub(super) fn biztalk(s: &Settings) -> String {
    let create = match &s.backup {
        Some(b) => format!(
            "      <Answer Value=\"Create\" Selected=\"Yes\">\n\
        <NTCredential ID=\"SSOAdminGroup\"><NTAccount>{}</NTAccount></NTCredential>\n\
        <NTCredential ID=\"SSOAffiliateAdminGroup\"><NTAccount>{}</NTAccount></NTCredential>\n\
        <FILE ID=\"SSO_ID_BACKUP_SECRET_FILE\"><Value>{}</Value></FILE>\n\
        <Name ID=\"SSO_ID_BACKUP_SECRET_PASSWORD\"><Value>{}</Value></Name>\n\
        <Name ID=\"SSO_ID_BACKUP_SECRET_PASSWORD_CONFIRM\"><Value>{}</Value></Name>\n\
        <Name ID=\"SSO_ID_BACKUP_SECRET_REMINDER\"><Value>{}</Value></Name>\n\
      </Answer>\n\
      <Answer Value=\"Join\" />\n",
            xml(&s.admin_group),
            xml(&s.affiliate_admin_group),
            xml(&b.file),
            xml(&b.password),
            xml(&b.password),
            xml(&b.reminder),
        ),
        _ => {
            "      <Answer Value=\"Create\" />\n      <Answer Value=\"Join\" Selected=\"Yes\" />\n"
                .to_string()
        }
    };
    format!(
        "<Configuration>\n\
  <Feature Name=\"SSOServer,Engine\" DisplayName=\"Enterprise Single Sign-On\" ConfigByDefault=\"true\">\n\
    <Question ID=\"IsSecretServer\" Answers=\"Create,Join\" Default=\"Create\">\n\
{create}\
    </Question>\n\
    <NTService ID=\"ENTSSO\">\n\
      <UserName>{}</UserName>\n\
      <Domain>{}</Domain>\n\
      <Password>{}</Password>\n\
    </NTService>\n\
    <SQL ID=\"SSO_DB_ID\">\n\
      <Server>{}</Server>\n\
      <Database>{}</Database>\n\
      <WindowsSecurity Editable=\"no\">yes</WindowsSecurity>\n\
    </SQL>\n\
  </Feature>\n\
</Configuration>\n",
        xml(&s.user),
        xml(&s.domain),
        xml(&s.password),
        xml(&s.database_server),
        xml(&s.database),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &std::path::Path) -> SsoSettings {
        let file = dir.join("entsso-password");
        std::fs::write(&file, "\u{feff}p<&>'\"w\r\n").unwrap();
        SsoSettings {
            service_account: Some(r"CORP\svc-entsso".into()),
            service_password_file: Some(file),
            database_server: Some("sqldev01".into()),
            database: "SSODB".into(),
            admin_group: "SSO Administrators".into(),
            affiliate_admin_group: "SSO Affiliate Administrators".into(),
        }
    }

    #[test]
    fn join_and_create_are_answered_and_secrets_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let sso = settings(dir.path());
        let join = Settings::read(&sso, SsoConfigure::Join, None).unwrap();
        let text = biztalk(&join);
        assert!(
            text.contains("<Answer Value=\"Join\" Selected=\"Yes\" />"),
            "{text}"
        );
        assert!(text.contains("<Answer Value=\"Create\" />"), "{text}");
        assert!(
            text.contains("<Password>p&lt;&amp;&gt;&apos;&quot;w</Password>"),
            "{text}"
        );
        assert!(text.contains("<Domain>CORP</Domain>"), "{text}");
        assert!(
            text.contains("<Feature Name=\"SSOServer,Engine\""),
            "{text}"
        );
        assert!(text.contains("<SQL ID=\"SSO_DB_ID\">"), "{text}");
        assert!(!text.contains("SSO_ID_BACKUP_SECRET_PASSWORD"), "{text}");

        let backup = NewSecretBackup {
            file: r"C:\s\secret-backups\new.bak".into(),
            password: "backup-pw-1".into(),
            reminder: "ssofleet backup".into(),
        };
        let create = Settings::read(&sso, SsoConfigure::Create, Some(backup)).unwrap();
        let text = biztalk(&create);
        assert!(
            text.contains("<Answer Value=\"Create\" Selected=\"Yes\">"),
            "{text}"
        );
        assert!(
            text.contains(
                "<Name ID=\"SSO_ID_BACKUP_SECRET_PASSWORD\"><Value>backup-pw-1</Value></Name>"
            ),
            "{text}"
        );
        assert!(text.contains("<FILE ID=\"SSO_ID_BACKUP_SECRET_FILE\"><Value>C:\\s\\secret-backups\\new.bak</Value></FILE>"), "{text}");
        assert!(text.contains("<NTCredential ID=\"SSOAdminGroup\"><NTAccount>SSO Administrators</NTAccount></NTCredential>"), "{text}");
        assert!(
            Settings::read(&sso, SsoConfigure::Create, None)
                .err()
                .is_some_and(|e| e.contains("backup_password_file"))
        );
    }

    #[test]
    fn missing_settings_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut sso = settings(dir.path());
        assert_eq!(Settings::check(&sso), Ok(()));
        let e = Settings::check(&SsoSettings::default()).unwrap_err();
        assert!(
            e.contains("lacks service_account, service_password_file, database_server"),
            "{e}"
        );
        sso.database_server = None;
        let e = Settings::read(&sso, SsoConfigure::Join, None)
            .err()
            .unwrap();
        assert!(e.contains("[sso] database_server"), "{e}");
        sso.service_account = Some("svc-entsso".into());
        let e = Settings::read(&sso, SsoConfigure::Join, None)
            .err()
            .unwrap();
        assert!(e.contains("must be DOMAIN\\user"), "{e}");
    }
}
