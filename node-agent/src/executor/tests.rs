use std::path::Path;

use sha2::{Digest, Sha256};

use super::*;

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// An agent.toml in `dir` whose actions are the fixture tools, with `extra_env` for each.
fn config(dir: &Path, extra_env: &str, password: Option<&str>) -> AgentConfig {
    let home = dir.join("esso");
    let secrets = match password {
        Some(pw) => {
            std::fs::write(dir.join("backup-password"), format!("{pw}\n")).unwrap();
            "[secrets]\nbackup_password_file = \"backup-password\"\n".to_string()
        }
        None => String::new(),
    };
    let env = format!(
        "env = {{ FAKE_ESSO_HOME = \"{}\"{extra_env} }}",
        home.display()
    );
    let text = format!(
        r#"node = "sso-dev-01"
coordinator = "https://127.0.0.1:1"
state_dir = "state"
[tls]
ca = "ca.pem"
cert = "agent.pem"
key = "agent-key.pem"
{secrets}
[actions.backup_secret]
program = "{ssoconfig}"
args = ["-backupSecret", "{{backup_file}}"]
{env}
[actions.install_sso]
program = "{setup}"
args = ["{{target_version}}"]
{env}
[actions.verify_sso]
program = "{verify}"
{env}
"#,
        ssoconfig = fixture("ssoconfig"),
        setup = fixture("esso-setup"),
        verify = fixture("esso-verify"),
    );
    AgentConfig::parse(&dir.join("agent.toml"), &text).unwrap()
}

fn assignment(action: ActionName, params: &[(&str, &str)]) -> Assignment {
    Assignment {
        attempt_id: "a-1".into(),
        epoch: 1,
        run_id: "r-7".into(),
        environment: "dev".into(),
        step: "step".into(),
        action,
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        timeout: Duration::from_secs(30),
        expected_installer_sha256: None,
        install_mode: pb::InstallMode::Unattended,
    }
}

async fn run_collect(
    config: &AgentConfig,
    a: &Assignment,
) -> (pb::StepFinished, Vec<pb::StepEvent>) {
    let (tx, mut rx) = mpsc::channel(1024);
    let result = execute(config, a, tx).await.expect("the attempt finished");
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.extend(Journaled::event(e));
    }
    (result, events)
}

fn assert_well_formed(events: &[pb::StepEvent], result: &pb::StepFinished) {
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "numbered 1, 2, … with no gap"
    );
    assert!(
        matches!(events.last().and_then(|e| e.kind.as_ref()), Some(Kind::Finished(f)) if f == result),
        "the result comes last"
    );
    assert!(events.iter().all(|e| e.attempt_id == "a-1"));
}

#[tokio::test]
async fn backup_secret_writes_the_file_and_reports_its_size_and_hash() {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    let config = config(dir.path(), "", Some("correct horse"));
    let a = assignment(
        ActionName::BackupSecret,
        &[("backup_dir", backups.to_str().unwrap())],
    );
    let (result, events) = run_collect(&config, &a).await;
    assert_eq!(result.outcome(), pb::StepOutcome::Succeeded, "{result:?}");
    assert_well_formed(&events, &result);
    let artifact = &result.artifacts[0];
    let written = std::fs::read(&artifact.path).unwrap();
    assert_eq!(artifact.size_bytes, written.len() as u64);
    let expected: String = Sha256::digest(&written)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(artifact.sha256, expected);
    let name = Path::new(&artifact.path)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with("ssofleet-secret-dev-sso-dev-01-r-7-") && name.ends_with(".bak"),
        "{name}"
    );
    // The password never appears in what the agent reports.
    assert!(!format!("{events:?}").contains("correct horse"));
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.kind, Some(Kind::Progress(p)) if p.percent == 50))
    );
}

