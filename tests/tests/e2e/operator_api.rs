//! The operator API under hostile or unlucky callers (issue 18): identifiers it does not define are
//! refused with a short message that does not echo them, a control repeated with its request id is
//! applied once, and a run's logs come back whole however large they grow.

use std::time::Duration;

use fleet_proto::pb;
use fleet_proto::pb::operator_service_client::OperatorServiceClient;
use fleet_proto::tls::{TlsFiles, TlsMaterial};
use fleet_tests::{
    Agent, AgentSpec, Coordinator, CoordinatorOptions, Fleet, eventually, fleetctl, path_str,
    upgrade_actions,
};
use tonic::transport::Channel;

/// One environment, its master secret server alone, installing with the agent's own command.
const ONE_MASTER: &str = r#"
[upgrade]
target_version = "3.0.7"
installer = 'INSTALLER'
[[environment]]
name = "dev"
install = "unattended"
master = "m1"
backup_dir = 'BACKUPS'
"#;

pub(super) struct OneMaster {
    pub(super) fleet: Fleet,
    pub(super) coordinator: Coordinator,
    _agent: Agent,
    pub(super) runtime: tokio::runtime::Runtime,
}

/// A coordinator with [`ONE_MASTER`] and m1's agent attached, its fixture tools set by `extra_env`.
fn one_master(extra_env: &str) -> OneMaster {
    one_master_with("", extra_env)
}

/// [`one_master`], with `env_lines` added to the environment's table (e.g. `gate = "manual"`).
pub(super) fn one_master_with(env_lines: &str, extra_env: &str) -> OneMaster {
    let fleet = Fleet::new().unwrap();
    let backups = fleet.path("backups");
    std::fs::create_dir_all(&backups).unwrap();
    let installer = fleet
        .write("media/Setup.exe", "simulated installer\n")
        .unwrap();
    let inventory = format!("{ONE_MASTER}{env_lines}\n")
        .replace("BACKUPS", path_str(&backups).unwrap())
        .replace("INSTALLER", path_str(&installer).unwrap());
    fleet.write("fleet.toml", &inventory).unwrap();
    let coordinator =
        Coordinator::start(&fleet, "127.0.0.1:0", &CoordinatorOptions::default()).unwrap();
    fleet.issue_agent("tls", "m1", "agents/m1/tls").unwrap();
    let actions = upgrade_actions(&fleet, "m1", extra_env).unwrap();
    let agent = Agent::start_with(
        &fleet,
        &AgentSpec {
            node: "m1",
            tls_rel: "agents/m1/tls",
            coordinator: &coordinator.url(),
            version: "3.0.6",
        },
        &actions,
    )
    .unwrap();
    coordinator.wait_attached(&fleet, "m1", true);
    OneMaster {
        fleet,
        coordinator,
        _agent: agent,
        runtime: tokio::runtime::Runtime::new().unwrap(),
    }
}

impl OneMaster {
    pub(super) fn ctl(&self, args: &[&str]) -> std::process::Output {
        let (url, tls) = (self.coordinator.url(), self.fleet.path("tls"));
        let mut all = vec!["--coordinator", &url, "--tls-dir", path_str(&tls).unwrap()];
        all.extend_from_slice(args);
        fleetctl(&all)
    }

    pub(super) fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let o = self.ctl(&all);
        assert!(o.status.success(), "{args:?}: {o:?}");
        serde_json::from_slice(&o.stdout).unwrap()
    }

    pub(super) fn start(&self) -> String {
        let started = self.json(&["upgrade", "--all", "--detach"]);
        started["run_id"].as_str().unwrap().to_string()
    }

    /// The operator service's generated client, as the operator of `tls/`.
    pub(super) fn client(&self) -> OperatorServiceClient<Channel> {
        self.runtime
            .block_on(operator_client(&self.fleet, &self.coordinator))
    }
}

async fn operator_client(
    fleet: &Fleet,
    coordinator: &Coordinator,
) -> OperatorServiceClient<Channel> {
    let material =
        TlsMaterial::load_any_role(&TlsFiles::in_dir(&fleet.path("tls"), "operator")).unwrap();
    let config = material
        .client_config(material.coordinator_identity())
        .unwrap();
    let channel =
        fleet_proto::transport::connect(&coordinator.url(), config, Duration::from_secs(10))
            .await
            .unwrap();
    OperatorServiceClient::new(channel)
}

