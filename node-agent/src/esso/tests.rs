use std::time::{Duration, UNIX_EPOCH};

use super::*;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn products(p: &[&str]) -> Vec<String> {
    p.iter().map(|s| s.to_string()).collect()
}

/// Seed 000: "Installing Host Integration Server on a machine that already has BizTalk Server: do not
/// select the ESSO feature (ESSO is already there)."
#[test]
fn his_installed_where_biztalk_is_does_not_select_esso() {
    assert_eq!(
        esso_feature(InstallerKind::Msi, &products(&["biztalk"])),
        None
    );
    assert_eq!(
        esso_feature(InstallerKind::Msi, &products(&["BizTalk", "his"])),
        None
    );
}

/// Seed 000: "Installing BizTalk on a machine with an existing HIS 2009 ESSO: the same upgrade
/// procedure applies (ESSO selected, 'Join an existing SSO system')."
#[test]
fn biztalk_installed_where_his_esso_is_selects_esso() {
    assert_eq!(
        esso_feature(InstallerKind::Setup, &products(&["his"])),
        Some("SSOServer")
    );
    assert_eq!(
        esso_feature(InstallerKind::Setup, &products(&[])),
        Some("SSOServer")
    );
    assert_eq!(
        esso_feature(InstallerKind::Msi, &products(&["his"])),
        Some("SSOServer")
    );
}

#[test]
fn sso_configure_answers() {
    assert_eq!(
        SsoConfigure::from_param(Some("Create")),
        SsoConfigure::Create
    );
    assert_eq!(SsoConfigure::from_param(Some("join")), SsoConfigure::Join);
    assert_eq!(SsoConfigure::from_param(None), SsoConfigure::Join);
    assert_eq!(SsoConfigure::from_param(Some("creat")).answer(), "Join");
}

#[test]
fn installer_exit_codes_and_reboot_requests() {
    assert_eq!(install_exit(Some(0)), InstallExit::Success);
    assert_eq!(install_exit(Some(3010)), InstallExit::RebootPending);
    assert_eq!(install_exit(Some(1641)), InstallExit::RebootPending);
    assert_eq!(install_exit(Some(1603)), InstallExit::Failed);
    assert_eq!(install_exit(None), InstallExit::Failed);
    let none = BTreeMap::new();
    assert_eq!(
        reboot_request(Some(3010), &none),
        Some(RebootRequest::Required)
    );
    assert_eq!(
        reboot_request(Some(1641), &none),
        Some(RebootRequest::Started)
    );
    assert_eq!(reboot_request(Some(0), &none), None);
    let said = map(&[("reboot", " Started ")]);
    assert_eq!(reboot_request(Some(0), &said), Some(RebootRequest::Started));
    assert_eq!(reboot_request(Some(1), &said), None);
    assert_eq!(
        installer_error(1618),
        Some("another installation is in progress")
    );
    assert_eq!(installer_error(5), None);
}

#[test]
fn versions_are_verified_as_numbers() {
    let params = map(&[("target_version", "3.0.7"), ("master", "sso-dev-01")]);
    let ok = map(&[("version", "3.0.7.0"), ("service", "running")]);
    assert_eq!(verify_problem(&ok, &params), None);
    let newer = map(&[("version", "3.0.8"), ("service", "running")]);
    assert_eq!(
        verify_problem(&newer, &params).as_deref(),
        Some("ESSO reports version 3.0.8, newer than the target 3.0.7")
    );
    let mut newer_ok = params.clone();
    newer_ok.insert("newer_ok".into(), "true".into());
    assert_eq!(verify_problem(&newer, &newer_ok), None);
    // As strings "3.0.10" < "3.0.9"; as numbers it is newer.
    let ten = map(&[("version", "3.0.10"), ("service", "running")]);
    assert_eq!(
        verify_problem(&ten, &map(&[("target_version", "3.0.9")])).as_deref(),
        Some("ESSO reports version 3.0.10, newer than the target 3.0.9")
    );
    assert!(
        verify_problem(
            &map(&[("version", "3.0.6"), ("service", "running")]),
            &params
        )
        .is_some_and(|p| p == "ESSO reports version 3.0.6, expected 3.0.7")
    );
    assert!(
        verify_problem(&map(&[("version", "x"), ("service", "running")]), &params)
            .is_some_and(|p| p.contains("not a version"))
    );
    assert_eq!(
        verify_problem(&map(&[("version", ""), ("service", "running")]), &params).as_deref(),
        Some("no ESSO version is installed, expected 3.0.7")
    );
}

