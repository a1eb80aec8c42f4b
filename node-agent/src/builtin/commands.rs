//! The command lines of the Windows tools, as pure functions: program and arguments (never a shell
//! string), and the text a tool reads on standard input. Secrets go only into the standard input text.

use std::path::{Path, PathBuf};

use super::tools::win_join;

/// A program and its arguments; run without a shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl Invocation {
    fn new(program: &Path, args: &[&str]) -> Self {
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

pub fn sc_query(sc: &Path, service: &str) -> Invocation {
    Invocation::new(sc, &["query", service])
}

pub fn sc_stop(sc: &Path, service: &str) -> Invocation {
    Invocation::new(sc, &["stop", service])
}

pub fn sc_start(sc: &Path, service: &str) -> Invocation {
    Invocation::new(sc, &["start", service])
}

/// Which registry view `reg.exe` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegView {
    /// The caller's own (64-bit for the System32 `reg.exe` on 64-bit Windows).
    Native,
    /// The 32-bit view (`WOW6432Node`), where 32-bit products such as BizTalk may write (`/reg:32`).
    Wow32,
}

/// `reg query <key> [/v <value>] [/reg:32]`; without a value it lists the key's values and subkeys.
pub fn reg_query(reg: &Path, key: &str, value: Option<&str>, view: RegView) -> Invocation {
    let mut args = vec!["query", key];
    if let Some(value) = value {
        args.extend(["/v", value]);
    }
    if view == RegView::Wow32 {
        args.push("/reg:32");
    }
    Invocation::new(reg, &args)
}

pub fn ssomanage_displaydb(ssomanage: &Path) -> Invocation {
    Invocation::new(ssomanage, &["-displaydb"])
}

pub fn ssoconfig_backup_secret(ssoconfig: &Path, backup_file: &str) -> Invocation {
    Invocation::new(ssoconfig, &["-backupSecret", backup_file])
}

/// What `ssoconfig -backupSecret` reads: the password, its confirmation, the reminder (it prompts for
/// the three in this order). The runner adds the final newline when it writes this.
pub fn backup_secret_stdin(password: &str, reminder: &str) -> String {
    format!("{password}\n{password}\n{reminder}")
}

/// The password reminder stored in the backup file: which backup this is, never the password. Should
/// the password appear in it (a password such as the environment's name), a fixed text is used instead.
pub fn backup_reminder(environment: &str, node: &str, date: &str, password: &str) -> String {
    let reminder = format!("ssofleet backup {environment} {node} {date}");
    if password.is_empty() || !reminder.contains(password) {
        reminder
    } else {
        "ssofleet master secret backup: the password is in the agent's backup_password_file".into()
    }
}

/// The two kinds of installer media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallerKind {
    /// A Windows Installer package (Host Integration Server ships `HIS20xx_Server_EN.msi`).
    Msi,
    /// A product's `setup.exe` (BizTalk Server, or its `\Platform\SSO\Setup.exe`).
    Setup,
}

pub fn installer_kind(installer: &str) -> InstallerKind {
    if installer.to_ascii_lowercase().ends_with(".msi") {
        InstallerKind::Msi
    } else {
        InstallerKind::Setup
    }
}

/// The product an installer installs: an MSI is Host Integration Server's, a setup.exe BizTalk's.
pub fn installer_product(kind: InstallerKind) -> &'static str {
    match kind {
        InstallerKind::Msi => "his",
        InstallerKind::Setup => "biztalk",
    }
}

