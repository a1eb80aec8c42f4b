//! ssofleet's scale benchmark (BENCHMARKS.md): orchestration overhead, dispatch latency and the
//! coordinator's cost as the fleet grows, side by side with ansible-playbook.
//!
//! Each ssofleet point starts a real `fleet-coordinator` process (release build) on 127.0.0.1 port 0
//! with the inventory of one environment: a master and N − 1 members. N real agents (the `fleet-agent`
//! library, each with its own certificate, journal and mutual-TLS connection) run as tasks in
//! agent-host processes, this executable started again as `scale agents LIST`. Their actions are the
//! small scripts of `tests/fixtures/bench`, each taking `--steps` seconds. The benchmark runs
//! `upgrade --all` through the operator API and prints, per point:
//! - wall time, from the start request to the run's `succeeded`;
//! - the critical-path bound: the master chain (backup-secret, upgrade-master, verify-master) plus
//!   ceil(members / max_parallel) batches of (upgrade, verify), each step `--steps` seconds;
//! - overhead = wall − bound, absolute and in % of the bound;
//! - dispatch-to-start latency p50 and p99: from the coordinator's dispatch (stored with the attempt)
//!   to the agent's `started` event (the program is running), both in ms on this one machine;
//! - the coordinator's peak RSS (VmHWM) and CPU seconds during the run;
//! - events stored per second (agent events plus run events, over the wall time);
//! - resume time: a second run of the point is stopped with SIGKILL half a second into its third
//!   member batch and the coordinator started again on the same state: from the new process's start
//!   to its first dispatch.
//!
//! With `--ansible PATH` (the `ansible-playbook` of a virtualenv; `bench/run` installs one), the same
//! fleet shape and the same scripts run under ansible-playbook (local connection, a play for the
//! master, then `serial` batches of max_parallel for the members, forks = max_parallel).
//!
//! `bench/run` builds the release binaries and runs everything; see BENCHMARKS.md.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use fleet_agent::catalogue::ActionName;
use fleet_agent::config::written::{self, Action};
use fleet_proto::identity::PeerIdentity;
use fleet_proto::pb;
use fleet_proto::pb::operator_service_client::OperatorServiceClient;
use fleet_proto::tls::{TlsFiles, TlsMaterial};
use fleet_tests::{Coordinator, CoordinatorOptions, Fleet, Process, fixture, path_str};
use tonic::transport::Channel;

const FROM: &str = "3.0.6";
const TARGET: &str = "3.0.7";
/// Agents per agent-host process. Each agent holds a socket and its journal's files, and every
/// program an agent starts has the kernel close all of its host's descriptors at exec: a real agent
/// has a few dozen, a host of 2,000 agents 8,000 (which made a third of the hosts' CPU time).
const AGENTS_PER_HOST: usize = 100;
/// Worker threads of an agent host.
const AGENT_HOST_THREADS: usize = 4;