/// Rule: a secret never reaches a file, a log or an event. A tool that echoes the password on its
/// standard input: its lines are redacted, and nothing under the state directory holds it.
#[tokio::test]
async fn a_tool_that_echoes_the_password_leaves_it_in_no_file_and_no_event() {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    let config = config(
        dir.path(),
        ", FAKE_SSOCONFIG_ECHO = \"1\"",
        Some("correct horse"),
    );
    let a = assignment(
        ActionName::BackupSecret,
        &[("backup_dir", backups.to_str().unwrap())],
    );
    // As the attempt's task runs it: its programs' output in the attempt's folder.
    let output_dir = runner::files::attempt_dir(&config.state_dir, &a.attempt_id);
    let (result, events) = runner::OUTPUT_DIR
        .scope(output_dir, run_collect(&config, &a))
        .await;
    assert_eq!(result.outcome(), pb::StepOutcome::Succeeded, "{result:?}");
    let logged: Vec<&str> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Log(log)) => Some(log.line.as_str()),
            _ => None,
        })
        .collect();
    assert!(logged.contains(&"password: [redacted]"), "{logged:?}");
    assert!(logged.contains(&"echoed [redacted]"), "{logged:?}");
    assert!(!format!("{events:?}").contains("correct horse"));
    let mut dirs = vec![config.state_dir.clone()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                assert!(
                    !String::from_utf8_lossy(&bytes).contains("correct horse"),
                    "{} holds the password",
                    path.display()
                );
            }
        }
    }
}

#[tokio::test]
async fn a_backup_that_writes_no_file_fails_even_when_the_tool_says_success() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        ", FAKE_SSOCONFIG_NO_FILE = \"1\"",
        Some("correct horse"),
    );
    let a = assignment(
        ActionName::BackupSecret,
        &[("backup_dir", dir.path().to_str().unwrap())],
    );
    let (result, _) = run_collect(&config, &a).await;
    assert_eq!(result.outcome(), pb::StepOutcome::Failed);
    assert!(
        result
            .error
            .contains("reported success, but the backup file"),
        "{}",
        result.error
    );
    assert!(result.artifacts.is_empty());
}

#[tokio::test]
async fn backup_secret_failures_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let config_no_pw = config(dir.path(), "", None);
    let a = assignment(
        ActionName::BackupSecret,
        &[("backup_dir", dir.path().to_str().unwrap())],
    );
    let (result, events) = run_collect(&config_no_pw, &a).await;
    assert!(
        result
            .error
            .contains("needs [secrets] backup_password_file"),
        "{}",
        result.error
    );
    assert_eq!(events.len(), 1, "nothing ran");

    let short = config(dir.path(), "", Some("short"));
    let (result, _) = run_collect(&short, &a).await;
    assert!(
        result.error.contains("shorter than the 7 characters"),
        "{}",
        result.error
    );

    let not_master = config(
        dir.path(),
        ", FAKE_SSOCONFIG_FAIL = \"1\"",
        Some("correct horse"),
    );
    let (result, _) = run_collect(&not_master, &a).await;
    assert_eq!(result.outcome(), pb::StepOutcome::Failed);
    assert!(
        result.error.contains("0xC0002A0E"),
        "the tool's last stderr line: {}",
        result.error
    );
}

#[tokio::test]
async fn install_runs_the_setup_and_reports_its_failure_with_the_stderr_tail() {
    // Unix exit codes are 8 bits, so the simulated setup cannot exit 3010 here: see installer_exit_codes.
    let dir = tempfile::tempdir().unwrap();
    let a = assignment(ActionName::InstallSso, &[("target_version", "3.0.7")]);
    let ok = config(dir.path(), "", None);
    let (result, events) = run_collect(&ok, &a).await;
    assert_eq!(
        (result.outcome(), result.reboot_pending),
        (pb::StepOutcome::Succeeded, false),
        "{result:?}"
    );
    assert_well_formed(&events, &result);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("esso/version"))
            .unwrap()
            .trim(),
        "3.0.7"
    );

    let failing = config(dir.path(), ", FAKE_SETUP_EXIT = \"67\"", None);
    let (result, events) = run_collect(&failing, &a).await;
    assert_eq!(result.outcome(), pb::StepOutcome::Failed);
    assert_well_formed(&events, &result);
    assert_eq!(
        result.error,
        "install_sso exited with code 67: setup exited with 67 (simulated)"
    );
    assert_eq!(result.stderr_tail.len(), 2);
}

#[tokio::test]
async fn verify_checks_the_version_and_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let installed = config(dir.path(), "", None);
    std::fs::create_dir_all(dir.path().join("esso")).unwrap();
    std::fs::write(dir.path().join("esso/version"), "3.0.6\n").unwrap();
    let a = assignment(ActionName::VerifySso, &[("target_version", "3.0.7")]);
    let (result, _) = run_collect(&installed, &a).await;
    assert_eq!(result.error, "ESSO reports version 3.0.6, expected 3.0.7");

    std::fs::write(dir.path().join("esso/version"), "3.0.7\n").unwrap();
    let (result, _) = run_collect(&installed, &a).await;
    assert_eq!(result.outcome(), pb::StepOutcome::Succeeded, "{result:?}");

    let stopped = config(dir.path(), ", FAKE_ESSO_SERVICE = \"stopped\"", None);
    let (result, _) = run_collect(&stopped, &a).await;
    assert_eq!(result.error, "the ENTSSO service is stopped, not running");
}

