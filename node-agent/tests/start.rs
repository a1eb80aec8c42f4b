//! The `fleet-agent` binary's start-up checks (exit status 2 with a message naming the problem).
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn agent(config: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fleet-agent"))
        .args(["--config", config.to_str().unwrap()])
        .output()
        .unwrap()
}

const CONFIG: &str = r#"node = "sso-dev-01"
coordinator = "https://127.0.0.1:1"
state_dir = "state"
[tls]
ca = "ca.pem"
cert = "agent.pem"
key = "agent-key.pem"
"#;

#[test]
fn an_invalid_config_names_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, CONFIG.replace("state_dir", "statedir")).unwrap();
    let o = agent(&config);
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(&format!(
            "{}: line 3, key statedir: unknown key `statedir`",
            config.display()
        )),
        "{stderr}"
    );
}

#[test]
fn a_missing_certificate_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let o = agent(&config);
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(&format!(
            "{}: file not found",
            dir.path().join("ca.pem").display()
        )),
        "{stderr}"
    );
}

#[test]
fn with_a_log_dir_the_log_goes_to_daily_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let logs = dir.path().join("logs");
    let o = Command::new(env!("CARGO_BIN_EXE_fleet-agent"))
        .args(["--config", config.to_str().unwrap(), "--log-dir"])
        .arg(&logs)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("fleet-agent.log."), "{name}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.contains("file not found"), "{text}");
}

#[cfg(not(windows))]
#[test]
fn service_mode_is_for_windows_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_fleet-agent"))
        .args(["--config", config.to_str().unwrap(), "--service"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("runs the agent as a Windows service"),
        "{o:?}"
    );
}

/// `--facts` reads the server without attaching (no certificates needed) and prints what it found.
#[cfg(unix)]
#[test]
fn facts_are_printed_without_attaching() {
    let dir = tempfile::tempdir().unwrap();
    let facts = dir.path().join("facts.sh");
    std::fs::write(
        &facts,
        "#!/bin/sh\necho '::output:: version=3.0.7.0'\necho '::output:: service=running'\necho '::output:: check.msdtc=failed: MSDTC is stopped'\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&facts, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "{CONFIG}[actions.facts]\nprogram = \"{}\"\n",
            facts.display()
        ),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_fleet-agent"))
        .args(["--config", config.to_str().unwrap(), "--facts"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for line in [
        "esso_version: 3.0.7.0\n",
        "service: running\n",
        "overridden_actions: facts\n",
        "check.msdtc: FAILED MSDTC is stopped\n",
    ] {
        assert!(stdout.contains(line), "{line:?} in {stdout}");
    }
}
