//! `fleetctl demo`: a whole fleet on this machine, in a temporary directory: certificates, a
//! coordinator and seven agents (two environments: a master and three members, a master and two
//! members), all over mutual TLS on 127.0.0.1. Their actions are the simulated ESSO tools (shell
//! scripts embedded here, the same as `tests/fixtures`). It upgrades them end to end with live
//! progress, then stops everything and removes the directory.
//!
//! Unix only, since the tools are shell scripts: this module is where `fleetctl` links the
//! coordinator and the agent, and on Windows it links neither.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_agent::attach::Agent;
use fleet_agent::config::{AgentConfig, written};
use fleet_coordinator::Coordinator;
use fleet_coordinator::settings::Settings;
use fleet_proto::pb;
use tokio_util::sync::CancellationToken;

use crate::Output;
use crate::error::{CliError, Result};

const TOOLS: [(&str, &str); 4] = [
    (
        "esso-facts",
        include_str!("../../tests/fixtures/esso-facts"),
    ),
    ("ssoconfig", include_str!("../../tests/fixtures/ssoconfig")),
    (
        "esso-setup",
        include_str!("../../tests/fixtures/esso-setup"),
    ),
    (
        "esso-verify",
        include_str!("../../tests/fixtures/esso-verify"),
    ),
];

/// (environment, node, ESSO version before the upgrade)
const NODES: [(&str, &str, &str); 7] = [
    ("dev", "sso-dev-01", "3.0.6"),
    ("dev", "sso-dev-02", "3.0.6"),
    ("dev", "sso-dev-03", "3.0.7"),
    ("dev", "sso-dev-04", "3.0.6"),
    ("prod", "sso-prod-01", "3.0.6"),
    ("prod", "sso-prod-02", "3.0.6"),
    ("prod", "sso-prod-03", "3.0.6"),
];

const FLEET: &str = r#"# The demo's inventory: two SSO systems, upgraded one after the other.
[upgrade]
target_version = "3.0.7"
installer = 'INSTALLER'

[policy]
max_parallel = 2
max_failures = 0
step_timeout = "5m"

# The demo's agents install with their own commands ([actions.install_sso], simulated tools): that
# is what lets an environment install unattended (a BizTalk setup upgrade cannot be silent).
[[environment]]
name = "dev"
gate = "auto"
install = "unattended"
master = "sso-dev-01"
members = ["sso-dev-02", "sso-dev-03", "sso-dev-04"]
backup_dir = 'BACKUPS'

[[environment]]
name = "prod"
gate = "soak 2s"
install = "unattended"
master = "sso-prod-01"
members = ["sso-prod-02", "sso-prod-03"]
backup_dir = 'BACKUPS'
"#;

fn setup_err(what: &str) -> impl Fn(std::io::Error) -> CliError + '_ {
    move |e| CliError::Failed(format!("demo: {what}: {e}"))
}

