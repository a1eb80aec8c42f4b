//! The `fleet-coordinator` binary's start-up checks (exit status 2 with a message naming the problem).
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn coordinator(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fleet-coordinator"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_missing_setting_is_named() {
    let o = coordinator(&[
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        "s",
        "--tls-dir",
        "t",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("missing --inventory"), "{stderr}");
}

#[test]
fn an_unreadable_inventory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("fleet.toml");
    let o = coordinator(&[
        "--listen",
        "127.0.0.1:0",
        "--inventory",
        missing.to_str().unwrap(),
        "--state-dir",
        dir.path().join("state").to_str().unwrap(),
        "--tls-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(&format!("{}: cannot read the file", missing.display())),
        "{stderr}"
    );
}

#[test]
fn a_bad_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\nheartbeat_timeout = \"soon\"\n",
    )
    .unwrap();
    let o = coordinator(&["--config", config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("key heartbeat_timeout: \"soon\" is not a duration"),
        "{stderr}"
    );
}
