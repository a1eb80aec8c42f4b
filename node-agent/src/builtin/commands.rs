//! The command lines of the Windows tools, as pure functions: program and arguments (never a shell
//! string), and the text a tool reads on standard input. Secrets go only into the standard input text.

use std::path::{Path, PathBuf};

use super::tools::win_join;
use crate::esso::InstallerKind;

/// A program and its arguments; run without a shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl Invocation {
    pub fn new(program: &Path, args: &[&str]) -> Self {
        Self {
            program: program.to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// The command line as it may be shown (nothing secret is ever an argument).
    pub fn display(&self) -> String {
        std::iter::once(self.program.display().to_string())
            .chain(self.args.iter().map(|a| {
                if a.contains(' ') {
                    format!("\"{a}\"")
                } else {
                    a.clone()
                }
            }))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// An exit code as messages show it.
pub fn code_text(code: Option<i32>) -> String {
    code.map_or_else(|| "none".to_string(), |c| c.to_string())
}

pub fn ssomanage_displaydb(ssomanage: &Path) -> Invocation {
    Invocation::new(ssomanage, &["-displaydb"])
}

/// A PowerShell script shipped inside the agent, run from its file with named arguments; whatever is
/// secret goes to its standard input.
pub fn powershell_script(powershell: &Path, script: &Path, args: &[(&str, &str)]) -> Invocation {
    let script = script.display().to_string();
    let mut all = vec![
        "-NoProfile",
        "-NonInteractive",
        "-ExecutionPolicy",
        "Bypass",
        "-File",
        &script,
    ];
    for (name, value) in args {
        all.extend([*name, *value]);
    }
    Invocation::new(powershell, &all)
}

/// ESSO's events (source ENTSSO) in the Application log since `since` (an ISO 8601 UTC time), newest
/// first, as XML: `wevtutil qe Application /q:<XPath> /rd:true /f:xml /c:<count>` (ESSO.md, "Verifying").
pub fn wevtutil_esso_events(wevtutil: &Path, since: &str, count: u32) -> Invocation {
    let query =
        format!("*[System[Provider[@Name='ENTSSO'] and TimeCreated[@SystemTime>='{since}']]]");
    Invocation::new(
        wevtutil,
        &[
            "qe",
            "Application",
            &format!("/q:{query}"),
            "/rd:true",
            "/f:xml",
            &format!("/c:{count}"),
        ],
    )
}

/// BizTalk Server's configuration, silent: `Configuration.exe /S <file> /L <log>` (Appendix A).
pub fn biztalk_configure(configuration: &Path, file: &str, log: &str) -> Invocation {
    Invocation::new(configuration, &["/S", file, "/L", log])
}

/// BizTalk's features other than ESSO for an unattended install (appendix-a-silent-installation.md).
pub const BIZTALK_FEATURES: &str = "WMI,BizTalk,AdditionalApps";

/// The installer's command line: `msiexec /i <msi> /quiet /norestart /L*v <log>` for an MSI (no ESSO
/// feature switch: the HIS package's feature names are to confirm, so an ESSO already present is left
/// to the package's own upgrade logic), `setup.exe /quiet /norestart /L <log> /ADDLOCAL <features>`
/// for setup.exe, the ESSO feature appended only when `esso_feature` is `Some`.
pub fn install(
    msiexec: Option<&Path>,
    installer: &str,
    log: &str,
    base_features: &str,
    esso_feature: Option<&str>,
) -> Result<Invocation, String> {
    match InstallerKind::of(installer) {
        InstallerKind::Msi => {
            let msiexec = msiexec.ok_or("an .msi installer needs msiexec.exe")?;
            Ok(Invocation::new(
                msiexec,
                &["/i", installer, "/quiet", "/norestart", "/L*v", log],
            ))
        }
        InstallerKind::EssoSetup => Err(
            "ESSO's own setup has no documented silent switches: it is installed attended".into(),
        ),
        InstallerKind::Setup => {
            let features = base_features
                .split(',')
                .map(str::trim)
                .filter(|f| !f.is_empty())
                .filter(|f| {
                    !f.eq_ignore_ascii_case("SSOServer") && !f.eq_ignore_ascii_case("SSOAdmin")
                })
                .chain(esso_feature)
                .collect::<Vec<_>>()
                .join(",");
            Ok(Invocation::new(
                Path::new(installer),
                &["/quiet", "/norestart", "/L", log, "/ADDLOCAL", &features],
            ))
        }
    }
}

/// The installer's log: `<state_dir>\logs\install-<run>-<node>.log` (a retry in the same run
/// overwrites it: the newest attempt's log is the one worth reading).
pub fn install_log(state_dir: &Path, run_id: &str, node: &str) -> PathBuf {
    let name = format!("install-{}-{}.log", file_safe(run_id), file_safe(node));
    super::tools::join(&super::tools::join(state_dir, "logs"), &name)
}

/// `udbkey /showkey`; the agent writes its standard output to the key file itself (no shell).
pub fn udbkey_showkey(udbkey: &Path) -> Invocation {
    Invocation::new(udbkey, &["/showkey"])
}

/// Where the host security data is exported from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportSource {
    /// Host Integration Server 2000: the primary domain controller holding the host account cache.
    Server(String),
    /// SNA Server 4.0: the host security database file.
    DbFile(String),
}

pub fn hissomig_export(
    hissomig: &Path,
    source: &ExportSource,
    xml: &str,
    log_dir: Option<&str>,
) -> Invocation {
    let mut args = match source {
        ExportSource::Server(server) => vec!["-export", "-servername", server],
        ExportSource::DbFile(file) => vec!["-export", "-dbfile", file],
    };
    args.extend(["-output", xml]);
    if let Some(dir) = log_dir {
        args.extend(["-log", dir]);
    }
    Invocation::new(hissomig, &args)
}

/// `hissomig -import [-key <file>] -input <xml>`; the key only for Host Integration Server 2000 (SNA
/// Server 4.0 has none: whether its import needs another switch is to confirm).
pub fn hissomig_import(
    hissomig: &Path,
    key_file: Option<&str>,
    xml: &str,
    log_dir: Option<&str>,
) -> Invocation {
    let mut args = vec!["-import"];
    if let Some(key) = key_file {
        args.extend(["-key", key]);
    }
    args.extend(["-input", xml]);
    if let Some(dir) = log_dir {
        args.extend(["-log", dir]);
    }
    Invocation::new(hissomig, &args)
}

/// `shutdown /r /t <secs> /c <comment> /d p:4:2`: a planned restart, reason "Application:
/// Installation" (major 4, minor 2), so that the event log says why the server restarted.
pub fn shutdown_restart(shutdown: &Path, delay_secs: u32, comment: &str) -> Invocation {
    // shutdown.exe refuses a comment longer than 512 characters.
    let comment: String = comment.chars().take(512).collect();
    Invocation::new(
        shutdown,
        &[
            "/r",
            "/t",
            &delay_secs.to_string(),
            "/c",
            &comment,
            "/d",
            "p:4:2",
        ],
    )
}

/// The installer media's root: the folder holding the installer (`D:\media\HIS\setup.exe` →
/// `D:\media\HIS`), in the installer path's own style.
pub fn media_root(installer: &str) -> Option<String> {
    let cut = installer.rfind(['\\', '/'])?;
    let root = &installer[..cut];
    if root.is_empty() || root.ends_with(':') {
        // `D:\setup.exe`: the drive's root.
        Some(installer[..=cut].to_string())
    } else {
        Some(root.to_string())
    }
}

/// `<media>\support\utilities\hissomig.exe`, in the media path's style. The docs also spell the tool
/// `hisssomig`; the caller tries both names.
pub fn migration_utility_on_media(media_root: &str, file_name: &str) -> String {
    let sep = if media_root.contains('\\') || !media_root.contains('/') {
        '\\'
    } else {
        '/'
    };
    let root = media_root.trim_end_matches(['\\', '/']);
    format!("{root}{sep}support{sep}utilities{sep}{file_name}")
}

/// A file in `dir` (a Windows or POSIX path) named by the run: the key file and the migration XML.
pub fn run_file(dir: &str, stem: &str, environment: &str, run_id: &str, ext: &str) -> String {
    let name = format!(
        "ssofleet-{stem}-{}-{}.{ext}",
        file_safe(environment),
        file_safe(run_id)
    );
    if dir.contains('\\') && !dir.contains('/') {
        win_join(dir, &name)
    } else if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// A value as part of a file name: what is not a letter, digit, `-`, `_` or `.` becomes `_`.
pub fn file_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(i: &Invocation) -> Vec<&str> {
        i.args.iter().map(String::as_str).collect()
    }

    #[test]
    fn esso_tools_and_configuration() {
        assert_eq!(args(&ssomanage_displaydb(Path::new("m"))), ["-displaydb"]);
        let ps = powershell_script(
            Path::new("powershell.exe"),
            Path::new(r"C:\s\scripts\backup-secret.ps1"),
            &[("-BackupFile", r"C:\s\x.bak")],
        );
        assert_eq!(
            args(&ps),
            [
                "-NoProfile",
                "-NonInteractive",
                "-ExecutionPolicy",
                "Bypass",
                "-File",
                r"C:\s\scripts\backup-secret.ps1",
                "-BackupFile",
                r"C:\s\x.bak"
            ]
        );
        assert_eq!(
            args(&wevtutil_esso_events(
                Path::new("wevtutil.exe"),
                "2026-11-29T07:00:00.000Z",
                50
            )),
            [
                "qe",
                "Application",
                "/q:*[System[Provider[@Name='ENTSSO'] and TimeCreated[@SystemTime>='2026-11-29T07:00:00.000Z']]]",
                "/rd:true",
                "/f:xml",
                "/c:50"
            ]
        );
        assert_eq!(
            args(&biztalk_configure(
                Path::new("Configuration.exe"),
                "c.xml",
                "c.log"
            )),
            ["/S", "c.xml", "/L", "c.log"]
        );
        assert_eq!(code_text(Some(3)), "3");
        assert_eq!(code_text(None), "none");
    }

    #[test]
    fn installer_command_lines() {
        let msiexec = PathBuf::from(r"C:\Windows\System32\msiexec.exe");
        let i = install(
            Some(&msiexec),
            r"D:\m\HIS.msi",
            r"C:\s\logs\i.log",
            BIZTALK_FEATURES,
            None,
        )
        .unwrap();
        assert_eq!(i.program, msiexec);
        assert_eq!(
            args(&i),
            [
                "/i",
                r"D:\m\HIS.msi",
                "/quiet",
                "/norestart",
                "/L*v",
                r"C:\s\logs\i.log"
            ]
        );
        let i = install(
            None,
            r"D:\m\Setup.exe",
            "l.log",
            BIZTALK_FEATURES,
            Some("SSOServer"),
        )
        .unwrap();
        assert_eq!(i.program, PathBuf::from(r"D:\m\Setup.exe"));
        assert_eq!(
            args(&i),
            [
                "/quiet",
                "/norestart",
                "/L",
                "l.log",
                "/ADDLOCAL",
                "WMI,BizTalk,AdditionalApps,SSOServer"
            ]
        );
        // ESSO provided by HIS: the feature is dropped, even from a configured feature list.
        let i = install(None, "Setup.exe", "l.log", "WMI, BizTalk,SSOServer", None).unwrap();
        assert_eq!(args(&i)[5], "WMI,BizTalk");
        assert!(install(None, "x.msi", "l", "", None).is_err());
        assert_eq!(
            install_log(Path::new(r"C:\ProgramData\ssofleet"), "r1", "sso-dev-01"),
            PathBuf::from(r"C:\ProgramData\ssofleet\logs\install-r1-sso-dev-01.log")
        );
        assert_eq!(
            install_log(Path::new("/var/lib/ssofleet"), "r/1", "n"),
            PathBuf::from("/var/lib/ssofleet/logs/install-r_1-n.log")
        );
    }

    #[test]
    fn migration_command_lines() {
        let h = Path::new(r"C:\hostsec\hissomig.exe");
        assert_eq!(
            args(&hissomig_export(
                h,
                &ExportSource::Server("PDC1".into()),
                r"C:\hostsec\x.xml",
                None
            )),
            [
                "-export",
                "-servername",
                "PDC1",
                "-output",
                r"C:\hostsec\x.xml"
            ]
        );
        assert_eq!(
            args(&hissomig_export(
                h,
                &ExportSource::DbFile(r"Y:\SNA\hostsec\dbfile.dbs".into()),
                "x.xml",
                Some(r"C:\SSO\log")
            )),
            [
                "-export",
                "-dbfile",
                r"Y:\SNA\hostsec\dbfile.dbs",
                "-output",
                "x.xml",
                "-log",
                r"C:\SSO\log"
            ]
        );
        assert_eq!(
            args(&hissomig_import(
                h,
                Some(r"Z:\hostseckey.bak"),
                "x.xml",
                None
            )),
            ["-import", "-key", r"Z:\hostseckey.bak", "-input", "x.xml"]
        );
        assert_eq!(
            args(&hissomig_import(h, None, "x.xml", None)),
            ["-import", "-input", "x.xml"]
        );
        assert_eq!(args(&udbkey_showkey(Path::new("udbkey.exe"))), ["/showkey"]);
        assert_eq!(
            args(&shutdown_restart(
                Path::new("shutdown.exe"),
                60,
                "ssofleet: ESSO upgrade"
            )),
            [
                "/r",
                "/t",
                "60",
                "/c",
                "ssofleet: ESSO upgrade",
                "/d",
                "p:4:2"
            ]
        );
    }

    #[test]
    fn media_paths() {
        assert_eq!(
            media_root(r"D:\media\HIS\setup.exe").as_deref(),
            Some(r"D:\media\HIS")
        );
        assert_eq!(media_root(r"D:\setup.exe").as_deref(), Some(r"D:\"));
        assert_eq!(
            media_root("/srv/media/his/setup.exe").as_deref(),
            Some("/srv/media/his")
        );
        assert_eq!(media_root("setup.exe"), None);
        assert_eq!(
            migration_utility_on_media(r"D:\media\HIS\", "hissomig.exe"),
            r"D:\media\HIS\support\utilities\hissomig.exe"
        );
        assert_eq!(
            migration_utility_on_media("/srv/m", "hissomig.exe"),
            "/srv/m/support/utilities/hissomig.exe"
        );
        assert_eq!(
            run_file(r"\\backup01\sso\dev", "hostseckey", "dev", "r1", "bak"),
            r"\\backup01\sso\dev\ssofleet-hostseckey-dev-r1.bak"
        );
        assert_eq!(
            run_file("/b/", "x", "dev", "r1", "xml"),
            "/b/ssofleet-x-dev-r1.xml"
        );
    }
}