#[tokio::test]
async fn an_action_without_a_command_here_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "", None);
    let (result, _) = run_collect(&config, &assignment(ActionName::RunMigration, &[])).await;
    assert_eq!(result.outcome(), pb::StepOutcome::Failed);
    assert!(
        result.error.contains("configure [actions.run_migration]"),
        "{}",
        result.error
    );
}

#[test]
fn assignments_from_the_wire_are_checked() {
    let ok = pb::StepAssignment {
        attempt_id: "x".into(),
        action: pb::Action::VerifySso as i32,
        timeout_ms: 1000,
        ..Default::default()
    };
    assert_eq!(
        Assignment::from_proto(ok.clone()).unwrap().action,
        ActionName::VerifySso
    );
    let unknown = pb::StepAssignment {
        action: 99,
        ..ok.clone()
    };
    assert_eq!(
        Assignment::from_proto(unknown).unwrap_err().0,
        pb::AssignmentDecision::UnknownAction
    );
    let no_timeout = pb::StepAssignment {
        timeout_ms: 0,
        ..ok
    };
    assert_eq!(
        Assignment::from_proto(no_timeout).unwrap_err().0,
        pb::AssignmentDecision::Invalid
    );
}

#[tokio::test]
async fn an_installer_changed_since_preflight_is_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let installer = dir.path().join("Setup.exe");
    std::fs::write(&installer, "installer as preflight read it\n").unwrap();
    let (_, read) = crate::hashing::sha256_file(&installer).await.unwrap();
    let path = installer.to_str().unwrap();
    let mut a = assignment(
        ActionName::InstallSso,
        &[("target_version", "3.0.7"), ("installer", path)],
    );
    a.expected_installer_sha256 = Some(read.clone());
    let config = config(dir.path(), "", None);
    let (result, _) = run_collect(&config, &a).await;
    assert_eq!(result.outcome(), pb::StepOutcome::Succeeded, "{result:?}");

    std::fs::write(&installer, "swapped\n").unwrap();
    std::fs::remove_file(dir.path().join("esso/version")).ok();
    let (result, events) = run_collect(&config, &a).await;
    assert_eq!(result.outcome(), pb::StepOutcome::Failed);
    assert!(
        result.error.contains(&format!(
            "but the run's preflight read {read}: it changed since; not installed"
        )),
        "{}",
        result.error
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.kind, Some(Kind::Started(_)))),
        "the setup never started"
    );
    assert!(!dir.path().join("esso/version").exists());
}

fn kinds(events: &[pb::StepEvent]) -> Vec<&Kind> {
    events.iter().filter_map(|e| e.kind.as_ref()).collect()
}

#[tokio::test]
async fn an_attended_install_waits_with_the_instruction_and_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "", None);
    let mut a = assignment(
        ActionName::InstallSso,
        &[
            ("target_version", "3.0.7"),
            ("installer", r"D:\media\Setup.exe"),
        ],
    );
    a.step = "upgrade-master".into();
    a.install_mode = pb::InstallMode::Attended;
    let (tx, mut rx) = mpsc::channel(64);
    assert!(execute(&config, &a, tx).await.is_none());
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.extend(Journaled::event(e));
    }
    assert_eq!(events.len(), 1, "{events:?}");
    let Some(Kind::Waiting(w)) = &events[0].kind else {
        panic!("{events:?}")
    };
    assert_eq!(w.reason(), pb::WaitReason::AttendedInstall);
    for part in [
        "on sso-dev-01, the master secret server, upgraded first,",
        r"run D:\media\Setup.exe",
        "Custom installation",
        "Join an existing SSO system",
        "choose Upgrade on the Summary page",
        "not when installing Host Integration Server where BizTalk Server already provides ESSO",
        "`fleetctl approve r-7 --node sso-dev-01`",
        "verifies ESSO 3.0.7",
    ] {
        assert!(
            w.instruction.contains(part),
            "{part:?} in {}",
            w.instruction
        );
    }
    assert!(
        !dir.path().join("esso/version").exists(),
        "the installer did not run"
    );
}

