//! The agent's built-in Windows actions in a real run, with fixture scripts standing in for the
//! Windows tools (`ssomanage`, `powershell` running the backup script, `wevtutil`, `shutdown`, and `sc`
//! and `reg` for the service controller's and the registry's APIs; `[tools]` in agent.toml), and
//! the reboot an install asks for: the agent restarts the server (reboot policy `if-required`), and
//! the agent that starts after the "reboot" verifies the install and finishes the step.

use std::path::{Path, PathBuf};

use fleet_tests::{Agent, AgentSpec, PATIENCE, esso_env, eventually, fixture, path_str};

use crate::durability::{step_of, wait_final};
use crate::upgrade::{FLEET, NODES, Setup, setup};

pub(crate) fn script(path: &Path, body: &str) -> PathBuf {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_path_buf()
}

/// The simulated Windows server of `node`: ENTSSO and MSDTC running, ESSO 3.0.6.0 in the registry's
/// 32-bit view (KB 2908466), the master secret server's `SSOSS` key, the SSO database naming
/// `M1.corp.example` as the master secret server. Returns its state directory.
fn windows_server(s: &Setup, node: &str) -> PathBuf {
    let win = s.fleet.path(&format!("agents/{node}/win"));
    std::fs::create_dir_all(win.join("reg/32")).unwrap();
    std::fs::write(win.join("service.ENTSSO"), "running\n").unwrap();
    std::fs::write(win.join("service.MSDTC"), "running\n").unwrap();
    let sample = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../node-agent/src/builtin/samples/reg-query-entsso-key.txt"),
    )
    .unwrap()
    .replace("REG_SZ    3.0.7.0", "REG_SZ    3.0.6.0");
    std::fs::write(win.join("reg/32/HKLM_SOFTWARE_Microsoft_ENTSSO"), sample).unwrap();
    std::fs::write(
        win.join("reg/32/HKLM_SOFTWARE_Microsoft_ENTSSO_SSOSS"),
        "\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\WOW6432Node\\Microsoft\\ENTSSO\\SSOSS\r\n",
    )
    .unwrap();
    std::fs::write(win.join("secret_server"), "M1.corp.example").unwrap();
    win
}

/// agent.toml for `node` with the built-in actions over the Windows fixtures, and an install that
/// asks for a reboot (the configured setup; it also records the new version in the registry).
fn built_in_config(s: &Setup, node: &str, win: &Path) -> (String, String) {
    let bin = s.fleet.path(&format!("agents/{node}/bin"));
    std::fs::create_dir_all(&bin).unwrap();
    let fixtures = fixture("windows");
    let mut tools = String::from("[tools]\n");
    for tool in [
        "sc",
        "reg",
        "ssomanage",
        "powershell",
        "wevtutil",
        "shutdown",
        "boot_id",
    ] {
        let wrapper = script(
            &bin.join(tool),
            &format!(
                "FAKE_WIN_DIR='{}' exec '{}' \"$@\"",
                win.display(),
                fixtures.join(tool).display()
            ),
        );
        tools.push_str(&format!("{tool} = \"{}\"\n", wrapper.display()));
    }
    tools.push_str(&format!("esso_dir = \"{}\"\n", win.join("esso").display()));
    let install = script(
        &bin.join("install"),
        &format!(
            "'{}' \"$1\" || exit $?\nsed -i -e \"s/Server    REG_SZ    .*/Server    REG_SZ    $1\\r/\" -e \"s/Administration    REG_SZ    .*/Administration    REG_SZ    $1\\r/\" '{}'",
            fixture("esso-setup").display(),
            win.join("reg/32/HKLM_SOFTWARE_Microsoft_ENTSSO").display()
        ),
    );
    let password = s
        .fleet
        .write(
            &format!("agents/{node}/backup-password"),
            "correct horse battery\n",
        )
        .unwrap();
    let extra = format!(
        r#"[secrets]
backup_password_file = "{}"
{tools}[actions.install_sso]
program = "{}"
args = ["{{target_version}}"]
env = {{ {}, FAKE_SETUP_REBOOT = "required" }}
"#,
        password.display(),
        install.display(),
        esso_env(&s.fleet, node),
    );
    ("reboot = \"if-required\"\n".to_string(), extra)
}

pub(crate) fn start_agent(s: &Setup, node: &str, top: &str, extra: &str) -> Agent {
    let tls = format!("agents/{node}/tls");
    Agent::start_with_top(
        &s.fleet,
        &AgentSpec {
            node,
            tls_rel: &tls,
            coordinator: &s.coordinator.url(),
            version: "3.0.6",
        },
        top,
        extra,
    )
    .unwrap()
}

