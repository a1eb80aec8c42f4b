//! `fleet-coordinator`: parses flags, sets up logging, and serves until Ctrl-C / SIGTERM.
use std::process::ExitCode;

use clap::Parser;
use fleet_coordinator::{Coordinator, StartError, settings::Args};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let settings = match Args::parse().settings() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("fleet-coordinator: {e}");
            return ExitCode::from(2);
        }
    };
    fleet_proto::logging::init(settings.log_json);
    let coordinator = match Coordinator::load(&settings) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("refusing to start: {e}");
            eprintln!("fleet-coordinator: refusing to start:\n{e}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(settings.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "fleet-coordinator: cannot listen on {}: {e}",
                settings.listen
            );
            return ExitCode::from(2);
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    match coordinator.run(listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ StartError::Serve(_)) => {
            eprintln!("fleet-coordinator: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("fleet-coordinator: refusing to start:\n{e}");
            ExitCode::from(2)
        }
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            shutdown.cancel();
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    shutdown.cancel();
}