#[test]
fn verification_checks_master_enabled_and_service() {
    let params = map(&[("target_version", "3.0.7"), ("master", "sso-dev-01")]);
    let wrong_master = map(&[
        ("secret_server", "SSO-DEV-09"),
        ("version", "3.0.7"),
        ("service", "running"),
    ]);
    assert!(verify_problem(&wrong_master, &params).is_some_and(|p| p.contains("SSO-DEV-09")));
    let fqdn = map(&[
        ("secret_server", "SSO-DEV-01.corp.example"),
        ("sso_enabled", "yes"),
        ("version", "3.0.7"),
        ("service", "running"),
    ]);
    assert_eq!(verify_problem(&fqdn, &params), None);
    let disabled = map(&[("sso_enabled", "no"), ("service", "running")]);
    assert!(verify_problem(&disabled, &params).is_some_and(|p| p.contains("not enabled")));
    let stopped = map(&[("version", "3.0.7"), ("service", "stopped")]);
    assert_eq!(
        verify_problem(&stopped, &params).as_deref(),
        Some("the ENTSSO service is stopped, not running")
    );
    assert!(verify_problem(&map(&[("version", "3.0.7")]), &params).is_some());
    assert!(verify_problem(&map(&[("service", "running")]), &params).is_some());
}

#[test]
fn esso_events_have_a_verdict() {
    assert_eq!(event_verdict(10534), Some(EventVerdict::MasterHealthy));
    assert_eq!(event_verdict(10529), Some(EventVerdict::MemberHealthy));
    for bad in [10520, 10521, 10532, 10536, 10550, 10565, 10515] {
        assert!(
            matches!(event_verdict(bad), Some(EventVerdict::Bad(_))),
            "{bad}"
        );
    }
    assert_eq!(event_verdict(10500), None);
}

#[test]
fn backup_names_reminders_and_passwords() {
    let at = UNIX_EPOCH + Duration::from_secs(1_717_200_000);
    assert_eq!(
        backup_file(r"\\backup01\sso\dev", "dev", "sso-dev-01", "r1", at),
        r"\\backup01\sso\dev\ssofleet-secret-dev-sso-dev-01-r1-20240601T000000Z.bak"
    );
    assert_eq!(
        backup_file("/b/", "dev", "n", "r1", at),
        "/b/ssofleet-secret-dev-n-r1-20240601T000000Z.bak"
    );
    assert_eq!(
        backup_reminder("dev", "sso-dev-01", at, "s3cret-pw"),
        "ssofleet backup dev sso-dev-01 2024-06-01"
    );
    // A password that the reminder would reveal.
    assert!(!backup_reminder("production", "sso-p-01", at, "product").contains("product"));
    assert!(password_problem("123456").is_some_and(|p| p.contains("0xC0002A54")));
    assert_eq!(password_problem("1234567"), None);
    assert_eq!(password_problem("ÄÖÜäöüß"), None);
}

/// Preflight fitness: the products present agree with the installer.
#[test]
fn the_products_present_must_fit_the_installer() {
    let biztalk = products(&["biztalk"]);
    let none = products(&[]);
    assert_eq!(
        installer_fits(r"D:\m\BizTalk\Setup.exe", &biztalk, true),
        Ok(())
    );
    assert_eq!(
        installer_fits(r"D:\m\BizTalk\Setup.exe", &none, false),
        Ok(())
    );
    assert!(
        installer_fits(r"D:\m\BizTalk\Setup.exe", &none, true)
            .is_err_and(|e| e.contains("master_installer"))
    );
    assert_eq!(
        installer_fits(r"D:\m\Platform\SSO\Setup.exe", &none, true),
        Ok(())
    );
    assert_eq!(
        installer_fits("D:/m/platform/sso64/setup.exe", &none, true),
        Ok(())
    );
    assert_eq!(
        installer_fits(r"D:\m\HIS2020_Server_EN.msi", &biztalk, true),
        Ok(())
    );
    assert!(installer_fits(r"D:\m\HIS2020_Server_EN.msi", &none, true).is_err());
}