fn main() -> ExitCode {
    // The agent hosts' agents start an install's program under a step host: this executable.
    fleet_agent::runner::step_host::run_if_asked();
    // `cargo bench` passes `--bench`.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let result = if args.first().map(String::as_str) == Some("agents") {
        agent_host(&args[1..])
    } else {
        Options::parse(&args).and_then(|options| bench(&options))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scale: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Options

struct Options {
    points: Vec<usize>,
    steps: Vec<u64>,
    max_parallel: usize,
    /// Measure the resume time at every point (with the longest step duration).
    restart: bool,
    /// Only that: no clean run.
    restart_only: bool,
    ansible: Option<PathBuf>,
    ansible_points: Vec<usize>,
    ansible_steps: Vec<u64>,
    out: Option<PathBuf>,
}

const USAGE: &str = "usage: scale [--points 10,100,1000,10000] [--steps 0,1] [--max-parallel 50] [--no-restart | --restart-only]
             [--ansible PATH/ansible-playbook [--ansible-points 100,1000] [--ansible-steps 1]] [--out FILE.md]";

impl Options {
    fn parse(args: &[String]) -> Result<Self> {
        let mut o = Options {
            points: vec![10, 100, 1000, 10_000],
            steps: vec![0, 1],
            max_parallel: 50,
            restart: true,
            restart_only: false,
            ansible: None,
            ansible_points: vec![100, 1000],
            ansible_steps: vec![1],
            out: None,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            if flag == "--no-restart" {
                o.restart = false;
                continue;
            }
            if flag == "--restart-only" {
                o.restart_only = true;
                continue;
            }
            let value = it
                .next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
            let list = |v: &str| -> Result<Vec<u64>> {
                v.split(',')
                    .map(|x| {
                        x.trim()
                            .parse::<u64>()
                            .with_context(|| format!("{flag}: {x:?} is not a whole number"))
                    })
                    .collect()
            };
            let sizes = |v: &str| -> Result<Vec<usize>> {
                let sizes: Vec<usize> = list(v)?
                    .into_iter()
                    .map(|x| usize::try_from(x).unwrap_or(usize::MAX))
                    .collect();
                if sizes.iter().any(|&n| n < 2) {
                    bail!("{flag}: a fleet needs a master and at least one member (N ≥ 2)");
                }
                Ok(sizes)
            };
            match flag.as_str() {
                "--points" => o.points = sizes(value)?,
                "--steps" => o.steps = list(value)?,
                "--max-parallel" => {
                    o.max_parallel = value.parse().ok().filter(|&m| m > 0).with_context(|| {
                        format!("--max-parallel: {value:?} is not a positive number")
                    })?;
                }
                "--ansible" => {
                    // Ansible runs in a directory of its own: the path must not be relative.
                    o.ansible = Some(
                        std::fs::canonicalize(value)
                            .with_context(|| format!("--ansible {value}"))?,
                    );
                }
                "--ansible-points" => o.ansible_points = sizes(value)?,
                "--ansible-steps" => o.ansible_steps = list(value)?,
                "--out" => o.out = Some(PathBuf::from(value)),
                _ => bail!("unknown option {flag}\n{USAGE}"),
            }
        }
        Ok(o)
    }
}

// ---------------------------------------------------------------------------------------------------
// The fleet's shape and its critical-path bound

#[derive(Debug, Clone, Copy)]
struct Shape {
    nodes: usize,
    step_seconds: u64,
    max_parallel: usize,
}

impl Shape {
    fn batches(&self) -> usize {
        (self.nodes - 1).div_ceil(self.max_parallel)
    }

    /// The master chain's three agent steps, then (upgrade, verify) per member batch. The
    /// coordinator's own steps (preflight, the skipped database backup, an `auto` gate) take no time
    /// of their own in this bound.
    fn bound(&self) -> Duration {
        Duration::from_secs(self.step_seconds * (3 + 2 * self.batches() as u64))
    }
}

fn node_name(i: usize) -> String {
    format!("sso-{i:05}")
}

// ---------------------------------------------------------------------------------------------------
// The benchmark

#[derive(Debug, Default)]
struct Figures {
    attach: Duration,
    wall: Duration,
    dispatch_p50_ms: Option<f64>,
    dispatch_p99_ms: Option<f64>,
    dispatches: usize,
    peak_rss_kib: u64,
    cpu_seconds: f64,
    events: u64,
    /// The preflight step (fresh facts and the installer's SHA-256 from every installing node).
    preflight: Duration,
    /// CPU seconds of the agent hosts during the run, and of the programs their agents ran (the
    /// simulated tools): what, on a real fleet, every server spends on its own cores.
    agents_cpu: f64,
    programs_cpu: f64,
}

#[derive(Debug)]
struct Resume {
    /// From the new process's start to its `listening on` line.
    listening: Duration,
    /// To the first step it dispatched.
    dispatching: Duration,
    /// To every agent attached again.
    attached: Duration,
}

struct Row {
    shape: Shape,
    figures: Figures,
    resume: Option<Resume>,
}

fn bench(options: &Options) -> Result<()> {
    let machine = machine();
    println!("{machine}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let restart_steps = options.steps.iter().copied().max().unwrap_or(0);
    for &nodes in &options.points {
        for &step_seconds in &options.steps {
            let shape = Shape {
                nodes,
                step_seconds,
                max_parallel: options.max_parallel,
            };
            println!(
                "\n== ssofleet: {nodes} agents, steps of {step_seconds} s, max_parallel {}",
                options.max_parallel
            );
            if options.restart_only {
                println!(
                    "== ssofleet: {nodes} agents, coordinator SIGKILLed mid-run and restarted"
                );
                match ssofleet_restart(&runtime, shape) {
                    Ok(r) => print_resume(&r),
                    Err(e) => println!("   FAILED: {e:#}"),
                }
                continue;
            }
            // A point that fails is reported as such; the others are still measured.
            let figures = match ssofleet(&runtime, shape) {
                Ok(figures) => figures,
                Err(e) => {
                    println!("   FAILED: {e:#}");
                    failures.push(format!(
                        "ssofleet, {nodes} agents, {step_seconds} s steps: {e:#}"
                    ));
                    continue;
                }
            };
            let resume = if options.restart && step_seconds == restart_steps {
                println!(
                    "== ssofleet: {nodes} agents, coordinator SIGKILLed mid-run and restarted"
                );
                match ssofleet_restart(&runtime, shape) {
                    Ok(resume) => Some(resume),
                    Err(e) => {
                        println!("   FAILED: {e:#}");
                        failures.push(format!("ssofleet restart, {nodes} agents: {e:#}"));
                        None
                    }
                }
            } else {
                None
            };
            print_row(shape, &figures, resume.as_ref());
            rows.push(Row {
                shape,
                figures,
                resume,
            });
        }
    }
    let mut ansible_rows = Vec::new();
    if let Some(playbook) = &options.ansible {
        for &nodes in &options.ansible_points {
            for &step_seconds in &options.ansible_steps {
                let shape = Shape {
                    nodes,
                    step_seconds,
                    max_parallel: options.max_parallel,
                };
                println!("\n== ansible-playbook: {nodes} hosts, steps of {step_seconds} s");
                match ansible(playbook, shape) {
                    Ok((wall, failed)) => {
                        println!(
                            "   wall {}  bound {}  overhead {}{}",
                            secs(wall),
                            secs(shape.bound()),
                            secs(wall.saturating_sub(shape.bound())),
                            failed
                                .as_ref()
                                .map_or_else(String::new, |f| format!("  FAILED: {f}"))
                        );
                        ansible_rows.push((shape, wall, failed));
                    }
                    Err(e) => {
                        println!("   FAILED: {e:#}");
                        failures.push(format!(
                            "ansible-playbook, {nodes} hosts, {step_seconds} s steps: {e:#}"
                        ));
                    }
                }
            }
        }
    }
    let report = report(&machine, options, &rows, &ansible_rows, &failures);
    println!("\n{report}");
    if let Some(out) = &options.out {
        std::fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
        println!("written to {}", out.display());
    }
    Ok(())
}

fn print_row(shape: Shape, f: &Figures, resume: Option<&Resume>) {
    let bound = shape.bound();
    let overhead = f.wall.saturating_sub(bound);
    println!(
        "   attach {}  wall {}  bound {}  overhead {} ({})  dispatch p50 {} p99 {} ({} dispatches)",
        secs(f.attach),
        secs(f.wall),
        secs(bound),
        secs(overhead),
        percent(overhead, bound),
        ms(f.dispatch_p50_ms),
        ms(f.dispatch_p99_ms),
        f.dispatches
    );
    println!(
        "   coordinator: peak RSS {}  CPU {:.2} s  events stored {} ({:.0}/s)",
        mib(f.peak_rss_kib),
        f.cpu_seconds,
        f.events,
        f.events as f64 / f.wall.as_secs_f64().max(1e-9)
    );
    println!(
        "   preflight {}  agent hosts CPU {:.2} s  their programs (the simulated tools) CPU {:.2} s",
        secs(f.preflight),
        f.agents_cpu,
        f.programs_cpu
    );
    if let Some(r) = resume {
        print_resume(r);
    }
}

fn print_resume(r: &Resume) {
    println!(
        "   resume: listening {}  first dispatch {}  all agents attached {}",
        secs(r.listening),
        secs(r.dispatching),
        secs(r.attached)
    );
}

/// A fleet ready to run: the coordinator, the agent hosts, and an operator connection.
struct Setup {
    fleet: Fleet,
    coordinator: Coordinator,
    hosts: Vec<Process>,
    client: OperatorServiceClient<Channel>,
    options: CoordinatorOptions,
    attach: Duration,
}

fn coordinator_options() -> CoordinatorOptions {
    CoordinatorOptions {
        // The coordinator's defaults, and what production logs.
        heartbeat_interval: "5s",
        heartbeat_timeout: "15s",
        state: "state",
        log: Some(leak(
            std::env::var("BENCH_LOG").unwrap_or_else(|_| "info".into()),
        )),
    }
}

/// `BENCH_LOG` sets the coordinator's and the agent hosts' log filter (to profile a point).
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn setup(runtime: &tokio::runtime::Runtime, shape: Shape) -> Result<Setup> {
    let fleet = Fleet::new()?;
    let root = fleet.dir.path().to_path_buf();
    let installer = fleet.write("media/Setup.exe", "benchmark ESSO setup, version 3.0.7\n")?;
    std::fs::create_dir_all(root.join("backups"))?;
    let password = fleet.write("backup-password", "correct horse battery\n")?;
    let members: Vec<String> = (1..shape.nodes).map(node_name).collect();
    fleet.write(
        "fleet.toml",
        &format!(
            r#"[upgrade]
target_version = "{TARGET}"
installer = '{installer}'

[policy]
max_parallel = {max_parallel}
max_failures = 0
step_timeout = "10m"

[[environment]]
name = "bench"
gate = "auto"
install = "unattended"              # the agents install with their own command (the fixture)
master = "{master}"
members = [{members}]
backup_dir = '{backups}'
"#,
            installer = installer.display(),
            max_parallel = shape.max_parallel,
            master = node_name(0),
            members = members
                .iter()
                .map(|m| format!("\"{m}\""))
                .collect::<Vec<_>>()
                .join(", "),
            backups = root.join("backups").display(),
        ),
    )?;
    let options = coordinator_options();
    let coordinator = Coordinator::start(&fleet, "127.0.0.1:0", &options)?;

    // Certificates and configurations of the agents.
    let made = Instant::now();
    let tls = root.join("tls");
    let issuer = AgentIssuer::new(&tls)?;
    let tools = fixture("bench");
    let tool = |name: &str| tools.join(name).display().to_string();
    let mut lists: Vec<String> = Vec::new();
    for i in 0..shape.nodes {
        let node = node_name(i);
        let dir = root.join("nodes").join(&node);
        std::fs::create_dir_all(dir.join("esso"))?;
        std::fs::write(dir.join("esso/version"), format!("{FROM}\n"))?;
        issuer.issue(&node, &dir)?;
        let env = written::env(&[
            ("FAKE_ESSO_HOME", &dir.join("esso").display().to_string()),
            ("BENCH_STEP_SECONDS", &shape.step_seconds.to_string()),
        ]);
        let head = written::Head {
            node: &node,
            coordinator: &coordinator.url(),
            state_dir: "state",
            ca: &tls.join("ca.pem").display().to_string(),
            cert: "agent.pem",
            key: "agent-key.pem",
            reconnect: None,
        };
        let actions = [
            Action::new(ActionName::Facts, &tool("facts")),
            Action::new(ActionName::BackupSecret, &tool("backup")).args(&["{backup_file}"]),
            Action::new(ActionName::InstallSso, &tool("setup")).args(&["{target_version}"]),
            Action::new(ActionName::VerifySso, &tool("verify")),
        ];
        let config = head.render()
            + &written::secrets(&password.display().to_string())
            + &actions.map(|action| action.env(&env).render()).concat();
        let path = dir.join("agent.toml");
        std::fs::write(&path, config)?;
        if i % AGENTS_PER_HOST == 0 {
            lists.push(String::new());
        }
        if let Some(list) = lists.last_mut() {
            list.push_str(path_str(&path)?);
            list.push('\n');
        }
    }
    println!(
        "   {} agent certificates and configurations made in {}",
        shape.nodes,
        secs(made.elapsed())
    );

    let attaching = Instant::now();
    let exe = std::env::current_exe()?;
    let mut hosts = Vec::new();
    for (i, list) in lists.iter().enumerate() {
        let file = fleet.write(&format!("hosts/{i}.list"), list)?;
        hosts.push(Process::spawn(
            &format!("agent host {i}"),
            Command::new(&exe).args(["agents", path_str(&file)?]).env(
                "FLEET_LOG",
                std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            ),
            root.join(format!("hosts/{i}.log")),
        )?);
    }
    let client = runtime.block_on(operator(&fleet, &coordinator.url()))?;
    let mut setup = Setup {
        fleet,
        coordinator,
        hosts,
        client,
        options,
        attach: Duration::ZERO,
    };
    let within = Duration::from_secs(60) + Duration::from_millis(20) * shape.nodes as u32;
    runtime.block_on(wait_attached(&mut setup.client, shape.nodes, within))?;
    setup.attach = attaching.elapsed();
    Ok(setup)
}

/// One clean run of the upgrade workflow.
fn ssofleet(runtime: &tokio::runtime::Runtime, shape: Shape) -> Result<Figures> {
    let mut s = setup(runtime, shape)?;
    let pid = s
        .coordinator
        .process
        .pid()
        .context("the coordinator is gone")?;
    let cpu_before = cpu_seconds(pid)?;
    let hosts_before = hosts_cpu(&s.hosts)?;
    let started = Instant::now();
    let run_id = runtime.block_on(start_upgrade(&mut s.client))?;
    let mut after = 0;
    let state = runtime.block_on(wait_final(&mut s.client, &run_id, &mut after))?;
    let wall = started.elapsed();
    let cpu = cpu_seconds(pid)? - cpu_before;
    let hosts_after = hosts_cpu(&s.hosts)?;
    let peak_rss_kib = peak_rss_kib(pid)?;
    if state != pb::RunState::Succeeded {
        drop(s.hosts);
        drop(s.coordinator);
        bail!(
            "the run ended {state:?}; the logs are kept in {}",
            s.fleet.dir.keep().display()
        );
    }
    check_upgraded(&s.fleet, shape)?;
    let db = state_db(&s.fleet)?;
    let latencies = dispatch_latencies(&db, &run_id)?;
    let events = events_stored(&db, &run_id)?;
    let figures = Figures {
        attach: s.attach,
        wall,
        dispatch_p50_ms: quantile(&latencies, 0.50),
        dispatch_p99_ms: quantile(&latencies, 0.99),
        dispatches: latencies.len(),
        peak_rss_kib,
        cpu_seconds: cpu,
        events,
        preflight: preflight_duration(&db, &run_id)?,
        agents_cpu: hosts_after.0 - hosts_before.0,
        programs_cpu: hosts_after.1 - hosts_before.1,
    };
    drop(s.hosts);
    drop(s.coordinator);
    if std::env::var_os("BENCH_KEEP").is_some() {
        println!("   kept {}", s.fleet.dir.keep().display());
    }
    Ok(figures)
}

/// A run whose coordinator is SIGKILLed mid-run and started again on the same state directory and
/// port: how long until it carries on.
fn ssofleet_restart(runtime: &tokio::runtime::Runtime, shape: Shape) -> Result<Resume> {
    let mut s = setup(runtime, shape)?;
    let started = Instant::now();
    let run_id = runtime.block_on(start_upgrade(&mut s.client))?;
    // In the members phase: half a second after the third batch (or the last, if fewer) started.
    // Not at a fixed time: the preflight of 10,000 nodes alone takes seconds, and a coordinator
    // killed there starts that preflight again, which waits for every node.
    let batch = shape.batches().min(3);
    let db = state_db(&s.fleet)?;
    loop {
        let started_batch: i64 = db.query_row(
            "SELECT COUNT(*) FROM attempts a JOIN steps s ON s.run_id = a.run_id AND s.idx = a.idx
             WHERE a.run_id = ?1 AND s.step = 'upgrade' AND s.batch >= ?2",
            rusqlite::params![run_id, batch as i64],
            |r| r.get(0),
        )?;
        if started_batch > 0 {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("member batch {batch} did not start within 600 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(db);
    std::thread::sleep(Duration::from_millis(500));
    let addr = s.coordinator.addr.to_string();
    s.coordinator.process.kill();
    let killed_ms = unix_ms(SystemTime::now());
    let restarted = Instant::now();
    let restarted_ms = unix_ms(SystemTime::now());
    let coordinator = fleet_tests::eventually(
        fleet_tests::PATIENCE,
        "the coordinator to start again on its port",
        || Coordinator::start(&s.fleet, &addr, &s.options).ok(),
    );
    let listening = restarted.elapsed();
    let db = state_db(&s.fleet)?;
    let dispatching = loop {
        let first: Option<i64> = db.query_row(
            "SELECT MIN(dispatched_at) FROM attempts WHERE run_id = ?1 AND dispatched_at >= ?2",
            rusqlite::params![run_id, killed_ms],
            |r| r.get(0),
        )?;
        if let Some(first) = first {
            break Duration::from_millis(u64::try_from(first - restarted_ms).unwrap_or(0));
        }
        if restarted.elapsed() > Duration::from_secs(300) {
            bail!("the restarted coordinator dispatched nothing within 300 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut client = runtime.block_on(operator(&s.fleet, &coordinator.url()))?;
    runtime.block_on(wait_attached(
        &mut client,
        shape.nodes,
        Duration::from_secs(300),
    ))?;
    let attached = restarted.elapsed();
    // The point is made: end the run rather than wait for the rest of the fleet.
    let _ = runtime.block_on(client.control(pb::ControlRequest {
        run_id,
        action: pb::ControlAction::Abort as i32,
        comment: "benchmark: resume measured".into(),
        ..Default::default()
    }));
    drop(s.hosts);
    drop(coordinator);
    if std::env::var_os("BENCH_KEEP").is_some() {
        println!("   kept {}", s.fleet.dir.keep().display());
    }
    Ok(Resume {
        listening,
        dispatching,
        attached,
    })
}

// ---------------------------------------------------------------------------------------------------
// Talking to the coordinator as an operator

/// Connects as the operator, trying again for a while: a coordinator busy with thousands of agents
/// attaching at once may take long to answer a new connection.
async fn operator(fleet: &Fleet, url: &str) -> Result<OperatorServiceClient<Channel>> {
    let material = TlsMaterial::load_any_role(&TlsFiles::in_dir(&fleet.path("tls"), "operator"))?;
    let config = material.client_config(material.coordinator_identity())?;
    let start = Instant::now();
    loop {
        match fleet_proto::transport::connect(url, config.clone(), Duration::from_secs(10)).await {
            Ok(channel) => return Ok(OperatorServiceClient::new(channel)),
            Err(e) if start.elapsed() > Duration::from_secs(120) => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

async fn wait_attached(
    client: &mut OperatorServiceClient<Channel>,
    nodes: usize,
    within: Duration,
) -> Result<()> {
    let start = Instant::now();
    let mut last = 0;
    loop {
        if let Ok(reply) = client.list_nodes(pb::ListNodesRequest {}).await {
            last = reply
                .into_inner()
                .nodes
                .iter()
                .filter(|n| n.attached)
                .count();
            if last == nodes {
                return Ok(());
            }
        }
        if start.elapsed() > within {
            bail!("only {last} of {nodes} agents attached within {within:?}");
        }
        // A list of every node is big at 10,000: do not make the coordinator build it all the time.
        tokio::time::sleep(Duration::from_millis(if nodes > 1000 { 1000 } else { 250 })).await;
    }
}

async fn start_upgrade(client: &mut OperatorServiceClient<Channel>) -> Result<String> {
    let reply = client
        .start_run(pb::StartRunRequest {
            selection: Some(pb::RunSelection {
                workflow: pb::Workflow::Upgrade as i32,
                all: true,
                ..Default::default()
            }),
            plan_hash: None,
        })
        .await
        .map_err(|s| anyhow::anyhow!("starting the run: {}", s.message()))?;
    Ok(reply.into_inner().run_id)
}

/// Follows the run's events until it ends (or halts: nobody is there to resume it).
async fn wait_final(
    client: &mut OperatorServiceClient<Channel>,
    run_id: &str,
    after_seq: &mut u64,
) -> Result<pb::RunState> {
    let mut stream = client
        .watch_run(pb::WatchRunRequest {
            run_id: run_id.to_string(),
            after_seq: *after_seq,
            follow: true,
            node: None,
            step: None,
        })
        .await
        .map_err(|s| anyhow::anyhow!("watching the run: {}", s.message()))?
        .into_inner();
    while let Some(event) = stream
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("watching the run: {}", s.message()))?
    {
        // A step's live output has no seq (0): the cursor is the highest stored event's.
        *after_seq = (*after_seq).max(event.seq);
        if let Some(pb::run_event::Kind::RunState(s)) = event.kind {
            let state = s.state();
            if matches!(
                state,
                pb::RunState::Succeeded
                    | pb::RunState::Failed
                    | pb::RunState::Aborted
                    | pb::RunState::Halted
            ) {
                if state != pb::RunState::Succeeded {
                    eprintln!("   the run is {state:?}: {}", s.reason);
                }
                return Ok(state);
            }
        }
    }
    bail!("the coordinator ended the watch before the run ended")
}

// ---------------------------------------------------------------------------------------------------
// What the coordinator stored

fn state_db(fleet: &Fleet) -> Result<rusqlite::Connection> {
    let path = fleet.path("state").join("ssofleet.db");
    rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening {}", path.display()))
}

/// For every attempt an agent started: its `started` event's time minus the attempt's dispatch time.
fn dispatch_latencies(db: &rusqlite::Connection, run_id: &str) -> Result<Vec<f64>> {
    let mut stmt = db.prepare(
        "SELECT e.at - a.dispatched_at FROM attempts a
         JOIN attempt_events e ON e.attempt_id = a.id AND e.kind = 'started'
         WHERE a.run_id = ?1",
    )?;
    let rows = stmt.query_map([run_id], |r| r.get::<_, i64>(0))?;
    let mut latencies = rows
        .map(|r| r.map(|ms| ms as f64))
        .collect::<rusqlite::Result<Vec<f64>>>()?;
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

fn preflight_duration(db: &rusqlite::Connection, run_id: &str) -> Result<Duration> {
    let ms: Option<i64> = db.query_row(
        "SELECT SUM(finished_at - started_at) FROM steps WHERE run_id = ?1 AND step = 'preflight'",
        [run_id],
        |r| r.get(0),
    )?;
    Ok(Duration::from_millis(
        ms.and_then(|m| u64::try_from(m).ok()).unwrap_or(0),
    ))
}

fn events_stored(db: &rusqlite::Connection, run_id: &str) -> Result<u64> {
    let n: i64 = db.query_row(
        "SELECT (SELECT COUNT(*) FROM attempt_events e JOIN attempts a ON a.id = e.attempt_id WHERE a.run_id = ?1)
              + (SELECT COUNT(*) FROM run_events WHERE run_id = ?1)",
        [run_id],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Every simulated server reports the target version: the run did its work, not only finish.
fn check_upgraded(fleet: &Fleet, shape: Shape) -> Result<()> {
    check_versions(&fleet.dir.path().join("nodes"), shape)
}

fn check_versions(nodes: &Path, shape: Shape) -> Result<()> {
    let behind: Vec<String> = (0..shape.nodes)
        .map(node_name)
        .filter(|n| {
            std::fs::read_to_string(nodes.join(n).join("esso/version"))
                .map(|v| v.trim() != TARGET)
                .unwrap_or(true)
        })
        .collect();
    if !behind.is_empty() {
        bail!(
            "{} servers are not on {TARGET} after the run, e.g. {}",
            behind.len(),
            behind[0]
        );
    }
    Ok(())
}

fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    // Nearest rank.
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

// ---------------------------------------------------------------------------------------------------
// The coordinator process's cost, from /proc

fn cpu_seconds(pid: u32) -> Result<f64> {
    Ok(cpu_times(pid)?.0)
}

/// CPU seconds of a process, and of its children it has waited for.
fn cpu_times(pid: u32) -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The fields after the command name (which may hold spaces) in parentheses.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("no command name in /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks = |i: usize| -> Result<f64> {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<f64>().ok())
            .context("short /proc/PID/stat")
    };
    let hz = clock_ticks();
    Ok((
        (ticks(14)? + ticks(15)?) / hz,
        (ticks(16)? + ticks(17)?) / hz,
    ))
}

/// CPU seconds of the agent hosts and of their children.
fn hosts_cpu(hosts: &[Process]) -> Result<(f64, f64)> {
    let mut sum = (0.0, 0.0);
    for host in hosts {
        let (own, children) = cpu_times(host.pid().context("an agent host is gone")?)?;
        sum.0 += own;
        sum.1 += children;
    }
    Ok(sum)
}

/// Clock ticks per second, asked of `getconf` once (not once per process read at the run's start).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/PID/status")
}

// ---------------------------------------------------------------------------------------------------
// Agent certificates, made in this process (N `fleetctl certs issue` would take minutes at 10,000)

struct AgentIssuer {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    trust_domain: String,
}

impl AgentIssuer {
    fn new(tls: &Path) -> Result<Self> {
        let ca = std::fs::read_to_string(tls.join("ca.pem"))?;
        let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(tls.join("ca-key.pem"))?)?;
        let coordinator = TlsMaterial::load(
            &TlsFiles::in_dir(tls, "coordinator"),
            fleet_proto::identity::Role::Coordinator,
        )?;
        Ok(Self {
            issuer: rcgen::Issuer::from_ca_cert_pem(&ca, key)?,
            trust_domain: coordinator.identity().trust_domain().to_string(),
        })
    }

    /// `agent.pem` and `agent-key.pem` for `node` in `dir`, as `fleetctl certs issue --agent` makes them.
    fn issue(&self, node: &str, dir: &Path) -> Result<()> {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyUsagePurpose, SanType};
        let identity = PeerIdentity::agent(&self.trust_domain, node)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("ssofleet agent {node}"));
        params.subject_alt_names = vec![SanType::URI(identity.uri().try_into()?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        std::fs::write(dir.join("agent.pem"), cert.pem())?;
        std::fs::write(dir.join("agent-key.pem"), key.serialize_pem())?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------
// Agent hosts: `scale agents LIST` runs the agents of LIST's agent.toml files until it is killed

fn agent_host(args: &[String]) -> Result<()> {
    let list = args.first().context("usage: scale agents LIST")?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    fleet_proto::logging::init(false);
    let paths: Vec<PathBuf> = std::fs::read_to_string(list)
        .with_context(|| format!("reading {list}"))?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(PathBuf::from)
        .collect();
    // Each real agent is a process of its own: an agent's journal writes (an fsync each) block only
    // itself. Here thousands share a process, so give their blocking writes threads to wait in.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(AGENT_HOST_THREADS)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let mut agents = Vec::new();
        for (i, path) in paths.iter().enumerate() {
            let config =
                fleet_agent::config::AgentConfig::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
            let agent = fleet_agent::attach::Agent::new(config)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            agents.push(tokio::spawn(agent.run(shutdown.clone())));
            // Attach a few hundred at a time, as a fleet's agents start over a while, not in one instant.
            if i % 250 == 249 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        eprintln!("{} agents started", agents.len());
        std::future::pending::<()>().await;
        Ok::<(), anyhow::Error>(())
    })
}

// ---------------------------------------------------------------------------------------------------
// ansible-playbook on the same shape and the same scripts

/// The wall time of ansible-playbook on `shape`, and what failed if it failed (its directory, with
/// the play's log, is then kept).
fn ansible(playbook: &Path, shape: Shape) -> Result<(Duration, Option<String>)> {
    let dir = tempfile::Builder::new()
        .prefix("ssofleet-ansible-")
        .tempdir()?;
    let root = dir.path();
    let python = playbook
        .parent()
        .map(|bin| bin.join("python"))
        .filter(|p| p.exists())
        .context("no python next to ansible-playbook: pass the ansible-playbook of a virtualenv")?;
    std::fs::create_dir_all(root.join("backups"))?;
    std::fs::write(root.join("backup-password"), "correct horse battery\n")?;
    let mut inventory = String::from("[master]\n");
    for i in 0..shape.nodes {
        if i == 1 {
            inventory.push_str("\n[members]\n");
        }
        let node = node_name(i);
        std::fs::create_dir_all(root.join("nodes").join(&node).join("esso"))?;
        std::fs::write(
            root.join("nodes").join(&node).join("esso/version"),
            format!("{FROM}\n"),
        )?;
        writeln!(inventory, "{node}")?;
    }
    writeln!(
        inventory,
        "\n[all:vars]\nansible_connection=local\nansible_python_interpreter={}\nfleet_dir={}\ntools={}\nstep_seconds={}",
        python.display(),
        root.display(),
        fixture("bench").display(),
        shape.step_seconds
    )?;
    std::fs::write(root.join("inventory.ini"), inventory)?;
    std::fs::write(
        root.join("ansible.cfg"),
        format!(
            "[defaults]\nforks = {}\nhost_key_checking = False\nretry_files_enabled = False\n",
            shape.max_parallel
        ),
    )?;
    std::fs::write(
        root.join("upgrade.yml"),
        format!(
            r#"# The upgrade workflow as an Ansible play: the master first, then the members in batches.
- name: master secret server
  hosts: master
  gather_facts: false
  any_errors_fatal: true
  environment: &env
    FAKE_ESSO_HOME: "{{{{ fleet_dir }}}}/nodes/{{{{ inventory_hostname }}}}/esso"
    BENCH_STEP_SECONDS: "{{{{ step_seconds }}}}"
  tasks:
    - name: backup-secret
      ansible.builtin.command:
        argv: ["{{{{ tools }}}}/backup", "{{{{ fleet_dir }}}}/backups/{{{{ inventory_hostname }}}}.bak"]
        stdin: "{{{{ lookup('file', fleet_dir + '/backup-password') }}}}"
    - name: upgrade-master
      ansible.builtin.command:
        argv: ["{{{{ tools }}}}/setup", "{TARGET}"]
    - name: verify-master
      ansible.builtin.command:
        argv: ["{{{{ tools }}}}/verify"]
      register: verify
      failed_when: "'version={TARGET}' not in verify.stdout"

- name: members
  hosts: members
  gather_facts: false
  serial: {max_parallel}
  max_fail_percentage: 0
  environment: *env
  tasks:
    - name: upgrade
      ansible.builtin.command:
        argv: ["{{{{ tools }}}}/setup", "{TARGET}"]
    - name: verify
      ansible.builtin.command:
        argv: ["{{{{ tools }}}}/verify"]
      register: verify
      failed_when: "'version={TARGET}' not in verify.stdout"
"#,
            max_parallel = shape.max_parallel
        ),
    )?;
    let log = std::fs::File::create(root.join("ansible.log"))?;
    let started = Instant::now();
    let status = Command::new(playbook)
        .args(["-i", "inventory.ini", "upgrade.yml"])
        .current_dir(root)
        .env("ANSIBLE_CONFIG", root.join("ansible.cfg"))
        .env("ANSIBLE_HOME", root.join(".ansible"))
        .env("ANSIBLE_LOCAL_TEMP", root.join(".ansible/tmp"))
        .env("ANSIBLE_NOCOLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("running {}", playbook.display()))?;
    let wall = started.elapsed();
    if !status.success() {
        let text = std::fs::read_to_string(root.join("ansible.log")).unwrap_or_default();
        let fatal: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("fatal:"))
            .take(3)
            .map(|l| l.get(..300).unwrap_or(l))
            .collect();
        let kept = dir.keep();
        return Ok((
            wall,
            Some(format!(
                "{status}; {}; the log is in {}",
                if fatal.is_empty() {
                    "no `fatal:` line".to_string()
                } else {
                    fatal.join(" / ")
                },
                kept.join("ansible.log").display()
            )),
        ));
    }
    check_versions(&root.join("nodes"), shape)?;
    Ok((wall, None))
}

// ---------------------------------------------------------------------------------------------------
// The report

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or_else(
            || "?".into(),
            |kib| format!("{:.1} GiB", kib as f64 / 1048576.0),
        );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("machine: {cpu}, {cores} cores, {memory} RAM, Linux {kernel}")
}

fn report(
    machine: &str,
    options: &Options,
    rows: &[Row],
    ansible_rows: &[(Shape, Duration, Option<String>)],
    failures: &[String],
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{machine}; max_parallel {}\n", options.max_parallel);
    let _ = writeln!(
        out,
        "| agents | step | bound | wall | overhead | overhead % | of which preflight | dispatch p50 | dispatch p99 | coordinator peak RSS | coordinator CPU | events stored/s | resume | agents' CPU | tools' CPU |"
    );
    let _ = writeln!(
        out,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let f = &r.figures;
        let bound = r.shape.bound();
        let overhead = f.wall.saturating_sub(bound);
        let _ = writeln!(
            out,
            "| {} | {} s | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} s | {:.0} | {} | {:.1} s | {:.1} s |",
            r.shape.nodes,
            r.shape.step_seconds,
            secs(bound),
            secs(f.wall),
            secs(overhead),
            percent(overhead, bound),
            secs(f.preflight),
            ms(f.dispatch_p50_ms),
            ms(f.dispatch_p99_ms),
            mib(f.peak_rss_kib),
            f.cpu_seconds,
            f.events as f64 / f.wall.as_secs_f64().max(1e-9),
            r.resume
                .as_ref()
                .map_or_else(|| "".into(), |r| secs(r.dispatching)),
            f.agents_cpu,
            f.programs_cpu,
        );
    }
    let by_shape: BTreeMap<(usize, u64), &Row> = rows
        .iter()
        .map(|r| ((r.shape.nodes, r.shape.step_seconds), r))
        .collect();
    let mut ratios = Vec::new();
    if !ansible_rows.is_empty() {
        let _ = writeln!(
            out,
            "\n| hosts | step | bound | ansible-playbook wall | ansible overhead | ssofleet overhead | ansible ÷ ssofleet |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|");
        for (shape, wall, failed) in ansible_rows {
            let bound = shape.bound();
            let theirs = wall.saturating_sub(bound);
            let ours = by_shape
                .get(&(shape.nodes, shape.step_seconds))
                .map(|r| r.figures.wall.saturating_sub(bound));
            // A failed play stopped early: its time is no overhead to compare.
            let ratio = ours
                .filter(|_| failed.is_none())
                .map(|o| theirs.as_secs_f64() / o.as_secs_f64().max(1e-3));
            if let Some(ratio) = ratio {
                ratios.push((*shape, ratio));
            }
            let _ = writeln!(
                out,
                "| {} | {} s | {} | {}{} | {} | {} | {} |",
                shape.nodes,
                shape.step_seconds,
                secs(bound),
                secs(*wall),
                failed
                    .as_ref()
                    .map_or_else(String::new, |f| format!(" (failed: {f})")),
                secs(theirs),
                ours.map_or_else(|| "not run".into(), secs),
                ratio.map_or_else(|| "".into(), |r| format!("{r:.0}×")),
            );
        }
    }
    if !failures.is_empty() {
        let _ = writeln!(out, "\nNot measured (failed):");
        for f in failures {
            let _ = writeln!(out, "- {f}");
        }
    }
    let _ = writeln!(out, "\nTargets:");
    let mut target = |name: &str, verdict: Option<(bool, String)>| {
        let _ = match verdict {
            Some((met, figure)) => writeln!(
                out,
                "- {name}: {} ({figure})",
                if met { "**met**" } else { "**not met**" }
            ),
            None => writeln!(out, "- {name}: not measured in this run"),
        };
    };
    target(
        "overhead ≤ 2% of the bound, 1,000 agents, 1 s steps",
        by_shape.get(&(1000, 1)).map(|r| {
            let bound = r.shape.bound();
            let overhead = r.figures.wall.saturating_sub(bound);
            (
                overhead.as_secs_f64() <= bound.as_secs_f64() * 0.02,
                format!(
                    "{} of {}: {}",
                    secs(overhead),
                    secs(bound),
                    percent(overhead, bound)
                ),
            )
        }),
    );
    let worst_p99 = rows
        .iter()
        .filter_map(|r| r.figures.dispatch_p99_ms.map(|p| (p, r.shape)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    target(
        "dispatch p99 ≤ 10 ms on loopback, every point",
        worst_p99.map(|(p99, shape)| {
            (
                p99 <= 10.0,
                format!(
                    "worst p99 {p99:.0} ms, at {} agents with {} s steps",
                    shape.nodes, shape.step_seconds
                ),
            )
        }),
    );
    let at_10k = rows
        .iter()
        .filter(|r| r.shape.nodes >= 10_000)
        .map(|r| r.figures.peak_rss_kib)
        .max();
    target(
        "10,000 attached agents in ≤ 1 GiB coordinator RSS",
        at_10k.map(|kib| (kib <= 1024 * 1024, format!("peak {}", mib(kib)))),
    );
    let worst_ratio = ratios.iter().min_by(|a, b| a.1.total_cmp(&b.1));
    target(
        "≥ 20× less overhead than Ansible",
        worst_ratio.map(|(shape, ratio)| {
            (
                *ratio >= 20.0,
                format!(
                    "lowest ratio {ratio:.0}×, at {} hosts with {} s steps",
                    shape.nodes, shape.step_seconds
                ),
            )
        }),
    );
    out
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0} ms"))
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

fn percent(part: Duration, whole: Duration) -> String {
    if whole.is_zero() {
        "-".into()
    } else {
        format!("{:.2}%", part.as_secs_f64() / whole.as_secs_f64() * 100.0)
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
