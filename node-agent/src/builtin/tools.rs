//! Where the Windows tools are. On Windows the defaults come from the environment (`%SystemRoot%`,
//! `%CommonProgramFiles%`); an optional `[tools]` table in `agent.toml` overrides each one. Elsewhere a
//! tool exists only when `[tools]` names it (the integration tests point them at fixture scripts).
//! `sc`, `reg` and `boot_id` are stand-ins for the service controller, the registry and the boot where
//! Windows' APIs do not exist: on Windows the agent uses the APIs and has no such tools (`system`,
//! `host`).

use std::path::{Path, PathBuf};

use crate::catalogue::ActionName;

/// The Windows service of Enterprise Single Sign-On.
pub const ENTSSO_SERVICE: &str = "ENTSSO";

/// The Host Account Cache service's name. SNA Server's KB Q240762 names it "SNA Host Account Cache
/// (snadatabase)"; to confirm on Host Integration Server 2000, hence `[tools] host_account_cache_service`.
pub const DEFAULT_HOST_ACCOUNT_CACHE_SERVICE: &str = "SnaDatabase";

/// ESSO's .NET interop assembly, which exposes `ISSOConfigSS` (ESSO.md, "COM, from PowerShell through
/// Microsoft.EnterpriseSingleSignOn.Interop.dll"); in the ESSO folder: to confirm per version.
pub const ESSO_INTEROP_DLL: &str = "Microsoft.EnterpriseSingleSignOn.Interop.dll";

/// Where `copy_migration_utility` puts `hissomig.exe` (the HIS docs: `c:\hostsec\`).
pub const DEFAULT_MIGRATION_DIR: &str = r"C:\hostsec";

/// One tool a built-in action may drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Sc,
    Reg,
    Shutdown,
    Msiexec,
    Powershell,
    Wevtutil,
    Ssomanage,
    /// BizTalk Server's `Configuration.exe` (`/S <file>`).
    BiztalkConfiguration,

    Udbkey,
    Hissomig,
}

impl Tool {
    /// The key in `[tools]`.
    pub fn key(self) -> &'static str {
        match self {
            Tool::Sc => "sc",
            Tool::Reg => "reg",
            Tool::Shutdown => "shutdown",
            Tool::Msiexec => "msiexec",
            Tool::Powershell => "powershell",
            Tool::Wevtutil => "wevtutil",
            Tool::Ssomanage => "ssomanage",
            Tool::BiztalkConfiguration => "biztalk_configuration",
            Tool::Udbkey => "udbkey",
            Tool::Hissomig => "hissomig",
        }
    }

    pub fn exe(self) -> String {
        match self {
            Tool::BiztalkConfiguration => "Configuration.exe".into(),
            _ => format!("{}.exe", self.key()),
        }
    }
}

/// What `[tools]` says, before defaults (paths already made absolute against the config file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolOverrides {
    pub sc: Option<PathBuf>,
    pub reg: Option<PathBuf>,
    /// Prints the boot id (`host::boot_id`).
    pub boot_id: Option<PathBuf>,
    pub shutdown: Option<PathBuf>,
    pub msiexec: Option<PathBuf>,
    pub powershell: Option<PathBuf>,
    pub wevtutil: Option<PathBuf>,
    pub ssomanage: Option<PathBuf>,
    pub biztalk_configuration: Option<PathBuf>,
    pub udbkey: Option<PathBuf>,
    pub hissomig: Option<PathBuf>,
    /// The ESSO folder holding `ssomanage.exe` and ESSO's interop assembly.
    pub esso_dir: Option<PathBuf>,
    pub migration_dir: Option<PathBuf>,
    pub host_account_cache_service: Option<String>,
}

/// The tools, resolved. `None`: this platform does not have the tool and `[tools]` does not name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    pub sc: Option<PathBuf>,
    pub reg: Option<PathBuf>,
    /// Prints the boot id (`host::boot_id`).
    pub boot_id: Option<PathBuf>,
    pub shutdown: Option<PathBuf>,
    pub msiexec: Option<PathBuf>,
    pub powershell: Option<PathBuf>,
    pub wevtutil: Option<PathBuf>,
    pub ssomanage: Option<PathBuf>,
    pub biztalk_configuration: Option<PathBuf>,
    pub udbkey: Option<PathBuf>,
    pub hissomig: Option<PathBuf>,
    pub migration_dir: Option<PathBuf>,
    pub host_account_cache_service: String,
    /// `Microsoft.EnterpriseSingleSignOn.Interop.dll` in the ESSO folder (ISSOConfigSS for the backup).
    pub esso_interop: Option<PathBuf>,
}