pub(crate) fn calls(win: &Path) -> Vec<String> {
    std::fs::read_to_string(win.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn the_built_in_actions_back_up_install_reboot_and_verify_a_master() {
    let test_started = jiff::Timestamp::now();
    let mut s = setup(FLEET, &[], &[]);
    let m1 = NODES.iter().position(|(n, _)| *n == "m1").unwrap();
    s.agents[m1].process.kill();
    let win = windows_server(&s, "m1");
    let (top, extra) = built_in_config(&s, "m1", &win);
    s.agents[m1] = start_agent(&s, "m1", &top, &extra);
    s.coordinator.wait_attached(&s.fleet, "m1", true);

    let (code, started) = s.json(&["upgrade", "--env", "dev", "--detach"]);
    assert_eq!(code, Some(0), "{started}");
    let run_id = started["run_id"].as_str().unwrap().to_string();

    // The install asked for a reboot: the agent ran shutdown.exe, and waits for the server to go down.
    let shutdown = eventually(PATIENCE, "the agent restarting the server", || {
        calls(&win).into_iter().find(|c| c.starts_with("shutdown"))
    });
    assert!(
        shutdown.starts_with("shutdown [/r] [/t] [30] [/c] [ssofleet: upgrade-master of run ")
            && shutdown.ends_with("[/d] [p:4:2]"),
        "{shutdown}"
    );
    let (_, run) = s.json(&["run", "show", &run_id]);
    assert_eq!(
        step_of(&run, "m1", "upgrade-master")["state"],
        "running",
        "{run}"
    );
    assert!(
        !calls(&win).iter().any(|c| c.starts_with("ssomanage")),
        "not verified before the reboot"
    );
    // The backup was the built-in one (ISSOConfigSS.BackupSecret from the agent's PowerShell
    // script): the password went to the script's standard input only, the reminder after it.
    let backup = calls(&win)
        .into_iter()
        .find(|c| c.starts_with("powershell"))
        .unwrap();
    assert!(backup.contains("[-File] ["), "{backup}");
    assert!(!backup.contains("correct horse"), "{backup}");
    let stdin = std::fs::read_to_string(win.join("stdin.powershell")).unwrap();
    assert!(
        stdin.starts_with("correct horse battery\nssofleet backup dev m1 "),
        "{stdin}"
    );

    // The agent restarts but the server does not (the same boot): nothing is verified, and the step
    // waits for a restart by hand, without a timeout.
    s.agents[m1].process.kill();
    s.agents[m1] = start_agent(&s, "m1", &top, &extra);
    let run = eventually(PATIENCE, "the step waiting for a restart by hand", || {
        let (_, run) = s.json(&["run", "show", &run_id]);
        (step_of(&run, "m1", "upgrade-master")["state"] == "waiting").then_some(run)
    });
    let message = step_of(&run, "m1", "upgrade-master")["message"].to_string();
    assert!(
        message.contains("installed, but the server has not restarted (the agent restarted in the same boot): restart m1, and the agent verifies the install when it is back"),
        "{message}"
    );
    assert!(
        !calls(&win).iter().any(|c| c.starts_with("ssomanage")),
        "not verified without a reboot"
    );

    // The server goes down (the agent with it) and comes back in another boot: the agent verifies,
    // then reports.
    s.agents[m1].process.kill();
    std::fs::write(win.join("boot-id"), "boot-2\n").unwrap();
    s.agents[m1] = start_agent(&s, "m1", &top, &extra);
    let run = wait_final(&s, &run_id, PATIENCE);
    assert_eq!(run["state"], "succeeded", "{run}");
    let upgrade = step_of(&run, "m1", "upgrade-master");
    assert_eq!(upgrade["attempts"], 1, "{run}");
    let log = s.step_log(&run_id, "m1", "upgrade-master");
    for line in [
        "waiting: the install reported that a reboot is required: the agent restarts m1",
        "the server restarted after the install: verifying the install (verify_sso)",
        "version=3.0.7",
        "secret_server=M1.corp.example",
    ] {
        assert!(log.contains(line), "{line:?} in\n{log}");
    }
    // verify-master ran the built-in verification too: ENTSSO, the registry, the SSO database.
    let after_reboot: Vec<String> = calls(&win)
        .into_iter()
        .skip_while(|c| !c.starts_with("shutdown"))
        .collect();
    assert!(
        after_reboot
            .iter()
            .filter(|c| c.starts_with("ssomanage [-displaydb]"))
            .count()
            >= 2,
        "{after_reboot:?}"
    );
    // Both verifications read ESSO's events since the install began, not a day back: the one that
    // finishes the install from its journaled assignment, verify-master from the coordinator.
    let since: Vec<jiff::Timestamp> = after_reboot
        .iter()
        .filter(|c| c.starts_with("wevtutil"))
        .filter_map(|c| c.split("@SystemTime>='").nth(1))
        .filter_map(|t| t.split('\'').next())
        .map(|t| t.parse().unwrap())
        .collect();
    assert_eq!(since.len(), 2, "{after_reboot:?}");
    for at in since {
        assert!(
            at >= test_started && at <= jiff::Timestamp::now(),
            "events since {at}, the test started at {test_started}"
        );
    }
    assert!(path_str(&win).is_ok());
}
