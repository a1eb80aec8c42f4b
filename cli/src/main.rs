//! `fleetctl`: the operator's command line (SPEC §7).
#![forbid(unsafe_code)]

mod certs;
#[cfg(unix)]
mod demo;
mod error;
mod nodes;
mod plan;
mod remote;
mod runs;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use fleet_proto::pb;

use crate::error::{CliError, Result};

#[derive(Parser)]
#[command(
    name = "fleetctl",
    version,
    about = "Operate an ssofleet: certificates, inventory, nodes, upgrades"
)]
struct Cli {
    /// The coordinator's URL.
    #[arg(
        long,
        global = true,
        env = "FLEET_COORDINATOR",
        default_value = "https://localhost:7443"
    )]
    coordinator: String,
    /// Directory holding ca.pem, operator.pem and operator-key.pem.
    #[arg(long, global = true, env = "FLEET_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Make the fleet's certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Work with inventory files.
    #[command(subcommand)]
    Inventory(InventoryCommand),
    /// Every inventory node: attached or not, environment, role, version, last seen.
    Nodes,
    /// The steps `upgrade` would run, in order, and the plan's hash.
    Plan(Selection),
    /// Start an upgrade run and follow it to the end.
    Upgrade(UpgradeArgs),
    /// The host-security migration workflow on one environment's master secret server (its
    /// `[environment.migration]`): back up the old security data, export its key, install ESSO, copy
    /// hissomig there, export, wait for the operator's review (`approve`), import, verify.
    Migrate {
        #[arg(long)]
        env: String,
        /// Print the run's id and return at once.
        #[arg(long)]
        detach: bool,
    },
    /// List runs.
    Runs,
    /// Show one run.
    Run {
        #[command(subcommand)]
        command: RunCommand,
    },
    /// Follow a run live.
    Watch { id: String },
    /// A node's step output in a run.
    Logs {
        id: String,
        /// One node's steps; without it, every node's and the coordinator's own (backup-database).
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        step: Option<String>,
    },
    /// Pause a run: in-flight steps finish, nothing new starts.
    Pause {
        id: String,
        #[command(flatten)]
        note: Note,
    },
    /// Resume a paused or halted run.
    Resume {
        id: String,
        #[command(flatten)]
        note: Note,
    },
    /// Abort a run: steps in flight finish, nothing new starts, the run ends.
    Abort {
        id: String,
        #[command(flatten)]
        note: Note,
    },
    /// Approve a manual gate or what a migration waits for (the review of its export, a service the
    /// operator stops), or (with --node) say that the attended install on that node is done: its
    /// agent then verifies it before the step counts.
    Approve {
        id: String,
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        note: Note,
    },
    /// Retry a node's failed step (without --node: the failed preflight or backup-database).
    Retry {
        id: String,
        #[arg(long)]
        node: Option<String>,
        /// The step, when the node has several (e.g. verify).
        #[arg(long)]
        step: Option<String>,
        #[command(flatten)]
        note: Note,
    },
    /// Skip a node's failed or pending member step.
    Skip {
        id: String,
        #[arg(long)]
        node: String,
        #[arg(long)]
        step: Option<String>,
        #[command(flatten)]
        note: Note,
    },
    /// Who did what, when.
    Audit { id: Option<String> },
    /// A local coordinator and simulated agents running an upgrade end to end (Linux and macOS:
    /// the simulated ESSO tools are shell scripts).
    #[cfg(unix)]
    Demo,
}

