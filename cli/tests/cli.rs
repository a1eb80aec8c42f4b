//! The `fleetctl` binary: certificate files as SPEC §8 names them, and exit statuses for usage errors.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn fleetctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(args)
        .env_remove("FLEET_TLS_DIR")
        .env_remove("FLEET_COORDINATOR")
        .output()
        .unwrap()
}

#[test]
fn certs_init_and_issue_write_the_spec_file_names() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let o = fleetctl(&[
        "certs",
        "init",
        "--out",
        ca.to_str().unwrap(),
        "--san",
        "coord.corp.example",
    ]);
    assert!(o.status.success(), "{o:?}");
    let mut names: Vec<String> = std::fs::read_dir(&ca)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ca-key.pem",
            "ca.pem",
            "coordinator-key.pem",
            "coordinator.pem",
            "operator-key.pem",
            "operator.pem"
        ]
    );

    let out = dir.path().join("bob");
    let o = fleetctl(&[
        "--output",
        "json",
        "certs",
        "issue",
        "--out",
        out.to_str().unwrap(),
        "--ca-dir",
        ca.to_str().unwrap(),
        "--operator",
        "bob",
    ]);
    assert!(o.status.success(), "{o:?}");
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["written"].as_array().unwrap().len(), 3);
    assert!(
        out.join("operator.pem").exists()
            && out.join("operator-key.pem").exists()
            && out.join("ca.pem").exists()
    );
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(fleetctl(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(
        fleetctl(&["certs", "issue", "--out", "x", "--ca-dir", "y"])
            .status
            .code(),
        Some(2)
    );
    // No TLS directory for a command that talks to the coordinator.
    let o = fleetctl(&["nodes"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--tls-dir"),
        "{o:?}"
    );
}

#[test]
fn migrate_needs_its_environment() {
    let o = fleetctl(&["migrate"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--env"),
        "{o:?}"
    );
}

/// From a directory of its own: the demo carries its simulated tools and needs no source tree.
#[cfg(unix)]
#[test]
fn the_demo_upgrades_a_local_fleet_end_to_end_and_cleans_up() {
    let elsewhere = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(["--output", "json", "demo"])
        .current_dir(elsewhere.path())
        .env_remove("FLEET_TLS_DIR")
        .env_remove("FLEET_COORDINATOR")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(run["state"], "succeeded", "{run}");
    let steps = run["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 22);
    let state = |node: &str, step: &str| {
        steps
            .iter()
            .find(|s| s["node"] == node && s["step"] == step)
            .map(|s| s["state"].as_str().unwrap().to_string())
    };
    assert_eq!(
        state("sso-dev-03", "upgrade").as_deref(),
        Some("already-current")
    );
    assert_eq!(state("sso-prod-03", "verify").as_deref(), Some("succeeded"));
    // The temporary fleet is gone.
    let backup =
        steps.iter().find(|s| s["step"] == "backup-secret").unwrap()["artifacts"][0]["path"]
            .as_str()
            .unwrap()
            .to_string();
    assert!(
        !std::path::Path::new(&backup).exists(),
        "{backup} left behind"
    );
}
