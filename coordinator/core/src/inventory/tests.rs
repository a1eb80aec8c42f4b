use super::*;

const VALID: &str = r#"
[upgrade]
target_version = "3.0.7"
installer = 'D:\media\BizTalk\Setup.exe'

[policy]
max_parallel = 2
max_failures = 1
step_timeout = "45m"

[[environment]]
name = "dev"
gate = "auto"
install = "unattended"
master = "sso-dev-01"
members = ["sso-dev-02", "SSO-DEV-03"]
backup_dir = '\\backup01\sso\dev'
window = { days = ["sat", "sun"], start = "22:00", end = "04:00", tz = "Europe/Berlin" }
[environment.sso_database]
server = "sqldev01.corp.example"
port = 1433
database = "SSODB"
user = "ssofleet"
password_file = "secrets/sql-dev"

[[environment]]
name = "prod"
gate = "soak 10m"
install = "attended"
master = "sso-prod-01"
members = []
backup_dir = '\\backup01\sso\prod'
"#;

fn parse(text: &str) -> Result<Inventory, InventoryError> {
    Inventory::parse(Path::new("/etc/ssofleet/fleet.toml"), text)
}

/// The only problem of an invalid inventory: (line, key, message).
fn problem(text: &str) -> (usize, String, String) {
    let err = parse(text).expect_err("the inventory should be refused");
    assert_eq!(err.problems.len(), 1, "expected one problem, got: {err}");
    let p = &err.problems[0];
    (p.line, p.key.clone(), p.message.clone())
}

/// The 1-based line of `text` where `needle` first occurs.
fn line_with(text: &str, needle: &str) -> usize {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the text"));
    text[..at].matches('\n').count() + 1
}

/// VALID with `from` replaced by `to` (which must occur once).
fn edit(from: &str, to: &str) -> String {
    assert_eq!(VALID.matches(from).count(), 1, "{from:?} must occur once");
    VALID.replace(from, to)
}

#[test]
fn keeps_the_text_it_was_parsed_from() {
    // A run's snapshot is this text, not whatever the file holds when the run starts.
    assert_eq!(parse(VALID).unwrap().source, VALID);
}

#[test]
fn sql_encryption_modes_and_trust() {
    for (line, mode) in [
        ("", SqlEncryption::Mandatory),
        ("encrypt = true\n", SqlEncryption::Mandatory),
        ("encrypt = \"strict\"\n", SqlEncryption::Strict),
        ("encrypt = false\n", SqlEncryption::LoginOnly),
    ] {
        let text = VALID.replace(
            "port = 1433\n",
            &format!("port = 1433\n{line}ca_file = \"sql-ca.pem\"\n"),
        );
        let inventory = parse(&text).unwrap();
        let db = inventory.environments[0].sso_database.as_ref().unwrap();
        assert_eq!(db.encryption, mode, "{line}");
        assert_eq!(
            db.ca_file.as_deref(),
            Some(Path::new("/etc/ssofleet/sql-ca.pem"))
        );
        assert!(!db.trust_server_certificate);
    }
}

#[test]
fn parses_the_spec_example() {
    let inv = parse(VALID).unwrap();
    assert_eq!(inv.upgrade.target_version, "3.0.7.0".parse().unwrap());
    assert_eq!(inv.upgrade.target_version.to_string(), "3.0.7");
    assert_eq!(inv.upgrade.installer, r"D:\media\BizTalk\Setup.exe");
    assert_eq!(inv.upgrade.master_installer, None);
    assert_eq!(
        inv.policy,
        Policy {
            max_parallel: 2,
            max_failures: 1,
            step_timeout: Duration::from_secs(2700)
        }
    );
    let names: Vec<&str> = inv.environments.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["dev", "prod"]);
    let dev = &inv.environments[0];
    assert_eq!(dev.master.as_str(), "sso-dev-01");
    assert_eq!(
        dev.members[1].as_str(),
        "sso-dev-03",
        "node names fold to lower case"
    );
    let window = dev.window.as_ref().unwrap();
    assert_eq!(window.days.len(), 2);
    assert_eq!(window.tz_name, "Europe/Berlin");
    assert_eq!(window.to_string(), "sat,sun 22:00-04:00 Europe/Berlin");
    let db = dev.sso_database.as_ref().unwrap();
    assert!(db.encryption == SqlEncryption::Mandatory && !db.trust_server_certificate);
    assert_eq!(
        db.auth,
        SqlAuth::Sql {
            user: "ssofleet".into(),
            password_file: PathBuf::from("/etc/ssofleet/secrets/sql-dev")
        }
    );
    let prod = &inv.environments[1];
    assert_eq!(prod.gate, Gate::Soak(Duration::from_secs(600)));
    assert_eq!(prod.install, InstallMode::Attended);
    assert_eq!(inv.node_count(), 4);
    let (env, role) = inv
        .find_node(&NodeName::new("sso-prod-01").unwrap())
        .unwrap();
    assert_eq!((env.name.as_str(), role), ("prod", Role::Master));
}