impl Default for Tools {
    fn default() -> Self {
        Self::resolve(&ToolOverrides::default(), &|_| None, false)
    }
}

impl Tools {
    /// The tools of the platform this agent runs on.
    pub fn for_this_platform(overrides: &ToolOverrides) -> Self {
        Self::resolve(
            overrides,
            &|name| std::env::var(name).ok().filter(|v| !v.is_empty()),
            cfg!(windows),
        )
    }

    /// Applies the overrides over the defaults that `env` gives on Windows (`windows`), or over nothing.
    pub fn resolve(o: &ToolOverrides, env: &dyn Fn(&str) -> Option<String>, windows: bool) -> Self {
        let system32 = |exe: &str| {
            windows.then(|| {
                let root = env("SystemRoot").unwrap_or_else(|| r"C:\Windows".into());
                PathBuf::from(win_join(&win_join(&root, "System32"), exe))
            })
        };
        // A 64-bit agent's %CommonProgramFiles% is the 64-bit folder; %CommonProgramW6432% names it
        // even from a 32-bit process. ESSO installs its 64-bit tools there (32-bit ones in a `Win32`
        // subfolder): to confirm per product version, hence `[tools] esso_dir`.
        let esso_dir = o.esso_dir.clone().or_else(|| {
            windows.then(|| {
                let common = env("CommonProgramW6432")
                    .or_else(|| env("CommonProgramFiles"))
                    .unwrap_or_else(|| r"C:\Program Files\Common Files".into());
                PathBuf::from(win_join(&common, "Enterprise Single Sign-On"))
            })
        });
        let in_esso = |exe: &str| esso_dir.as_ref().map(|d| join(d, exe));
        let migration_dir = o
            .migration_dir
            .clone()
            .or_else(|| windows.then(|| PathBuf::from(DEFAULT_MIGRATION_DIR)));
        Self {
            // Stand-ins only: Windows' own state is read through its APIs.
            sc: o.sc.clone(),
            reg: o.reg.clone(),
            boot_id: o.boot_id.clone(),
            shutdown: o.shutdown.clone().or_else(|| system32("shutdown.exe")),
            msiexec: o.msiexec.clone().or_else(|| system32("msiexec.exe")),
            powershell: o
                .powershell
                .clone()
                .or_else(|| system32(r"WindowsPowerShell\v1.0\powershell.exe")),
            wevtutil: o.wevtutil.clone().or_else(|| system32("wevtutil.exe")),
            ssomanage: o.ssomanage.clone().or_else(|| in_esso("ssomanage.exe")),
            // Found in the product's install folder (its registry InstallPath) when not named here.
            biztalk_configuration: o.biztalk_configuration.clone(),
            esso_interop: in_esso(ESSO_INTEROP_DLL),
            // In the Host Integration Server 2000 installation directory, which has no known default.
            udbkey: o.udbkey.clone(),
            // Where copy_migration_utility puts it.
            hissomig: o
                .hissomig
                .clone()
                .or_else(|| migration_dir.as_ref().map(|d| join(d, "hissomig.exe"))),
            migration_dir,
            host_account_cache_service: o
                .host_account_cache_service
                .clone()
                .unwrap_or_else(|| DEFAULT_HOST_ACCOUNT_CACHE_SERVICE.into()),
        }
    }

    pub fn get(&self, tool: Tool) -> Option<&Path> {
        match tool {
            Tool::Sc => self.sc.as_deref(),
            Tool::Reg => self.reg.as_deref(),
            Tool::Shutdown => self.shutdown.as_deref(),
            Tool::Msiexec => self.msiexec.as_deref(),
            Tool::Powershell => self.powershell.as_deref(),
            Tool::Wevtutil => self.wevtutil.as_deref(),
            Tool::Ssomanage => self.ssomanage.as_deref(),
            Tool::BiztalkConfiguration => self.biztalk_configuration.as_deref(),
            Tool::Udbkey => self.udbkey.as_deref(),
            Tool::Hissomig => self.hissomig.as_deref(),
        }
    }

    /// The tool, or the reason `action` cannot run without it.
    pub fn require(&self, action: ActionName, tool: Tool) -> Result<PathBuf, String> {
        self.get(tool)
            .map(Path::to_path_buf)
            .ok_or_else(|| missing_tool(action, tool, cfg!(windows)))
    }
}

/// The message for a tool this platform does not have.
pub fn missing_tool(action: ActionName, tool: Tool, windows: bool) -> String {
    let exe = tool.exe();
    let key = tool.key();
    if windows {
        format!(
            "the built-in {action} drives {exe}, whose location this agent does not know: set [tools] {key} in agent.toml or configure [actions.{action}]"
        )
    } else {
        format!(
            "the built-in {action} drives {exe}, which this platform does not have: set [tools] {key} in agent.toml or configure [actions.{action}]"
        )
    }
}