pub(super) fn control(
    run_id: &str,
    action: pb::ControlAction,
    request_id: &str,
) -> pb::ControlRequest {
    pb::ControlRequest {
        run_id: run_id.to_string(),
        action: action as i32,
        request_id: request_id.to_string(),
        ..Default::default()
    }
}

/// PAUSE r1, RESUME r2, PAUSE r1 again: the repeat changes nothing and answers with the run as it is;
/// the audit trail has one pause. The same id for another control is refused.
#[test]
fn a_control_repeated_with_its_request_id_is_applied_once() {
    let s = one_master(", FAKE_SETUP_SECONDS = \"30\"");
    let run_id = s.start();
    let mut client = s.client();
    let mut send = |request: pb::ControlRequest| {
        s.runtime
            .block_on(client.control(request))
            .map(|r| r.into_inner().run.unwrap().state())
    };
    assert_eq!(
        send(control(&run_id, pb::ControlAction::Pause, "r1")).unwrap(),
        pb::RunState::Paused
    );
    assert_eq!(
        send(control(&run_id, pb::ControlAction::Resume, "r2")).unwrap(),
        pb::RunState::Running
    );
    // A retry of the first pause (its answer lost, say): applied already, so nothing happens.
    assert_eq!(
        send(control(&run_id, pb::ControlAction::Pause, "r1")).unwrap(),
        pb::RunState::Running
    );
    assert_eq!(s.json(&["run", "show", &run_id])["state"], "running");
    // The id of the pause for a resume is a client's mistake, not a repeat.
    let status = send(control(&run_id, pb::ControlAction::Resume, "r1")).unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("r1"), "{status:?}");

    let audit = s.json(&["audit", &run_id]);
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["start", "pause", "resume"], "{audit}");

    // fleetctl gives each invocation its own id: a second pause is a second request.
    let o = s.ctl(&["pause", &run_id]);
    assert!(o.status.success(), "{o:?}");
    let o = s.ctl(&["resume", &run_id]);
    assert!(o.status.success(), "{o:?}");
    let o = s.ctl(&["pause", &run_id]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(s.json(&["run", "show", &run_id])["state"], "paused");
    let o = s.ctl(&["abort", &run_id]);
    assert!(o.status.success(), "{o:?}");
}