#[test]
fn defaults_apply_when_policy_and_gate_are_omitted() {
    let inv = parse(
        "[upgrade]\ntarget_version = \"3.0\"\ninstaller = 'x'\n[[environment]]\nname = \"a\"\nmaster = \"m\"\nbackup_dir = 'b'\n",
    )
    .unwrap();
    assert_eq!(inv.policy.max_parallel, 1);
    assert_eq!(inv.policy.max_failures, 0);
    assert_eq!(inv.environments[0].gate, Gate::Auto);
    assert_eq!(
        inv.environments[0].install,
        InstallMode::Attended,
        "attended by default: Microsoft supports no silent BizTalk upgrade"
    );
    assert!(inv.environments[0].members.is_empty());
}

#[test]
fn unknown_keys_name_line_and_key() {
    let text = edit("gate = \"auto\"", "gate = \"auto\"\ngatee = 1");
    let (line, key, msg) = problem(&text);
    assert_eq!(
        (line, key.as_str()),
        (line_with(&text, "gatee"), "environment[0].gatee")
    );
    assert!(msg.starts_with("unknown key `gatee`"), "{msg}");

    let (line, key, _) = problem(&edit("max_failures = 1", "max_failure = 1"));
    assert_eq!((line, key.as_str()), (8, "policy.max_failure"));

    let (line, key, _) = problem(&edit("[policy]", "[polcy]"));
    assert_eq!((line, key.as_str()), (6, "polcy"));

    let (line, key, _) = problem(&edit(
        "tz = \"Europe/Berlin\"",
        "tz = \"Europe/Berlin\", zone = 1",
    ));
    assert_eq!((line, key.as_str()), (18, "environment[0].window.zone"));

    let (line, key, _) = problem(&edit("port = 1433", "port = 1433\npassword = \"x\""));
    assert_eq!(
        (line, key.as_str()),
        (22, "environment[0].sso_database.password")
    );
}

#[test]
fn duplicate_node_names() {
    let (line, key, msg) = problem(&edit(
        r#"members = ["sso-dev-02", "SSO-DEV-03"]"#,
        r#"members = ["sso-dev-02", "sso-dev-02"]"#,
    ));
    assert_eq!((line, key.as_str()), (16, "environment[0].members[1]"));
    assert_eq!(msg, "duplicate node name \"sso-dev-02\" (first on line 16)");
}

#[test]
fn a_node_in_two_environments() {
    let (line, key, msg) = problem(&edit("members = []", "members = [\"Sso-Dev-02\"]"));
    assert_eq!((line, key.as_str()), (31, "environment[1].members[0]"));
    assert_eq!(
        msg,
        "node \"sso-dev-02\" is already in environment \"dev\" (line 16); a node belongs to one environment"
    );
}

#[test]
fn a_member_equal_to_the_master() {
    let (line, key, msg) = problem(&edit("members = []", "members = [\"SSO-PROD-01\"]"));
    assert_eq!((line, key.as_str()), (31, "environment[1].members[0]"));
    assert!(msg.contains("is this environment's master"), "{msg}");
}

#[test]
fn an_empty_environment_name() {
    let (line, key, msg) = problem(&edit("name = \"prod\"", "name = \"\""));
    assert_eq!((line, key.as_str()), (27, "environment[1].name"));
    assert_eq!(msg, "the environment name is empty");
}

#[test]
fn environment_names_differing_only_in_case_are_duplicates() {
    let (line, key, msg) = problem(&edit("name = \"prod\"", "name = \"DEV\""));
    assert_eq!((line, key.as_str()), (27, "environment[1].name"));
    assert!(msg.contains("is defined twice"), "{msg}");
}

#[test]
fn a_duplicate_environment_name() {
    let (line, key, msg) = problem(&edit("name = \"prod\"", "name = \"dev\""));
    assert_eq!((line, key.as_str()), (27, "environment[1].name"));
    assert_eq!(
        msg,
        "environment \"dev\" is defined twice (first on line 12)"
    );
}