/// Joins a Windows directory and a name with a backslash (whatever platform builds the string).
pub fn win_join(dir: &str, name: &str) -> String {
    if dir.ends_with(['\\', '/']) {
        format!("{dir}{name}")
    } else {
        format!("{dir}\\{name}")
    }
}

/// Joins a directory and a file name with the directory's own separator: a Windows path (`C:\…`,
/// `\\server\share`) keeps its backslashes on any platform, a POSIX path gets a slash.
pub fn join(dir: &Path, name: &str) -> PathBuf {
    let text = dir.to_string_lossy();
    if text.contains('\\') && !text.contains('/') {
        PathBuf::from(win_join(&text, name))
    } else {
        dir.join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SystemRoot" => Some(r"D:\WINDOWS".into()),
            "CommonProgramFiles" => Some(r"D:\Program Files\Common Files".into()),
            _ => None,
        }
    }

    #[test]
    fn windows_defaults_come_from_the_environment() {
        let t = Tools::resolve(&ToolOverrides::default(), &env, true);
        // The registry and services are read through the APIs: no sc.exe or reg.exe.
        assert_eq!((t.sc.as_ref(), t.reg.as_ref()), (None, None));
        assert_eq!(
            t.powershell,
            Some(PathBuf::from(
                r"D:\WINDOWS\System32\WindowsPowerShell\v1.0\powershell.exe"
            ))
        );
        assert_eq!(
            t.wevtutil,
            Some(PathBuf::from(r"D:\WINDOWS\System32\wevtutil.exe"))
        );
        assert_eq!(
            t.esso_interop,
            Some(PathBuf::from(
                r"D:\Program Files\Common Files\Enterprise Single Sign-On\Microsoft.EnterpriseSingleSignOn.Interop.dll"
            ))
        );
        assert_eq!(
            t.msiexec,
            Some(PathBuf::from(r"D:\WINDOWS\System32\msiexec.exe"))
        );
        assert_eq!(
            t.ssomanage,
            Some(PathBuf::from(
                r"D:\Program Files\Common Files\Enterprise Single Sign-On\ssomanage.exe"
            ))
        );
        assert_eq!(t.hissomig, Some(PathBuf::from(r"C:\hostsec\hissomig.exe")));
        assert_eq!(t.udbkey, None);
        assert_eq!(t.host_account_cache_service, "SnaDatabase");
        // The 64-bit common files folder wins over a 32-bit process's %CommonProgramFiles%.
        let t = Tools::resolve(
            &ToolOverrides::default(),
            &|n| (n == "CommonProgramW6432").then(|| r"C:\Program Files\Common Files".into()),
            true,
        );
        assert_eq!(
            t.ssomanage,
            Some(PathBuf::from(
                r"C:\Program Files\Common Files\Enterprise Single Sign-On\ssomanage.exe"
            ))
        );
        assert_eq!(
            t.shutdown,
            Some(PathBuf::from(r"C:\Windows\System32\shutdown.exe"))
        );
    }

    #[test]
    fn overrides_win_and_other_platforms_have_only_what_is_named() {
        let o = ToolOverrides {
            sc: Some("/opt/fake/sc".into()),
            esso_dir: Some("/opt/esso".into()),
            host_account_cache_service: Some("SnaHac".into()),
            ..Default::default()
        };
        let t = Tools::resolve(&o, &env, false);
        assert_eq!(t.sc, Some(PathBuf::from("/opt/fake/sc")));
        assert_eq!(t.reg, None);
        assert_eq!(t.ssomanage, Some(PathBuf::from("/opt/esso/ssomanage.exe")));
        assert_eq!(t.host_account_cache_service, "SnaHac");
        let e = Tools::default()
            .require(ActionName::VerifySso, Tool::Sc)
            .unwrap_err();
        if !cfg!(windows) {
            assert_eq!(
                e,
                "the built-in verify_sso drives sc.exe, which this platform does not have: set [tools] sc in agent.toml or configure [actions.verify_sso]"
            );
        }
    }

    #[test]
    fn joins_keep_the_directory_style() {
        assert_eq!(
            join(Path::new(r"C:\hostsec"), "x.exe"),
            PathBuf::from(r"C:\hostsec\x.exe")
        );
        assert_eq!(join(Path::new("/tmp/a"), "x"), PathBuf::from("/tmp/a/x"));
        assert_eq!(win_join(r"\\srv\share\", "f"), r"\\srv\share\f");
    }
}
