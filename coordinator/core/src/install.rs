//! Which ESSO installs may run unattended, as Microsoft documents them (ESSO.md, "Upgrading an SSO
//! server — what Microsoft supports"). One rule for both sides: the planner decides each install
//! step's mode with it, and the agent refuses what it refuses, whatever it is sent.

/// The kinds of installer media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallerKind {
    /// A Windows Installer package (Host Integration Server ships `HIS20xx_Server_EN.msi`).
    Msi,
    /// ESSO's own setup on the BizTalk media (`\Platform\SSO\Setup.exe`, `\Platform\SSO64\` for
    /// BizTalk 2013 x64; KB 2908466): what a standalone master secret server upgrades from.
    EssoSetup,
    /// BizTalk Server's `setup.exe`.
    Setup,
}

impl InstallerKind {
    pub fn of(installer: &str) -> Self {
        let path = installer.trim().to_ascii_lowercase().replace('/', "\\");
        if path.ends_with(".msi") {
            InstallerKind::Msi
        } else if path.contains("\\platform\\sso\\") || path.contains("\\platform\\sso64\\") {
            InstallerKind::EssoSetup
        } else {
            InstallerKind::Setup
        }
    }
}

/// Which actions the node's agent runs as its own configured commands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `[actions.install_sso]`: the customer's own install method.
    pub install: bool,
    /// `[actions.configure_sso]`: the customer's own configuration after an install.
    pub configure: bool,
}

/// Why a BizTalk setup upgrade is not run unattended, in Microsoft's words.
pub const NO_SILENT_UPGRADE: &str = "a BizTalk Server upgrade cannot be silent: \"The Quiet flag \
cannot be specified for an upgrade\" (installation guide, Appendix A), \"Silent Upgrade is not \
supported\" (upgrade guides 2016, 2020); configure [actions.install_sso] on the agent to use your own \
unattended method";

/// Why ESSO's own setup is not run unattended.
pub const NO_SILENT_ESSO_SETUP: &str = "ESSO's own setup (\\Platform\\SSO\\Setup.exe: Autorun, \
\"Microsoft Enterprise Single Sign-On\", Summary, Upgrade; KB 2908466) has no documented silent \
switches; configure [actions.install_sso] on the agent to use your own unattended method";

/// Why Host Integration Server is not installed unattended by the built-in actions alone.
pub const NO_HIS_CONFIGURATION: &str = "Host Integration Server must be configured after its install \
(ConfigurationWizard.exe /APPLY <file>), and that file's layout is not documented: configure \
[actions.configure_sso] on the agent to apply the file you made with the wizard";

/// Whether an install may run unattended: `Ok` says why it may, `Err` quotes why not. `esso_present`:
/// ESSO is installed on the node (an upgrade, not a fresh install).
pub fn unattended(
    installer: &str,
    esso_present: bool,
    overrides: Overrides,
) -> Result<&'static str, &'static str> {
    if overrides.install {
        return Ok("the agent runs its own [actions.install_sso] command");
    }
    match InstallerKind::of(installer) {
        InstallerKind::EssoSetup => Err(NO_SILENT_ESSO_SETUP),
        InstallerKind::Setup if esso_present => Err(NO_SILENT_UPGRADE),
        InstallerKind::Setup => Ok(
            "a fresh install (no ESSO on the node), which Microsoft documents as silent (setup.exe /quiet, then Configuration.exe /S)",
        ),
        InstallerKind::Msi if !overrides.configure => Err(NO_HIS_CONFIGURATION),
        InstallerKind::Msi => Ok(
            "Host Integration Server 2020's install or in-place upgrade, which Microsoft documents as silent (msiexec /i … /quiet), then the agent's [actions.configure_sso]",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETUP: &str = r"D:\media\BizTalk\Setup.exe";
    const ESSO: &str = r"D:\media\BizTalk\Platform\SSO\Setup.exe";
    const MSI: &str = r"D:\media\HIS\HIS2020_Server_EN.MSI";

    #[test]
    fn kinds_of_media() {
        assert_eq!(InstallerKind::of(SETUP), InstallerKind::Setup);
        assert_eq!(InstallerKind::of(ESSO), InstallerKind::EssoSetup);
        assert_eq!(
            InstallerKind::of("/m/platform/SSO64/setup.exe"),
            InstallerKind::EssoSetup
        );
        assert_eq!(InstallerKind::of(MSI), InstallerKind::Msi);
    }

    /// Appendix A: "The Quiet flag cannot be specified for an upgrade"; fresh installs and HIS 2020
    /// (with its configuration) are documented as silent; ESSO's own setup has no silent switches.
    #[test]
    fn only_documented_installs_are_unattended() {
        let none = Overrides::default();
        assert_eq!(unattended(SETUP, true, none), Err(NO_SILENT_UPGRADE));
        assert!(NO_SILENT_UPGRADE.contains("The Quiet flag cannot be specified for an upgrade"));
        assert!(unattended(SETUP, false, none).is_ok_and(|why| why.starts_with("a fresh install")));
        assert_eq!(unattended(ESSO, true, none), Err(NO_SILENT_ESSO_SETUP));
        assert_eq!(unattended(ESSO, false, none), Err(NO_SILENT_ESSO_SETUP));
        assert_eq!(unattended(MSI, true, none), Err(NO_HIS_CONFIGURATION));
        let configure = Overrides {
            configure: true,
            ..none
        };
        assert!(unattended(MSI, true, configure).is_ok_and(|why| why.contains("msiexec")));
        let install = Overrides {
            install: true,
            ..none
        };
        for installer in [SETUP, ESSO, MSI] {
            assert!(
                unattended(installer, true, install)
                    .is_ok_and(|why| why.contains("[actions.install_sso]"))
            );
        }
    }
}