#[test]
fn bad_values_name_their_key() {
    let cases = [
        (
            "gate = \"soak 10m\"",
            "gate = \"soak ten\"",
            "soak ten",
            "environment[1].gate",
        ),
        (
            "gate = \"auto\"",
            "gate = \"later\"",
            "later",
            "environment[0].gate",
        ),
        (
            "install = \"attended\"",
            "install = \"quiet\"",
            "quiet",
            "environment[1].install",
        ),
        (
            "step_timeout = \"45m\"",
            "step_timeout = \"soon\"",
            "soon",
            "policy.step_timeout",
        ),
        (
            "max_parallel = 2",
            "max_parallel = 0",
            "max_parallel",
            "policy.max_parallel",
        ),
        (
            "max_failures = 1",
            "max_failures = -1",
            "max_failures",
            "policy.max_failures",
        ),
        (
            "target_version = \"3.0.7\"",
            "target_version = \"latest\"",
            "latest",
            "upgrade.target_version",
        ),
        (
            "master = \"sso-prod-01\"",
            "master = \"sso prod\"",
            "sso prod",
            "environment[1].master",
        ),
        (
            "\"Europe/Berlin\"",
            "\"Mars/Olympus\"",
            "Mars",
            "environment[0].window.tz",
        ),
        (
            "[\"sat\", \"sun\"]",
            "[\"sat\", \"sunday\"]",
            "sunday",
            "environment[0].window.days[1]",
        ),
        (
            "start = \"22:00\"",
            "start = \"10pm\"",
            "10pm",
            "environment[0].window.start",
        ),
        (
            "port = 1433",
            "port = 70000",
            "70000",
            "environment[0].sso_database.port",
        ),
        (
            "user = \"ssofleet\"\n",
            "",
            "password_file",
            "environment[0].sso_database.user",
        ),
        (
            "port = 1433",
            "port = 1433\nencrypt = \"yes\"",
            "encrypt",
            "environment[0].sso_database.encrypt",
        ),
        (
            "port = 1433",
            "port = 1433\nca_file = \"ca.pem\"\ntrust_server_certificate = true",
            "trust_server_certificate",
            "environment[0].sso_database.trust_server_certificate",
        ),
        (
            "backup_dir = '\\\\backup01\\sso\\prod'",
            "backup_dir = ' '",
            "' '",
            "environment[1].backup_dir",
        ),
    ];
    for (from, to, needle, key) in cases {
        let text = edit(from, to);
        let (l, k, msg) = problem(&text);
        assert_eq!(
            (l, k.as_str()),
            (line_with(&text, needle), key),
            "{from} -> {to}: {msg}"
        );
    }
}

#[test]
fn a_target_version_that_is_not_a_version_names_file_line_and_key() {
    for bad in ["3.x", "3.0.7-beta", "3..7", "3.0.7.0.1", ""] {
        let text = edit(
            "target_version = \"3.0.7\"",
            &format!("target_version = \"{bad}\""),
        );
        let err = parse(&text).expect_err(bad);
        assert_eq!(err.problems.len(), 1, "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "/etc/ssofleet/fleet.toml: line 3, key upgrade.target_version: {}",
                crate::version::VersionError(bad.to_string())
            )
        );
    }
    let (_, _, msg) = problem(&edit(
        "target_version = \"3.0.7\"",
        "target_version = \"3.x\"",
    ));
    assert_eq!(
        msg,
        "\"3.x\" is not a version: write up to four whole numbers separated by dots, e.g. \"3.0.7\" or \"9.0.1865.0\""
    );
    // Four-part builds, as the registry has them, are versions.
    let inv = parse(&edit(
        "target_version = \"3.0.7\"",
        "target_version = \"9.0.1865.0\"",
    ))
    .unwrap();
    assert_eq!(inv.upgrade.target_version.parts(), [9, 0, 1865, 0]);
}

#[test]
fn a_master_installer_of_its_own() {
    let text = edit(
        "installer = 'D:\\media\\BizTalk\\Setup.exe'\n",
        "installer = 'D:\\media\\BizTalk\\Setup.exe'\nmaster_installer = 'D:\\media\\BizTalk\\Platform\\SSO\\Setup.exe'\n",
    );
    let inv = parse(&text).unwrap();
    assert_eq!(
        inv.upgrade.master_installer.as_deref(),
        Some(r"D:\media\BizTalk\Platform\SSO\Setup.exe")
    );
    let text = edit(
        "installer = 'D:\\media\\BizTalk\\Setup.exe'\n",
        "installer = 'D:\\media\\BizTalk\\Setup.exe'\nmaster_installer = ' '\n",
    );
    let (line, key, msg) = problem(&text);
    assert_eq!((line, key.as_str()), (5, "upgrade.master_installer"));
    assert!(
        msg.starts_with("the master installer path is empty"),
        "{msg}"
    );
}

#[test]
fn type_and_missing_field_errors_name_line_and_key() {
    let (line, key, msg) = problem(&edit("max_parallel = 2", "max_parallel = \"two\""));
    assert_eq!((line, key.as_str()), (7, "policy.max_parallel"));
    assert!(msg.contains("integer"), "{msg}");

    let (line, key, msg) = problem(&edit("master = \"sso-prod-01\"\n", ""));
    assert_eq!(key, "environment[1].master");
    assert!(msg.contains("missing field `master`"), "{msg}");

    let (_, key, _) = problem("[[environment]]\nname = \"a\"\nmaster = \"m\"\nbackup_dir = 'b'\n");
    assert_eq!(key, "upgrade", "a missing table is named");
    assert!(
        line >= 26,
        "line {line}: the second [[environment]] starts on line 26"
    );
}

