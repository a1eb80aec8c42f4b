//! How each install step of a plan installs (ESSO.md, "Upgrading an SSO server — what Microsoft
//! supports"), decided once, here, when the plan is made: the plan stores the mode, the assignment
//! carries it, `fleetctl plan` shows it with its reason.
//!
//! Which installs may be silent is `crate::install`'s rule, shared with the agent: a fresh
//! BizTalk install and Host Integration Server 2020 (with the customer's configuration) are documented
//! as silent; a BizTalk upgrade and ESSO's own setup are not; a customer's own `[actions.install_sso]`
//! command is the customer's method. An environment may always choose attended.

use crate::install::{Overrides, unattended};

use crate::inventory::InstallMode;

use super::Reported;

pub use crate::install::NO_SILENT_UPGRADE;

/// Why an install is attended where the environment says so (nothing more to explain).
const ENVIRONMENT_ATTENDED: &str =
    "the environment installs attended (install = \"attended\", the default)";

/// The action name an agent reports in `Facts.overridden_actions` when it installs with its own command.
pub const INSTALL_OVERRIDE: &str = "install_sso";
/// … and when it configures ESSO with its own command.
pub const CONFIGURE_OVERRIDE: &str = "configure_sso";

/// How one install step installs, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StepInstall {
    pub mode: InstallMode,
    pub reason: String,
}

impl StepInstall {
    /// Why the plan made this install attended although its environment asked for unattended: what
    /// the operator at an attended wait should be told besides the instruction.
    pub fn attended_because(&self) -> Option<&str> {
        (self.mode == InstallMode::Attended && self.reason != ENVIRONMENT_ATTENDED)
            .then_some(self.reason.as_str())
    }
}

/// The mode of an install on a node: `environment` is the inventory's `install`, `node` what the node
/// reported (`None`: not attached, its facts unknown), `installer` the installer of the node's role.
pub fn decide(environment: InstallMode, node: Option<&Reported>, installer: &str) -> StepInstall {
    let (mode, reason) = match (environment, node) {
        (InstallMode::Attended, _) => (InstallMode::Attended, ENVIRONMENT_ATTENDED),
        (InstallMode::Unattended, None) => (
            InstallMode::Attended,
            "facts unknown: the node has not reported (not attached), so it cannot be told whether an unattended install is supported there",
        ),
        (InstallMode::Unattended, Some(node)) => {
            let overrides = Overrides {
                install: node.install_override,
                configure: node.configure_override,
            };
            match unattended(installer, node.version.is_some(), overrides) {
                Ok(why) => (InstallMode::Unattended, why),
                Err(why) => (InstallMode::Attended, why),
            }
        }
    };
    StepInstall {
        mode,
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETUP: &str = r"D:\media\BizTalk\Setup.exe";
    const MSI: &str = r"D:\media\HIS\HIS2020_Server_EN.MSI";

    fn on(version: Option<&str>, install_override: bool) -> Reported {
        Reported {
            version: version.map(str::to_string),
            install_override,
            // Host Integration Server is configured by the customer's command.
            configure_override: true,
        }
    }

    fn mode(env: InstallMode, node: Option<&Reported>, installer: &str) -> (InstallMode, String) {
        let d = decide(env, node, installer);
        (d.mode, d.reason)
    }

    #[test]
    fn an_attended_environment_is_attended_whatever_the_node() {
        for node in [
            None,
            Some(on(Some("3.0.6"), true)),
            Some(on(None, false)),
            Some(on(Some("3.0.6"), false)),
        ] {
            for installer in [SETUP, MSI] {
                let (m, why) = mode(InstallMode::Attended, node.as_ref(), installer);
                assert_eq!(m, InstallMode::Attended, "{node:?} {installer}");
                assert!(why.contains("install = \"attended\""), "{why}");
            }
        }
    }

    #[test]
    fn unattended_where_microsoft_or_the_customer_supports_it() {
        let u = InstallMode::Unattended;
        // The customer's own method, even for a BizTalk upgrade.
        let (m, why) = mode(u, Some(&on(Some("3.0.6"), true)), SETUP);
        assert_eq!(m, InstallMode::Unattended);
        assert!(why.contains("[actions.install_sso]"), "{why}");
        // A fresh install: no ESSO on the node.
        let (m, why) = mode(u, Some(&on(None, false)), SETUP);
        assert_eq!(m, InstallMode::Unattended);
        assert!(why.starts_with("a fresh install"), "{why}");
        // Host Integration Server 2020's in-place upgrade (the extension in any case).
        let (m, why) = mode(u, Some(&on(Some("3.0.6"), false)), MSI);
        assert_eq!(m, InstallMode::Unattended);
        assert!(why.contains("msiexec /i"), "{why}");
    }

    #[test]
    fn a_biztalk_setup_upgrade_is_attended_with_microsofts_words() {
        let (m, why) = mode(
            InstallMode::Unattended,
            Some(&on(Some("3.0.6"), false)),
            SETUP,
        );
        assert_eq!(m, InstallMode::Attended);
        assert_eq!(why, NO_SILENT_UPGRADE);
        for quote in [
            "The Quiet flag cannot be specified for an upgrade",
            "Silent Upgrade is not supported",
            "configure [actions.install_sso] on the agent",
        ] {
            assert!(why.contains(quote), "{quote}");
        }
        // A version that is not one is still an existing ESSO: not a fresh install.
        let (m, _) = mode(
            InstallMode::Unattended,
            Some(&on(Some("3.x"), false)),
            SETUP,
        );
        assert_eq!(m, InstallMode::Attended);
    }

    #[test]
    fn facts_unknown_is_attended() {
        let (m, why) = mode(InstallMode::Unattended, None, MSI);
        assert_eq!(m, InstallMode::Attended);
        assert!(why.starts_with("facts unknown"), "{why}");
    }

    #[test]
    fn an_attended_wait_explains_only_what_the_inventory_did_not_choose() {
        let node = on(Some("3.0.6"), false);
        let chosen = decide(InstallMode::Attended, Some(&node), SETUP);
        assert_eq!(chosen.attended_because(), None);
        let forced = decide(InstallMode::Unattended, Some(&node), SETUP);
        assert_eq!(forced.attended_because(), Some(NO_SILENT_UPGRADE));
        let unattended = decide(InstallMode::Unattended, Some(&on(None, false)), SETUP);
        assert_eq!(unattended.attended_because(), None);
    }
}
