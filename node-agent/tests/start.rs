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