#[tokio::test]
async fn after_the_approval_or_the_reboot_the_install_is_verified_and_the_events_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "", None);
    let mut a = assignment(
        ActionName::InstallSso,
        &[("target_version", "3.0.7"), ("master", "sso-dev-01")],
    );
    a.install_mode = pb::InstallMode::Attended;
    let go_on = |config: AgentConfig, a: Assignment| async move {
        let (tx, mut rx) = mpsc::channel(64);
        let result = continue_after(&config, &a, 4, "the install was approved", tx).await;
        let mut events = Vec::new();
        while let Ok(e) = rx.try_recv() {
            events.extend(Journaled::event(e));
        }
        (result, events)
    };
    // The operator has not installed anything.
    let (result, events) = go_on(config.clone(), a.clone()).await;
    assert_eq!(result.outcome(), pb::StepOutcome::Failed);
    assert_eq!(
        result.error,
        "the install was approved, but the install is not right: no ESSO version is installed, expected 3.0.7"
    );
    assert_eq!(
        events.first().map(|e| e.seq),
        Some(5),
        "after the journal's last seq"
    );
    assert!(
        matches!(events.last().and_then(|e| e.kind.as_ref()), Some(Kind::Finished(f)) if *f == result)
    );
    // Installed: it counts.
    std::fs::create_dir_all(dir.path().join("esso")).unwrap();
    std::fs::write(dir.path().join("esso/version"), "3.0.7\n").unwrap();
    let (result, events) = go_on(config.clone(), a.clone()).await;
    assert_eq!(result.outcome(), pb::StepOutcome::Succeeded, "{result:?}");
    assert_eq!(
        result.outputs.get("version").map(String::as_str),
        Some("3.0.7")
    );
    assert!(
        matches!(kinds(&events)[0], Kind::Log(l) if l.line == "the install was approved: verifying the install (verify_sso)")
    );
    // Without a verify action there is no counting it.
    let mut bare = config.clone();
    bare.actions.remove(&ActionName::VerifySso);
    let (result, _) = go_on(bare, a).await;
    assert!(
        result.error.starts_with(
            "the install was approved, but the install cannot be verified: the built-in verify_sso"
        ),
        "{}",
        result.error
    );
}

#[tokio::test]
async fn a_reboot_the_install_asks_for_follows_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = assignment(ActionName::InstallSso, &[("target_version", "3.0.7")]);
    a.timeout = Duration::from_millis(300);

    // Policy never: installed, reboot pending, the server is left alone.
    let never = config(dir.path(), ", FAKE_SETUP_REBOOT = \"required\"", None);
    let (result, events) = run_collect(&never, &a).await;
    assert_eq!(
        (result.outcome(), result.reboot_pending),
        (pb::StepOutcome::Succeeded, true),
        "{result:?}"
    );
    assert!(
        kinds(&events).iter().any(
            |k| matches!(k, Kind::Log(l) if l.line.contains("the reboot policy is \"never\""))
        )
    );
    assert!(!kinds(&events).iter().any(|k| matches!(k, Kind::Waiting(_))));

    // The installer restarts the server itself: the attempt waits for that, whatever the policy. When
    // the server is still up after the step timeout, it waits on for a restart by hand (no timeout),
    // so that the restart that comes later still ends in the verification.
    let started = config(dir.path(), ", FAKE_SETUP_REBOOT = \"started\"", None);
    let waits = waits_collect(&started, &a).await;
    assert_eq!(
        waits.iter().map(|w| w.reason()).collect::<Vec<_>>(),
        [pb::WaitReason::Reboot, pb::WaitReason::RestartByHand]
    );
    assert!(
        waits[0].instruction.contains("restarts sso-dev-01"),
        "{}",
        waits[0].instruction
    );
    assert!(
        waits[1].instruction.contains("but the server did not restart within 300ms of the reboot: restart sso-dev-01, and the agent verifies the install when it is back"),
        "{}",
        waits[1].instruction
    );
    let boot = crate::host::boot_id(None).await.unwrap();
    assert!(
        waits.iter().all(|w| w.boot_id == boot),
        "both waits name the boot the install ran in"
    );

    // if-required: the agent restarts the server; here no shutdown.exe exists: it waits for a
    // restart by hand at once.
    let mut if_required = config(dir.path(), ", FAKE_SETUP_REBOOT = \"required\"", None);
    if_required.reboot = RebootPolicy::IfRequired;
    if cfg!(not(windows)) {
        let waits = waits_collect(&if_required, &a).await;
        assert_eq!(waits.len(), 2);
        assert!(
            waits[1]
                .instruction
                .contains("but the server cannot be restarted: this platform has no shutdown.exe"),
            "{}",
            waits[1].instruction
        );
    }
}