#[derive(Subcommand)]
enum CertsCommand {
    /// A CA, a coordinator certificate and an operator certificate.
    Init {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = certs::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// A host name or IP address the coordinator is reached by (repeatable; default localhost and 127.0.0.1).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// The name in the operator certificate.
        #[arg(long, default_value = "admin")]
        operator_name: String,
        /// Validity of the coordinator and operator certificates, in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// One more certificate, signed by the CA in --ca-dir.
    Issue {
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(
            long,
            conflicts_with = "operator",
            required_unless_present = "operator"
        )]
        agent: Option<String>,
        #[arg(long)]
        operator: Option<String>,
        #[arg(long, default_value_t = 365)]
        days: i64,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum InventoryCommand {
    /// Validate a fleet.toml offline.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum RunCommand {
    Show { id: String },
}

/// Why, for the audit trail.
#[derive(Args)]
struct Note {
    /// Recorded with the action in the audit trail.
    #[arg(long, default_value = "")]
    comment: String,
}

#[derive(Args)]
struct Selection {
    #[arg(long, conflicts_with = "env", required_unless_present = "env")]
    all: bool,
    #[arg(long)]
    env: Vec<String>,
    #[arg(long)]
    master_only: bool,
}

#[derive(Args)]
struct UpgradeArgs {
    #[command(flatten)]
    selection: Selection,
    #[arg(long)]
    max_parallel: Option<u32>,
    #[arg(long)]
    max_failures: Option<u32>,
    #[arg(long)]
    plan_hash: Option<String>,
    #[arg(long)]
    detach: bool,
}

fn main() -> ExitCode {
    #[cfg(unix)]
    demo::step_host_if_asked();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleetctl: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetctl: {e}");
            e.exit_code()
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Certs(CertsCommand::Init {
            out,
            trust_domain,
            sans,
            operator_name,
            days,
            force,
        }) => {
            let written = certs::init(&out, &trust_domain, &sans, &operator_name, days, force)?;
            report_written(cli.output, &written);
            Ok(())
        }
        Command::Certs(CertsCommand::Issue {
            out,
            ca_dir,
            agent,
            operator,
            days,
            force,
        }) => {
            let who = match (&agent, &operator) {
                (Some(node), None) => certs::IssueFor::Agent(node),
                (None, Some(name)) => certs::IssueFor::Operator(name),
                _ => {
                    return Err(CliError::Usage(
                        "name exactly one of --agent NODE or --operator NAME".into(),
                    ));
                }
            };
            let written = certs::issue(&out, &ca_dir, who, days, force)?;
            report_written(cli.output, &written);
            Ok(())
        }
        Command::Inventory(InventoryCommand::Check { file }) => inventory_check(&file, cli.output),
        Command::Nodes => {
            let mut remote = remote::connect(&cli.coordinator, cli.tls_dir.as_ref()).await?;
            nodes::show(&mut remote, cli.output).await
        }
        Command::Plan(sel) => {
            let selection = plan::selection(sel.all, &sel.env, sel.master_only, None, None);
            let mut remote = remote::connect(&cli.coordinator, cli.tls_dir.as_ref()).await?;
            plan::show(&mut remote, selection, cli.output).await
        }
        Command::Upgrade(args) => {
            let sel = &args.selection;
            let selection = plan::selection(
                sel.all,
                &sel.env,
                sel.master_only,
                args.max_parallel,
                args.max_failures,
            );
            let mut remote = remote::connect(&cli.coordinator, cli.tls_dir.as_ref()).await?;
            runs::upgrade(
                &mut remote,
                selection,
                args.plan_hash,
                args.detach,
                cli.output,
            )
            .await
        }
        Command::Migrate { env, detach } => {
            let mut selection = plan::selection(false, &[env], false, None, None);
            selection.workflow = pb::Workflow::Migrate as i32;
            let mut remote = remote::connect(&cli.coordinator, cli.tls_dir.as_ref()).await?;
            runs::upgrade(&mut remote, selection, None, detach, cli.output).await
        }
        #[cfg(unix)]
        Command::Demo => demo::run(cli.output).await,
        command => {
            let mut remote = remote::connect(&cli.coordinator, cli.tls_dir.as_ref()).await?;
            let output = cli.output;
            let control = |id: &str, action, node, step, note: Note| {
                (id.to_string(), action, node, step, note.comment)
            };
            let (id, action, node, step, comment) = match command {
                Command::Runs => return runs::list(&mut remote, output).await,
                Command::Run {
                    command: RunCommand::Show { id },
                } => return runs::show(&mut remote, &id, output).await,
                Command::Watch { id } => return runs::follow(&mut remote, &id, output).await,
                Command::Logs { id, node, step } => {
                    return runs::logs(&mut remote, &id, node, step, output).await;
                }
                Command::Audit { id } => return runs::audit(&mut remote, id, output).await,
                Command::Pause { id, note } => {
                    control(&id, pb::ControlAction::Pause, None, None, note)
                }
                Command::Resume { id, note } => {
                    control(&id, pb::ControlAction::Resume, None, None, note)
                }
                Command::Abort { id, note } => {
                    control(&id, pb::ControlAction::Abort, None, None, note)
                }
                Command::Approve { id, node, note } => {
                    control(&id, pb::ControlAction::Approve, node, None, note)
                }
                Command::Retry {
                    id,
                    node,
                    step,
                    note,
                } => control(&id, pb::ControlAction::Retry, node, step, note),
                Command::Skip {
                    id,
                    node,
                    step,
                    note,
                } => control(&id, pb::ControlAction::Skip, Some(node), step, note),
                _ => return Err(CliError::Usage("unexpected command".into())),
            };
            let request = runs::ControlArgs {
                node,
                step,
                comment,
            };
            runs::control(&mut remote, &id, action, request, output).await
        }
    }
}

fn report_written(output: Output, written: &[PathBuf]) {
    match output {
        Output::Json => {
            let files: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
            println!("{}", serde_json::json!({ "written": files }));
        }
        Output::Text => {
            for path in written {
                println!("wrote {}", path.display());
            }
        }
    }
}

fn inventory_check(file: &std::path::Path, output: Output) -> Result<()> {
    use fleet_core::inventory::Inventory;
    match Inventory::load(file) {
        Ok(inv) => {
            match output {
                Output::Json => {
                    let environments: Vec<serde_json::Value> = inv
                        .environments
                        .iter()
                        .map(|e| {
                            serde_json::json!({
                                "name": e.name.as_str(),
                                "master": e.master.as_str(),
                                "members": e.members.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
                                "gate": e.gate.to_string(),
                                "install": e.install.as_str(),
                            })
                        })
                        .collect();
                    println!(
                        "{}",
                        serde_json::json!({
                            "file": file.display().to_string(),
                            "valid": true,
                            "target_version": inv.upgrade.target_version,
                            "installer": inv.upgrade.installer,
                            "master_installer": inv.upgrade.master_installer,
                            "environments": environments,
                        })
                    );
                }
                Output::Text => println!(
                    "{}: valid: {} environment(s), {} node(s), target version {}",
                    file.display(),
                    inv.environments.len(),
                    inv.node_count(),
                    inv.upgrade.target_version
                ),
            }
            Ok(())
        }
        Err(e) => {
            if output == Output::Json {
                let problems: Vec<serde_json::Value> = e
                    .problems
                    .iter()
                    .map(|p| serde_json::json!({ "line": p.line, "key": p.key, "message": p.message }))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({ "file": file.display().to_string(), "valid": false, "problems": problems })
                );
            }
            Err(CliError::Usage(format!("invalid inventory:\n{e}")))
        }
    }
}