/// Every identifier of every operator RPC, a megabyte long or empty: INVALID_ARGUMENT, and a message
/// short enough to read (not the input sent back).
#[test]
fn oversized_or_empty_identifiers_are_refused_without_echoing_them() {
    let s = one_master("");
    let run_id = s.start();
    let mut client = s.client();
    let huge = "a".repeat(1 << 20);
    let huge_bad = "a b".repeat(1 << 18);
    let selection = |envs: Vec<String>| pb::RunSelection {
        environments: envs,
        ..Default::default()
    };
    let with = |f: &dyn Fn(&mut pb::ControlRequest)| {
        let mut r = control(&run_id, pb::ControlAction::Retry, "");
        f(&mut r);
        r
    };
    type Call = Result<(), tonic::Status>;
    let rt = &s.runtime;
    let mut calls: Vec<(&str, Call)> = Vec::new();
    for (what, id) in [
        ("huge", &huge),
        ("bad", &huge_bad),
        ("empty", &String::new()),
    ] {
        let c = &mut client;
        calls.push((
            what,
            rt.block_on(c.get_run(pb::GetRunRequest { run_id: id.clone() }))
                .map(drop),
        ));
        calls.push((
            what,
            rt.block_on(c.control(control(id, pb::ControlAction::Pause, "")))
                .map(drop),
        ));
        calls.push((
            what,
            rt.block_on(c.logs(pb::LogsRequest {
                run_id: id.clone(),
                ..Default::default()
            }))
            .map(drop),
        ));
        calls.push((
            what,
            rt.block_on(c.watch_run(pb::WatchRunRequest {
                run_id: id.clone(),
                ..Default::default()
            }))
            .map(drop),
        ));
        calls.push((
            what,
            rt.block_on(c.audit(pb::AuditRequest {
                run_id: Some(id.clone()),
            }))
            .map(drop),
        ));
        calls.push((
            what,
            rt.block_on(c.control(with(&|r| r.node = Some(id.clone()))))
                .map(drop),
        ));
        calls.push((
            what,
            rt.block_on(c.control(with(&|r| {
                r.node = Some("m1".into());
                r.step = Some(id.clone());
            })))
            .map(drop),
        ));
        calls.push((
            what,
            rt.block_on(c.logs(pb::LogsRequest {
                run_id: run_id.clone(),
                node: Some(id.clone()),
                step: None,
                ..Default::default()
            }))
            .map(drop),
        ));
        calls.push((
            what,
            rt.block_on(c.watch_run(pb::WatchRunRequest {
                run_id: run_id.clone(),
                step: Some(id.clone()),
                ..Default::default()
            }))
            .map(drop),
        ));
        calls.push((
            what,
            rt.block_on(c.plan(pb::PlanRequest {
                selection: Some(selection(vec![id.clone()])),
            }))
            .map(drop),
        ));
        calls.push((
            what,
            rt.block_on(c.start_run(pb::StartRunRequest {
                selection: Some(selection(vec![id.clone()])),
                plan_hash: None,
            }))
            .map(drop),
        ));
    }
    // Free text and keys: too long is refused (empty is allowed: no comment, no request id), and the
    // running run is not paused.
    let pause = |f: &dyn Fn(&mut pb::ControlRequest)| {
        let mut r = control(&run_id, pb::ControlAction::Pause, "");
        f(&mut r);
        r
    };
    for request in [
        pause(&|r| r.comment = huge.clone()),
        pause(&|r| r.request_id = huge.clone()),
    ] {
        calls.push(("huge", rt.block_on(client.control(request)).map(drop)));
    }
    calls.push((
        "huge",
        rt.block_on(client.start_run(pb::StartRunRequest {
            selection: Some(pb::RunSelection {
                all: true,
                ..Default::default()
            }),
            plan_hash: Some(huge.clone()),
        }))
        .map(drop),
    ));
    for (i, (what, call)) in calls.iter().enumerate() {
        let Err(status) = call else {
            panic!("call {i} ({what}) was accepted");
        };
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "call {i} ({what}): {:.300}",
            status.message()
        );
        assert!(
            status.message().len() < 300,
            "call {i} ({what}): {} bytes: {:.300}",
            status.message().len(),
            status.message()
        );
    }
    // Nothing of it reached the run, and the coordinator still answers.
    let run = s.json(&["run", "show", &run_id]);
    assert_ne!(run["state"], "paused", "{run}");
}

/// A run whose steps print more than gRPC's 4 MB message limit in total (each under the agent's
/// cap on a step's output, `node-agent/src/limits.rs`): `fleetctl logs` pages through it and prints
/// every line, for the whole run and for one step.
#[test]
fn logs_larger_than_a_message_come_back_whole() {
    const LINES: usize = 450; // about 1.8 MB a step; backup, upgrade and verify: about 5.4 MB
    let s = one_master(", FAKE_CHATTY_LINES = \"450\"");
    let run_id = s.start();
    eventually(Duration::from_secs(60), "the run to succeed", || {
        (s.json(&["run", "show", &run_id])["state"] == "succeeded").then_some(())
    });
    let whole = vec!["logs", run_id.as_str()];
    let one_step = vec![
        "logs",
        run_id.as_str(),
        "--node",
        "m1",
        "--step",
        "backup-secret",
    ];
    for (args, tools, at_least) in [
        (whole, &["ssoconfig", "setup", "verify"][..], 5 << 20),
        (one_step, &["ssoconfig"][..], 1 << 20),
    ] {
        let o = s.ctl(&args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.len() > at_least, "{args:?}: {} bytes", text.len());
        for tool in tools {
            let chatty: Vec<&str> = text
                .lines()
                .filter(|l| l.contains(&format!("chatty {tool} line ")))
                .collect();
            assert_eq!(chatty.len(), LINES, "{args:?} {tool}");
            for (i, line) in chatty.iter().enumerate() {
                assert!(
                    line.contains(&format!("chatty {tool} line {} 0000", i + 1)),
                    "{args:?}: {tool} line {i} out of order: {:.80}",
                    line
                );
            }
        }
        assert!(
            text.contains("The operation completed successfully."),
            "{args:?}: the lines after the chatty ones are there too"
        );
    }
}