/// Runs an attempt that ends waiting: its waits, in order, the last one being the attempt's end.
async fn waits_collect(config: &AgentConfig, a: &Assignment) -> Vec<pb::StepWaiting> {
    let (tx, mut rx) = mpsc::channel(1024);
    assert_eq!(execute(config, a, tx).await, None, "the attempt waits");
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.extend(Journaled::event(e));
    }
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    assert!(matches!(
        events.last().and_then(|e| e.kind.as_ref()),
        Some(Kind::Waiting(_))
    ));
    kinds(&events)
        .into_iter()
        .filter_map(|k| match k {
            Kind::Waiting(w) => Some(w.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_byte_order_mark_and_line_end_are_not_part_of_the_backup_password() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "", Some("\u{feff}correct horse\r"));
    assert_eq!(read_secret(&config).await.unwrap(), "correct horse");
}

fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

/// A fresh install asks for ESSO's configuration: the agent runs configure_sso next (here the
/// customer's own command), the backup password on its standard input only when it creates the SSO
/// system; a failed configuration fails the install step.
#[tokio::test]
async fn a_fresh_install_is_followed_by_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("backup-password"), "correct horse\n").unwrap();
    let install = script(
        dir.path(),
        "install",
        "echo '::output:: configure_needed=true'",
    );
    let stdin = dir.path().join("configure.stdin");
    let configure = script(
        dir.path(),
        "configure",
        &format!(
            "cat > '{stdin}'\necho \"::output:: configured=$1\"\nif [ \"$SSOFLEET_SSO_CONFIGURE\" = create ]; then printf 'new secret' > '{bak}'; echo '::output:: backup_file={bak}'; echo '::output:: backup_reminder=rem'; fi\nexit ${{CONFIGURE_EXIT:-0}}",
            stdin = stdin.display(),
            bak = dir.path().join("new.bak").display()
        ),
    );
    let text = |exit: u8| {
        format!(
            r#"node = "sso-dev-01"
coordinator = "https://127.0.0.1:1"
state_dir = "state"
[tls]
ca = "ca.pem"
cert = "agent.pem"
key = "agent-key.pem"
[secrets]
backup_password_file = "backup-password"
[actions.install_sso]
program = "{install}"
[actions.configure_sso]
program = "{configure}"
args = ["{{node}}"]
env = {{ CONFIGURE_EXIT = "{exit}" }}
"#
        )
    };
    let config = AgentConfig::parse(&dir.path().join("agent.toml"), &text(0)).unwrap();
    let create = assignment(
        ActionName::InstallSso,
        &[("installer", "/m/Setup.exe"), ("sso_configure", "create")],
    );
    let (result, events) = run_collect(&config, &create).await;
    assert_eq!(result.outcome(), pb::StepOutcome::Succeeded, "{result:?}");
    assert_eq!(
        result.outputs.get("configured").map(String::as_str),
        Some("sso-dev-01")
    );
    assert_eq!(std::fs::read_to_string(&stdin).unwrap(), "correct horse\n");
    assert!(!format!("{events:?}").contains("correct horse"));
    // The new master secret's backup is the attempt's artifact, with its reminder.
    let backups: Vec<(&str, &str)> = result
        .artifacts
        .iter()
        .map(|a| (a.kind.as_str(), a.note.as_str()))
        .collect();
    assert_eq!(backups, [("secret-backup", "password reminder: rem")]);

    let join = assignment(ActionName::InstallSso, &[("installer", "/m/Setup.exe")]);
    let (result, _) = run_collect(&config, &join).await;
    assert_eq!(result.outcome(), pb::StepOutcome::Succeeded, "{result:?}");
    assert_eq!(
        std::fs::read_to_string(&stdin).unwrap(),
        "",
        "Join needs no secret"
    );

    let config = AgentConfig::parse(&dir.path().join("agent.toml"), &text(4)).unwrap();
    let (result, _) = run_collect(&config, &join).await;
    assert_eq!(result.outcome(), pb::StepOutcome::Failed);
    assert_eq!(
        result.error,
        "installed, but ESSO's configuration failed: configure_sso exited with code 4"
    );
}
