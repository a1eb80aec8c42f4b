//! Every inventory error of SPEC §4 is named with file, line and key, by `fleetctl inventory check`
//! and by a coordinator that refuses to start.

use std::process::Command;

use fleet_tests::{Fleet, bin, fleetctl, path_str};

use crate::FLEET;

/// (what is wrong, the inventory, the line and key the message must name)
fn cases() -> Vec<(&'static str, String, &'static str)> {
    vec![
        (
            "unknown key",
            FLEET.replace(
                "backup_dir = '/backups/dev'",
                "backup_dir = '/backups/dev'\nbackupdir = 'x'",
            ),
            "line 11, key environment[0].backupdir: unknown key `backupdir`",
        ),
        (
            "duplicate node name",
            FLEET.replace(r#"members = ["a2"]"#, r#"members = ["a2", "A2"]"#),
            "line 9, key environment[0].members[1]: duplicate node name \"a2\"",
        ),
        (
            "node in two environments",
            FLEET.replace("master = \"p1\"", "master = \"p1\"\nmembers = [\"a2\"]"),
            "line 15, key environment[1].members[0]: node \"a2\" is already in environment \"dev\"",
        ),
        (
            "member equal to the master",
            FLEET.replace(r#"members = ["a2"]"#, r#"members = ["a1"]"#),
            "line 9, key environment[0].members[0]: \"a1\" is this environment's master",
        ),
        (
            "empty environment name",
            FLEET.replace("name = \"prod\"", "name = \"\""),
            "line 13, key environment[1].name: the environment name is empty",
        ),
    ]
}

#[test]
fn inventory_check_names_file_line_and_key() {
    let fleet = Fleet::new().unwrap();
    let good = fleet.write("good.toml", FLEET).unwrap();
    let o = fleetctl(&["inventory", "check", path_str(&good).unwrap()]);
    assert!(o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("valid: 2 environment(s), 3 node(s)"),
        "{o:?}"
    );

    for (what, text, expected) in cases() {
        let file = fleet.write("bad.toml", &text).unwrap();
        let o = fleetctl(&["inventory", "check", path_str(&file).unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{what}: {o:?}");
        let stderr = String::from_utf8_lossy(&o.stderr);
        let expected = format!("{}: {expected}", file.display());
        assert!(
            stderr.contains(&expected),
            "{what}: expected {expected:?} in:\n{stderr}"
        );

        let o = fleetctl(&[
            "--output",
            "json",
            "inventory",
            "check",
            path_str(&file).unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(2), "{what}");
        let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(json["valid"], false);
        assert!(json["problems"][0]["line"].as_u64().unwrap() > 0, "{json}");
    }
}

/// Runs `fleet-coordinator` on the fleet's `tls/` with `inventory` to completion.
fn run_coordinator(fleet: &Fleet, inventory: &std::path::Path) -> std::process::Output {
    Command::new(bin("fleet-coordinator"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--inventory",
            path_str(inventory).unwrap(),
            "--state-dir",
            path_str(&fleet.path("state")).unwrap(),
            "--tls-dir",
            path_str(&fleet.path("tls")).unwrap(),
        ])
        .output()
        .unwrap()
}

#[test]
fn the_coordinator_refuses_to_start_on_an_invalid_inventory() {
    let fleet = Fleet::new().unwrap();
    for (what, text, expected) in cases() {
        let inventory = fleet.write("fleet.toml", &text).unwrap();
        let o = run_coordinator(&fleet, &inventory);
        assert_eq!(o.status.code(), Some(2), "{what}: {o:?}");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(stderr.contains("refusing to start"), "{what}: {stderr}");
        assert!(
            stderr.contains(&format!("{}: {expected}", inventory.display())),
            "{what}: {stderr}"
        );
        assert!(!stderr.contains("listening on"), "{what}: {stderr}");
    }
}

#[test]
fn the_coordinator_names_a_bad_tls_file() {
    let fleet = Fleet::new().unwrap();
    fleet.write("fleet.toml", FLEET).unwrap();
    std::fs::write(fleet.path("tls/coordinator-key.pem"), "not a key").unwrap();
    let o = run_coordinator(&fleet, &fleet.path("fleet.toml"));
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("coordinator-key.pem: not a PEM file"),
        "{stderr}"
    );
}

#[test]
fn the_deploy_example_inventory_is_valid() {
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/fleet.toml");
    let o = fleetctl(&["inventory", "check", path_str(&example).unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("valid: 2 environment(s), 5 node(s)"),
        "{o:?}"
    );
}