/// The ESSO server feature to select, or none when the other product already provides ESSO on this
/// machine (SPEC §1: HIS on a BizTalk machine, or BizTalk on an HIS machine, must not select the ESSO
/// feature again; the existing ESSO is upgraded by the same procedure). `products` are the facts'
/// `products=` values.
pub fn esso_feature(installing: &str, products: &[String]) -> Option<&'static str> {
    let other_has_esso = products.iter().any(|p| {
        p.eq_ignore_ascii_case(if installing == "his" {
            "biztalk"
        } else {
            "his"
        })
    });
    (!other_has_esso).then_some("SSOServer")
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
    match installer_kind(installer) {
        InstallerKind::Msi => {
            let msiexec = msiexec.ok_or("an .msi installer needs msiexec.exe")?;
            Ok(Invocation::new(
                msiexec,
                &["/i", installer, "/quiet", "/norestart", "/L*v", log],
            ))
        }
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

pub fn hissomig_import(
    hissomig: &Path,
    key_file: &str,
    xml: &str,
    log_dir: Option<&str>,
) -> Invocation {
    let mut args = vec!["-import", "-key", key_file, "-input", xml];
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

fn file_safe(s: &str) -> String {
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
    fn service_and_registry_queries() {
        let sc = Path::new(r"C:\Windows\System32\sc.exe");
        assert_eq!(args(&sc_query(sc, "ENTSSO")), ["query", "ENTSSO"]);
        assert_eq!(args(&sc_stop(sc, "SnaDatabase")), ["stop", "SnaDatabase"]);
        assert_eq!(args(&sc_start(sc, "SnaDatabase")), ["start", "SnaDatabase"]);
        let reg = Path::new("reg.exe");
        let q = reg_query(
            reg,
            r"HKLM\SOFTWARE\Microsoft\BizTalk Server\3.0",
            Some("ProductVersion"),
            RegView::Wow32,
        );
        assert_eq!(
            args(&q),
            [
                "query",
                r"HKLM\SOFTWARE\Microsoft\BizTalk Server\3.0",
                "/v",
                "ProductVersion",
                "/reg:32"
            ]
        );
        assert_eq!(
            q.display(),
            r#"reg.exe query "HKLM\SOFTWARE\Microsoft\BizTalk Server\3.0" /v ProductVersion /reg:32"#
        );
        assert_eq!(
            args(&reg_query(
                reg,
                r"HKLM\SOFTWARE\Microsoft\ENTSSO",
                None,
                RegView::Native
            )),
            ["query", r"HKLM\SOFTWARE\Microsoft\ENTSSO"]
        );
    }

    #[test]
    fn backup_secret_keeps_the_password_off_the_command_line() {
        let i = ssoconfig_backup_secret(Path::new("ssoconfig.exe"), r"\\b\sso\x.bak");
        assert_eq!(args(&i), ["-backupSecret", r"\\b\sso\x.bak"]);
        assert_eq!(args(&ssomanage_displaydb(Path::new("m"))), ["-displaydb"]);
        let reminder = backup_reminder("dev", "sso-dev-01", "2024-06-01", "s3cret-pw");
        assert_eq!(reminder, "ssofleet backup dev sso-dev-01 2024-06-01");
        assert_eq!(
            backup_secret_stdin("s3cret-pw", &reminder),
            "s3cret-pw\ns3cret-pw\nssofleet backup dev sso-dev-01 2024-06-01"
        );
        // A password that the reminder would reveal.
        let reminder = backup_reminder("production", "sso-p-01", "2024-06-01", "product");
        assert!(!reminder.contains("product"), "{reminder}");
    }

    #[test]
    fn the_esso_feature_is_selected_only_when_no_other_product_provides_it() {
        let present = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(esso_feature("biztalk", &present(&[])), Some("SSOServer"));
        assert_eq!(
            esso_feature("biztalk", &present(&["biztalk"])),
            Some("SSOServer")
        );
        assert_eq!(esso_feature("biztalk", &present(&["HIS"])), None);
        assert_eq!(esso_feature("his", &present(&["biztalk", "his"])), None);
        assert_eq!(esso_feature("his", &present(&["his"])), Some("SSOServer"));
        assert_eq!(
            installer_product(installer_kind(r"D:\m\HIS2020_Server_EN.MSI")),
            "his"
        );
        assert_eq!(
            installer_product(installer_kind(r"D:\m\BizTalk\Setup.exe")),
            "biztalk"
        );
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
            args(&hissomig_import(h, r"Z:\hostseckey.bak", "x.xml", None)),
            ["-import", "-key", r"Z:\hostseckey.bak", "-input", "x.xml"]
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
