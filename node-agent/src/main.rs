//! `fleet-agent --config agent.toml`: attaches to the coordinator and re-attaches, forever.
//! `fleet-agent --config agent.toml --facts` prints what the agent reads on this server (what the
//! coordinator would see, the preflight checks included) and exits: 0 when the facts could be read.
//!
//! `fleet-agent --step-host` is not for people: the agent starts it to host a step's program that
//! must outlive the agent (`runner::step_host`).
//!
//! On Windows, `fleet-agent --service --config …` is how the service manager starts it (installed by
//! `deploy/windows/install-agent.ps1`): it reports to the service manager and stops on its Stop or
//! Shutdown control. A service has no console: `--log-dir` writes the log to daily files.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use fleet_agent::attach::Agent;
use fleet_agent::config::AgentConfig;
use fleet_agent::runner::step_host;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug, Clone)]
#[command(name = "fleet-agent", version, about = "ssofleet node agent")]
struct Args {
    /// The agent's configuration file.
    #[arg(long)]
    config: PathBuf,
    /// Log format: text or json.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Write the log to daily files `fleet-agent.log.<date>` in this directory instead of standard
    /// error.
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Run as the Windows service `ssofleet-agent` (only the service manager starts it so).
    #[arg(long)]
    service: bool,
    /// Print this server's facts (ESSO's version, ENTSSO, the products, the preflight checks) and
    /// exit, without attaching.
    #[arg(long, conflicts_with = "service")]
    facts: bool,
}

fn main() -> ExitCode {
    // A step's program that must outlive the agent runs under this executable, as its step host.
    step_host::run_if_asked();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    if let Some(dir) = &args.log_dir
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!(
            "fleet-agent: cannot create the log directory {}: {e}",
            dir.display()
        );
        return ExitCode::from(2);
    }
    fleet_proto::logging::init_with(
        args.log_format == "json",
        args.log_dir.as_deref().map(|d| (d, "fleet-agent.log")),
    );
    if args.service {
        return service::run(args);
    }
    if args.facts {
        return print_facts(&args);
    }
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    run_agent(&args, shutdown, |_| async move {
        wait_for_signal().await;
        stop.cancel();
    })
}

/// `--facts`: the facts as `key: value` lines on standard output.
fn print_facts(args: &Args) -> ExitCode {
    let config = match AgentConfig::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("fleet-agent: invalid configuration:\n{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fleet-agent: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let facts = runtime.block_on(fleet_agent::facts::collect(
        &config,
        &std::collections::BTreeMap::new(),
    ));
    print!("{}", fleet_agent::facts::describe(&facts));
    if facts.error.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Loads the configuration and runs the agent until `shutdown` (which the future `stopper` makes
/// from the configured `shutdown_timeout` may trigger). The exit is bounded: after the shutdown, the
/// agent's own work has `shutdown_timeout` to end. A step's program is not waited for: it writes into
/// files, not pipes the runtime would read on threads that hold the exit (`runner`), the journal still
/// says the attempt runs, and the next start follows that program to its end (`orphan`).
fn run_agent<F>(
    args: &Args,
    shutdown: CancellationToken,
    stopper: impl FnOnce(std::time::Duration) -> F,
) -> ExitCode
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let config = match AgentConfig::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("fleet-agent: invalid configuration:\n{e}");
            tracing::error!("invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fleet-agent: cannot start the async runtime: {e}");
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let bound = config.shutdown_timeout;
    let stopper = stopper(bound);
    let code = runtime.block_on(async {
        let agent = match Agent::new(config) {
            Ok(agent) => agent,
            Err(e) => {
                eprintln!("fleet-agent: {e}");
                tracing::error!("{e}");
                return ExitCode::from(2);
            }
        };
        tokio::spawn(stopper);
        agent.run(shutdown).await;
        ExitCode::SUCCESS
    });
    runtime.shutdown_timeout(bound);
    code
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

#[cfg(not(windows))]
mod service {
    use std::process::ExitCode;

    pub(crate) fn run(_args: super::Args) -> ExitCode {
        eprintln!(
            "fleet-agent: --service runs the agent as a Windows service; on this platform run it without --service (e.g. from systemd: deploy/systemd/fleet-agent.service)"
        );
        ExitCode::from(2)
    }
}

/// The Windows service: a thin layer over `run_agent` (the service manager's Stop and Shutdown
/// controls cancel the agent; its status is Running while the agent runs, then Stopped).
#[cfg(windows)]
mod service {
    use std::ffi::OsString;
    use std::process::ExitCode;
    use std::sync::OnceLock;
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;
    use windows_service::service::{
        ServiceControl, ServiceControlAccept, ServiceExitCode, ServiceState, ServiceStatus,
        ServiceType,
    };
    use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
    use windows_service::{define_windows_service, service_dispatcher};

    /// The service name `install-agent.ps1` registers.
    pub(crate) const NAME: &str = "ssofleet-agent";

    static ARGS: OnceLock<super::Args> = OnceLock::new();

    define_windows_service!(ffi_service_main, service_main);

    pub(crate) fn run(args: super::Args) -> ExitCode {
        let _ = ARGS.set(args);
        match service_dispatcher::start(NAME, ffi_service_main) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!(
                    "fleet-agent: cannot run as the Windows service {NAME} ({e}): the service manager starts it (`Start-Service {NAME}`); in a console, run without --service"
                );
                ExitCode::from(1)
            }
        }
    }

    /// The status to report; `wait_hint` matters only while pending (how long until the next report
    /// or the end: the service manager considers a silent pending service hung after it).
    fn status(state: ServiceState, exit: u32, wait_hint: Duration) -> ServiceStatus {
        ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted: if state == ServiceState::Running {
                ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
            } else {
                ServiceControlAccept::empty()
            },
            exit_code: ServiceExitCode::Win32(exit),
            checkpoint: u32::from(state == ServiceState::StopPending),
            wait_hint,
            process_id: None,
        }
    }

    fn service_main(_arguments: Vec<OsString>) {
        let Some(args) = ARGS.get() else {
            return;
        };
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let handler = move |control| match control {
            ServiceControl::Stop | ServiceControl::Shutdown => {
                tracing::info!("the service manager asks the agent to stop");
                stop.cancel();
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
            _ => ServiceControlHandlerResult::NotImplemented,
        };
        let handle = match service_control_handler::register(NAME, handler) {
            Ok(handle) => handle,
            Err(e) => {
                tracing::error!("cannot register with the service manager: {e}");
                return;
            }
        };
        if let Err(e) = handle.set_service_status(status(ServiceState::Running, 0, Duration::ZERO))
        {
            tracing::error!("cannot report the service running: {e}");
        }
        // Stopping: STOP_PENDING at once, with the bound on the agent's exit (and a margin) as the
        // hint, so that the service manager waits for it rather than declaring the service hung.
        let stopping = shutdown.clone();
        let code = super::run_agent(args, shutdown, move |bound| async move {
            stopping.cancelled().await;
            let hint = bound + Duration::from_secs(5);
            if let Err(e) = handle.set_service_status(status(ServiceState::StopPending, 0, hint)) {
                tracing::error!("cannot report the service stopping: {e}");
            }
        });
        // ERROR_BAD_CONFIGURATION (1610) for a configuration the agent refused, else success.
        let exit = if code == ExitCode::SUCCESS { 0 } else { 1610 };
        if let Err(e) =
            handle.set_service_status(status(ServiceState::Stopped, exit, Duration::ZERO))
        {
            tracing::error!("cannot report the service stopped: {e}");
        }
    }
}