#[test]
fn syntax_errors_name_the_line() {
    let (line, key, msg) = problem(&edit("max_failures = 1", "max_failures = = 1"));
    assert_eq!((line, key.as_str()), (8, ""));
    assert!(msg.starts_with("TOML syntax"), "{msg}");
}

#[test]
fn no_environment_is_an_error() {
    let err = parse("[upgrade]\ntarget_version = \"3.0\"\ninstaller = 'x'\n").unwrap_err();
    assert_eq!(err.problems[0].key, "environment");
}

#[test]
fn every_semantic_problem_is_listed_in_line_order_with_the_file() {
    let text = edit("name = \"prod\"", "name = \"\"")
        .replace("max_parallel = 2", "max_parallel = 0")
        .replace("members = []", "members = [\"sso-dev-01\"]");
    let err = parse(&text).unwrap_err();
    let lines: Vec<usize> = err.problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, [7, 27, 31]);
    let shown = err.to_string();
    assert!(
        shown.starts_with("/etc/ssofleet/fleet.toml: line 7, key policy.max_parallel: "),
        "{shown}"
    );
    assert_eq!(shown.lines().count(), 3);
}

#[test]
fn an_unreadable_file_is_named() {
    let err = Inventory::load(Path::new("/nonexistent/fleet.toml")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/nonexistent/fleet.toml: cannot read the file"),
        "{err}"
    );
}

fn ms(zoned: &str) -> i64 {
    zoned
        .parse::<jiff::Zoned>()
        .unwrap()
        .timestamp()
        .as_millisecond()
}

#[test]
fn a_window_over_midnight_opens_on_its_days_and_closes_the_next_morning() {
    let inv = parse(VALID).unwrap();
    let w = inv.environments[0].window.as_ref().unwrap();
    // 2026-11-27 is a Friday: closed all day, and the first opening is Saturday 22:00 Berlin time.
    let friday = ms("2026-11-27T23:30:00[Europe/Berlin]");
    assert!(!w.is_open(friday));
    assert_eq!(
        w.next_open(friday),
        Some(ms("2026-11-28T22:00:00[Europe/Berlin]"))
    );
    assert!(!w.is_open(ms("2026-11-28T21:59:59[Europe/Berlin]")));
    assert!(w.is_open(ms("2026-11-28T22:00:00[Europe/Berlin]")));
    // Saturday's opening runs into Sunday morning, Sunday's into Monday morning.
    assert_eq!(
        w.closes_at(ms("2026-11-29T03:00:00[Europe/Berlin]")),
        Some(ms("2026-11-29T04:00:00[Europe/Berlin]"))
    );
    assert!(!w.is_open(ms("2026-11-29T04:00:00[Europe/Berlin]")));
    assert!(w.is_open(ms("2026-11-30T03:59:59[Europe/Berlin]")));
    assert!(
        !w.is_open(ms("2026-11-30T22:30:00[Europe/Berlin]")),
        "Monday"
    );
    assert_eq!(
        w.next_open(ms("2026-11-30T04:00:00[Europe/Berlin]")),
        Some(ms("2026-12-05T22:00:00[Europe/Berlin]"))
    );
    // The same wall time in UTC is an hour earlier in winter.
    assert!(w.is_open(ms("2026-11-28T21:30:00[UTC]")));
    assert_eq!(
        w.local(ms("2026-11-28T21:00:00[UTC]")),
        "Sat 2026-11-28 22:00:00 CET"
    );
}

#[test]
fn a_window_may_be_exact_to_the_second() {
    let text = VALID.replace(
        r#"start = "22:00", end = "04:00""#,
        r#"start = "10:00:30", end = "10:00:45""#,
    );
    let inv = parse(&text).unwrap();
    let w = inv.environments[0].window.as_ref().unwrap();
    assert_eq!(w.to_string(), "sat,sun 10:00:30-10:00:45 Europe/Berlin");
    assert!(!w.is_open(ms("2026-11-28T10:00:29[Europe/Berlin]")));
    assert!(w.is_open(ms("2026-11-28T10:00:30[Europe/Berlin]")));
    assert!(!w.is_open(ms("2026-11-28T10:00:45[Europe/Berlin]")));
    let bad = parse(&VALID.replace(r#"start = "22:00""#, r#"start = "22:00:5""#)).unwrap_err();
    assert!(bad.to_string().contains("is not a time of day"), "{bad}");
}
