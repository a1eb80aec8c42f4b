use super::*;

#[test]
fn the_host_account_cache_server_is_the_his_server_or_the_unc_host_of_the_dbfile() {
    let his = |server: &str| Migration {
        source: HostSecurity::His2000 {
            server: server.into(),
        },
        backup_dir: "b".into(),
        log_dir: None,
    };
    let sna = |dbfile: &str| Migration {
        source: HostSecurity::Sna4 {
            dbfile: dbfile.into(),
        },
        ..his("x")
    };
    assert_eq!(his("PDC1").host_account_cache_server(), Some("PDC1"));
    assert_eq!(
        sna(r"\\sna01\hostsec\dbfile.dbs").host_account_cache_server(),
        Some("sna01")
    );
    assert_eq!(
        sna(r"D:\SNA Server\hostsec\dbfile.dbs").host_account_cache_server(),
        None
    );
    assert!(his("PDC1").has_key() && !sna(r"D:\x.dbs").has_key());
    assert_eq!(sna(r"D:\x.dbs").source_name(), "sna4");
    for path in [r"D:\x.dbs", r"\\s\share\x.dbs"] {
        assert!(full_windows_path(path), "{path}");
    }
    for path in ["x.dbs", r"Y:x.dbs", r"\\s", r"\\s\", "/srv/x.dbs"] {
        assert!(!full_windows_path(path), "{path}");
    }
}

// ---------------------------------------------------------------------------------------------------
// `[environment.migration]` in a fleet.toml: each problem named by file, line and key.

use std::path::Path;

use crate::inventory::Inventory;

const FLEET: &str = r#"[upgrade]
target_version = "3.0.7"
installer = 'D:\media\Setup.exe'

[[environment]]
name = "dev"
master = "sso-dev-01"
backup_dir = '\\backup01\sso\dev'
[environment.migration]
source = "his2000"
host_security_server = "PDC1"
backup_dir = '\\backup01\hostsec\dev'
log_dir = 'C:\hostsec\log'

[[environment]]
name = "prod"
master = "sso-prod-01"
backup_dir = '\\backup01\sso\prod'
"#;

fn parse(text: &str) -> Result<Inventory, crate::inventory::InventoryError> {
    Inventory::parse(Path::new("/etc/ssofleet/fleet.toml"), text)
}

/// FLEET with `from` (which must occur once) replaced by `to`.
fn edit(from: &str, to: &str) -> String {
    assert_eq!(FLEET.matches(from).count(), 1, "{from:?} must occur once");
    FLEET.replace(from, to)
}

/// Every problem of an invalid inventory, as `line key: message`.
fn problems(text: &str) -> Vec<String> {
    let err = parse(text).expect_err("the inventory should be refused");
    assert!(
        err.to_string()
            .starts_with("/etc/ssofleet/fleet.toml: line "),
        "the file is named: {err}"
    );
    err.problems
        .iter()
        .map(|p| format!("{} {}: {}", p.line, p.key, p.message))
        .collect()
}

#[test]
fn a_his2000_migration_is_read_into_its_types() {
    let inv = parse(FLEET).unwrap();
    let m = inv.environments[0].migration.as_ref().unwrap();
    assert_eq!(
        m.source,
        HostSecurity::His2000 {
            server: "PDC1".into()
        }
    );
    assert_eq!(m.backup_dir, r"\\backup01\hostsec\dev");
    assert_eq!(m.log_dir.as_deref(), Some(r"C:\hostsec\log"));
    assert!(inv.environments[1].migration.is_none());

    let text = edit(
        "source = \"his2000\"\nhost_security_server = \"PDC1\"\n",
        "source = \"sna4\"\nhost_security_dbfile = '\\\\sna01\\hostsec\\dbfile.dbs'\n",
    )
    .replace("log_dir = 'C:\\hostsec\\log'\n", "");
    let inv = parse(&text).unwrap();
    let m = inv.environments[0].migration.as_ref().unwrap();
    assert_eq!(
        m.source,
        HostSecurity::Sna4 {
            dbfile: r"\\sna01\hostsec\dbfile.dbs".into()
        }
    );
    assert_eq!(m.log_dir, None);
}

#[test]
fn a_missing_or_unknown_source_names_line_and_key() {
    assert_eq!(
        problems(&edit("source = \"his2000\"\n", "")),
        [
            "9 environment[0].migration.source: source is missing: write source = \"his2000\" (Host Integration Server 2000) or \"sna4\" (SNA Server 4.0)"
        ]
    );
    assert_eq!(
        problems(&edit("source = \"his2000\"", "source = \"HIS 2000\"")),
        [
            "10 environment[0].migration.source: \"HIS 2000\" is not a migration source: use \"his2000\" (Host Integration Server 2000) or \"sna4\" (SNA Server 4.0)"
        ]
    );
    let unknown = problems(&edit("log_dir", "logdir"));
    assert_eq!(unknown.len(), 1);
    assert!(
        unknown[0].starts_with("13 environment[0].migration.logdir: unknown key `logdir`"),
        "{unknown:?}"
    );
}

