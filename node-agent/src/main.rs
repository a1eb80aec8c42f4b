//! `fleet-agent --config agent.toml`: attaches to the coordinator and re-attaches, forever.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use fleet_agent::attach::Agent;
use fleet_agent::config::AgentConfig;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "fleet-agent", version, about = "ssofleet node agent")]
struct Args {
    /// The agent's configuration file.
    #[arg(long)]
    config: PathBuf,
    /// Log format: text or json.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    fleet_proto::logging::init(args.log_format == "json");
    let config = match AgentConfig::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("fleet-agent: invalid configuration:\n{e}");
            return ExitCode::from(2);
        }
    };
    let agent = match Agent::new(config) {
        Ok(agent) => agent,
        Err(e) => {
            eprintln!("fleet-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        stop.cancel();
    });
    agent.run(shutdown).await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