fn write_executable(path: &Path, content: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content).map_err(setup_err("writing the simulated tools"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(setup_err("making the tools executable"))?;
    Ok(())
}

/// `dir/agent.toml`: certificates and state beside it, the upgrade's actions on the simulated tools.
fn agent_toml(dir: &Path, tools: &Path, node: &str, port: u16) -> String {
    let home = dir.join("esso").display().to_string();
    let env = written::env(&[
        ("FAKE_ESSO_HOME", &home),
        ("FAKE_ESSO_NODE", node),
        ("FAKE_SETUP_SECONDS", "2"),
    ]);
    let head = written::Head {
        node,
        coordinator: &format!("https://127.0.0.1:{port}"),
        state_dir: "state",
        ca: "ca.pem",
        cert: "agent.pem",
        key: "agent-key.pem",
        reconnect: None,
    };
    let actions: String = written::simulated_esso(tools)
        .into_iter()
        .map(|action| action.env(&env).render())
        .collect();
    head.render() + &written::secrets("backup-password") + &actions
}

/// First thing in `main`: the demo runs its agents in this process, and an agent starts an
/// install's program under a step host of its own executable (`fleet-agent --step-host`): here,
/// fleetctl itself, which then serves as that step host and exits.
pub(crate) fn step_host_if_asked() {
    fleet_agent::runner::step_host::run_if_asked();
}

pub(crate) async fn run(output: Output) -> Result<()> {
    let temp = tempfile::Builder::new()
        .prefix("ssofleet-demo-")
        .tempdir()
        .map_err(setup_err("creating a temporary directory"))?;
    let root = temp.path();
    let say = |line: String| {
        if output == Output::Text {
            println!("{line}");
        }
    };
    say(format!(
        "demo: a fleet of {} SSO servers in {}",
        NODES.len(),
        root.display()
    ));

    // Certificates, tools, inventory.
    let tls = root.join("tls");
    crate::certs::init(
        &tls,
        crate::certs::DEFAULT_TRUST_DOMAIN,
        &[],
        "demo-operator",
        1,
        false,
    )?;
    let tools = root.join("tools");
    std::fs::create_dir_all(&tools).map_err(setup_err("creating the tools directory"))?;
    for (name, content) in TOOLS {
        write_executable(&tools.join(name), content)?;
    }
    let backups = root.join("backups");
    std::fs::create_dir_all(&backups).map_err(setup_err("creating the backup directory"))?;
    let installer = root.join("media").join("Setup.exe");
    std::fs::create_dir_all(root.join("media"))
        .map_err(setup_err("creating the media directory"))?;
    std::fs::write(
        &installer,
        "simulated BizTalk / ESSO setup, version 3.0.7\n",
    )
    .map_err(setup_err("writing the installer"))?;
    let inventory = root.join("fleet.toml");
    let text = FLEET
        .replace("BACKUPS", &backups.display().to_string())
        .replace("INSTALLER", &installer.display().to_string());
    std::fs::write(&inventory, text).map_err(setup_err("writing fleet.toml"))?;

    // The coordinator, in this process.
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(setup_err("listening on 127.0.0.1"))?;
    let port = listener
        .local_addr()
        .map_err(setup_err("reading the port"))?
        .port();
    let settings = Settings {
        listen: ([127, 0, 0, 1], port).into(),
        inventory,
        state_dir: root.join("state"),
        tls_dir: tls.clone(),
        heartbeat_interval: Duration::from_secs(1),
        heartbeat_timeout: Duration::from_secs(5),
        log_json: false,
    };
    let coordinator =
        Coordinator::load(&settings).map_err(|e| CliError::Failed(format!("demo: {e}")))?;
    let coordinator_task = tokio::spawn(coordinator.run(listener, shutdown.clone()));
    say(format!("demo: coordinator on https://127.0.0.1:{port}"));

    // Seven agents, in this process, each with its own certificate and mTLS connection.
    let mut agents = Vec::new();
    for (_, node, version) in NODES {
        let dir = root.join("agents").join(node);
        crate::certs::issue(&dir, &tls, crate::certs::IssueFor::Agent(node), 1, false)?;
        std::fs::create_dir_all(dir.join("esso"))
            .map_err(setup_err("creating a simulated server"))?;
        std::fs::write(dir.join("esso/version"), format!("{version}\n"))
            .map_err(setup_err("writing a simulated server"))?;
        std::fs::write(dir.join("backup-password"), "demo password 1234\n")
            .map_err(setup_err("writing a backup password"))?;
        let config_path = dir.join("agent.toml");
        std::fs::write(&config_path, agent_toml(&dir, &tools, node, port))
            .map_err(setup_err("writing agent.toml"))?;
        let config =
            AgentConfig::load(&config_path).map_err(|e| CliError::Failed(format!("demo: {e}")))?;
        let agent = Agent::new(config).map_err(|e| CliError::Failed(format!("demo: {e}")))?;
        agents.push(tokio::spawn(agent.run(shutdown.clone())));
    }

    let result = drive(&tls, port, output, &say).await;

    shutdown.cancel();
    for agent in agents {
        let _ = agent.await;
    }
    let _ = coordinator_task.await;
    let kept: PathBuf = root.to_path_buf();
    drop(temp);
    say(format!(
        "demo: stopped the coordinator and the agents, removed {}",
        kept.display()
    ));
    result
}

/// Waits for every agent, shows the plan, and runs the upgrade with live progress.
async fn drive(tls: &Path, port: u16, output: Output, say: &dyn Fn(String)) -> Result<()> {
    let url = format!("https://127.0.0.1:{port}");
    let mut remote = crate::remote::connect(&url, Some(&tls.to_path_buf())).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let nodes = remote
            .client
            .list_nodes(pb::ListNodesRequest {})
            .await
            .map_err(|s| CliError::from_status(&s, &url))?
            .into_inner()
            .nodes;
        let attached = nodes.iter().filter(|n| n.attached).count();
        if attached == NODES.len() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(CliError::Failed(format!(
                "demo: only {attached} of {} agents attached within 30 s",
                NODES.len()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    say(format!(
        "demo: all {} agents attached; sso-dev-03 is already on 3.0.7\n",
        NODES.len()
    ));
    if output == Output::Text {
        crate::plan::show(
            &mut remote,
            crate::plan::selection(true, &[], false, None, None),
            output,
        )
        .await?;
        println!();
    }
    crate::runs::upgrade(
        &mut remote,
        crate::plan::selection(true, &[], false, None, None),
        None,
        false,
        output,
    )
    .await
}