#[test]
fn his2000_needs_the_host_security_server_and_refuses_a_dbfile() {
    assert_eq!(
        problems(&edit("host_security_server = \"PDC1\"\n", "")),
        [
            "9 environment[0].migration.host_security_server: source = \"his2000\" needs host_security_server: the primary domain controller holding the host security data (hissomig -export -servername)"
        ]
    );
    assert_eq!(
        problems(&edit(
            "host_security_server = \"PDC1\"\n",
            "host_security_server = \"PDC1\"\nhost_security_dbfile = 'D:\\hostsec\\dbfile.dbs'\n"
        )),
        [
            "12 environment[0].migration.host_security_dbfile: host_security_dbfile is SNA Server 4.0's: with source = \"his2000\" name host_security_server only"
        ]
    );
    assert_eq!(
        problems(&edit("\"PDC1\"", "\"\\\\\\\\PDC1\\\\share\"")),
        [
            "11 environment[0].migration.host_security_server: \"\\\\\\\\PDC1\\\\share\" is not a server name: write the fully qualified name, NetBIOS name or IP address of the Host Integration Server 2000 primary domain controller"
        ]
    );
    assert_eq!(
        problems(&edit("\"PDC1\"", "\" \"")),
        ["11 environment[0].migration.host_security_server: the host security server is empty"]
    );
}

#[test]
fn sna4_needs_a_full_dbfile_path_and_refuses_a_server() {
    assert_eq!(
        problems(&edit("source = \"his2000\"", "source = \"sna4\"")),
        // In line order: the table's line first.
        [
            "9 environment[0].migration.host_security_dbfile: source = \"sna4\" needs host_security_dbfile: the full path of the SNA Server 4.0 host security database file (hissomig -export -dbfile)",
            "11 environment[0].migration.host_security_server: host_security_server is Host Integration Server 2000's: with source = \"sna4\" name host_security_dbfile only"
        ]
    );
    assert_eq!(
        problems(&edit(
            "source = \"his2000\"\nhost_security_server = \"PDC1\"\n",
            "source = \"sna4\"\nhost_security_dbfile = 'dbfile.dbs'\n"
        )),
        [
            "11 environment[0].migration.host_security_dbfile: \"dbfile.dbs\" is not a full path: write the database file's full path on the master (e.g. 'D:\\SNA Server\\hostsec\\dbfile.dbs') or a UNC path ('\\\\sna01\\hostsec\\dbfile.dbs'); the agent, a service, sees no mapped drives"
        ]
    );
}

#[test]
fn the_backup_dir_is_required_and_no_directory_may_be_empty() {
    assert_eq!(
        problems(&edit("backup_dir = '\\\\backup01\\hostsec\\dev'\n", "")),
        [
            "9 environment[0].migration.backup_dir: backup_dir is missing: name where the old host security data and its encryption key are backed up (e.g. '\\\\backup01\\hostsec\\dev')"
        ]
    );
    assert_eq!(
        problems(&edit("'\\\\backup01\\hostsec\\dev'", "' '")),
        ["12 environment[0].migration.backup_dir: the backup directory is empty"]
    );
    assert_eq!(
        problems(&edit("'C:\\hostsec\\log'", "''")),
        ["13 environment[0].migration.log_dir: the migration log directory is empty"]
    );
}

/// deploy/examples/fleet.toml's commented `[environment.migration]`, uncommented (HIS 2000, the SNA
/// Server 4.0 alternative left out), is a valid migration of dev.
#[test]
fn the_deploy_example_migration_is_valid_when_uncommented() {
    let example = include_str!("../../../../../deploy/examples/fleet.toml");
    let mut in_block = false;
    let text: String = example
        .lines()
        .filter_map(|line| {
            in_block = (in_block && line.starts_with('#'))
                || line.starts_with("# [environment.migration]");
            match line.strip_prefix("# ") {
                Some(option) if in_block && !option.starts_with(' ') => {
                    (!option.starts_with("host_security_dbfile")).then_some(option)
                }
                _ => Some(line),
            }
        })
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(text.contains("\n[environment.migration]"), "{text}");
    let inv = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let m = inv.environments[0].migration.as_ref().unwrap();
    assert_eq!(
        m.source,
        HostSecurity::His2000 {
            server: "hispdc01.corp.example".into()
        }
    );
    assert_eq!(m.backup_dir, r"\\backup01\hostsec\dev");
    assert_eq!(m.log_dir.as_deref(), Some(r"C:\hostsec\log"));
}
