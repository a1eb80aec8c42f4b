//! `fleetctl upgrade` end to end: real coordinator, agents and fleetctl; the simulated ESSO tools keep
//! their own timestamped log, and the ordering invariants are checked against that log.

use crate::durability::wait_state;
use std::collections::{BTreeMap, HashMap};
use std::process::Output;

use fleet_tests::proxy::Proxy;
use fleet_tests::{
    Agent, AgentSpec, Coordinator, CoordinatorOptions, Fleet, PATIENCE, ToolEvent, eventually,
    fleetctl, path_str, tool_log, upgrade_actions,
};

/// dev: m1 + a1..a3, prod: m2 + b1, b2; two members at a time. Both environments install
/// unattended: every agent of [`setup`] installs with its own command (the `esso-setup` fixture as
/// `[actions.install_sso]`), the one way a BizTalk upgrade may run without an operator.
pub(crate) const FLEET: &str = r#"
[upgrade]
target_version = "3.0.7"
installer = 'INSTALLER'
[policy]
max_parallel = 2
max_failures = 0
[[environment]]
name = "dev"
gate = "auto"
install = "unattended"
master = "m1"
members = ["a1", "a2", "a3"]
backup_dir = 'BACKUPS'
[[environment]]
name = "prod"
install = "unattended"
master = "m2"
members = ["b1", "b2"]
backup_dir = 'BACKUPS'
"#;

pub(crate) const NODES: [(&str, &str); 7] = [
    ("m1", "dev"),
    ("a1", "dev"),
    ("a2", "dev"),
    ("a3", "dev"),
    ("m2", "prod"),
    ("b1", "prod"),
    ("b2", "prod"),
];

pub(crate) struct Setup {
    pub(crate) fleet: Fleet,
    pub(crate) coordinator: Coordinator,
    /// In the order of [`NODES`].
    pub(crate) agents: Vec<Agent>,
    /// The fault proxy each proxied node's agent reaches the coordinator through.
    pub(crate) proxies: BTreeMap<String, Proxy>,
}

/// A fleet on `inventory`; every node at 3.0.6 unless `versions` says otherwise; `env` adds fixture
/// settings per node (e.g. a failing setup).
pub(crate) fn setup(inventory: &str, versions: &[(&str, &str)], env: &[(&str, &str)]) -> Setup {
    setup_proxied(inventory, versions, env, &[])
}

/// As [`setup`], with the agents of `proxied` reaching the coordinator through a fault proxy each.
pub(crate) fn setup_proxied(
    inventory: &str,
    versions: &[(&str, &str)],
    env: &[(&str, &str)],
    proxied: &[&str],
) -> Setup {
    let fleet = Fleet::new().unwrap();
    let backups = fleet.path("backups");
    std::fs::create_dir_all(&backups).unwrap();
    let installer = fleet
        .write("media/Setup.exe", "simulated ESSO installer 3.0.7\n")
        .unwrap();
    // A standalone master secret server's installer, for inventories that name one.
    let master_installer = fleet
        .write(
            "media/Platform/SSO/Setup.exe",
            "simulated SSO setup 3.0.7\n",
        )
        .unwrap();
    let inventory = inventory
        .replace("BACKUPS", path_str(&backups).unwrap())
        .replace("MASTER_INSTALLER", path_str(&master_installer).unwrap())
        .replace("INSTALLER", path_str(&installer).unwrap());
    fleet.write("fleet.toml", &inventory).unwrap();
    let coordinator =
        Coordinator::start(&fleet, "127.0.0.1:0", &CoordinatorOptions::default()).unwrap();
    let proxies: BTreeMap<String, Proxy> = proxied
        .iter()
        .map(|n| (n.to_string(), Proxy::start(coordinator.addr).unwrap()))
        .collect();
    let agents = NODES
        .iter()
        .map(|(node, _)| {
            let tls = format!("agents/{node}/tls");
            fleet.issue_agent("tls", node, &tls).unwrap();
            let version = versions
                .iter()
                .find(|(n, _)| n == node)
                .map_or("3.0.6", |(_, v)| v);
            let extra_env = env.iter().find(|(n, _)| n == node).map_or("", |(_, e)| e);
            let actions = upgrade_actions(&fleet, node, extra_env).unwrap();
            let url = proxies
                .get(*node)
                .map_or_else(|| coordinator.url(), Proxy::url);
            Agent::start_with(
                &fleet,
                &AgentSpec {
                    node,
                    tls_rel: &tls,
                    coordinator: &url,
                    version,
                },
                &actions,
            )
            .unwrap()
        })
        .collect();
    for (node, _) in NODES {
        coordinator.wait_attached(&fleet, node, true);
    }
    Setup {
        fleet,
        coordinator,
        agents,
        proxies,
    }
}

/// Starts `node`'s agent again on its state directory (after it was killed), with the fixture
/// settings `extra_env` and `extra` lines appended to its agent.toml.
pub(crate) fn restart_agent_with(s: &Setup, node: &str, extra_env: &str, extra: &str) -> Agent {
    let actions = upgrade_actions(&s.fleet, node, extra_env).unwrap() + extra;
    let tls = format!("agents/{node}/tls");
    let url = s
        .proxies
        .get(node)
        .map_or_else(|| s.coordinator.url(), Proxy::url);
    Agent::start_with(
        &s.fleet,
        &AgentSpec {
            node,
            tls_rel: &tls,
            coordinator: &url,
            version: "3.0.6",
        },
        &actions,
    )
    .unwrap()
}

pub(crate) fn restart_agent(s: &Setup, node: &str) -> Agent {
    restart_agent_with(s, node, "", "")
}

impl Setup {
    pub(crate) fn ctl(&self, args: &[&str]) -> Output {
        let (url, tls) = (self.coordinator.url(), self.fleet.path("tls"));
        let mut all = vec![
            "--coordinator",
            url.as_str(),
            "--tls-dir",
            path_str(&tls).unwrap(),
        ];
        all.extend_from_slice(args);
        fleetctl(&all)
    }

    pub(crate) fn json(&self, args: &[&str]) -> (Option<i32>, serde_json::Value) {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let o = self.ctl(&all);
        let json =
            serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {o:?}"));
        (o.status.code(), json)
    }

    /// Each step of a run (`run show`) as `node step` (`-` for the coordinator's) → its state.
    pub(crate) fn steps(run: &serde_json::Value) -> HashMap<String, String> {
        Self::by_step(run, "state")
    }

    /// Each step of a run or plan as `node step` → its `field` (`state`, `expected`, …).
    pub(crate) fn by_step(run_or_plan: &serde_json::Value, field: &str) -> HashMap<String, String> {
        run_or_plan["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    format!(
                        "{} {}",
                        s["node"].as_str().unwrap_or("-"),
                        s["step"].as_str().unwrap()
                    ),
                    s[field].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// What the agents reported for one step of a run (`fleetctl logs`), as text.
    pub(crate) fn step_log(&self, run_id: &str, node: &str, step: &str) -> String {
        let o = self.ctl(&["logs", run_id, "--node", node, "--step", step]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

fn env_of(node: &str) -> &'static str {
    NODES
        .iter()
        .find(|(n, _)| *n == node)
        .map(|(_, e)| *e)
        .unwrap()
}

fn is_master(node: &str) -> bool {
    node.starts_with('m')
}

/// Invariants 1–3 of SPEC §5 from the tools' own log, and each tool run at most once per node.
pub(crate) fn check_order(log: &[ToolEvent], max_parallel: usize) {
    assert!(!log.is_empty(), "the tools logged nothing");
    for env in ["dev", "prod"] {
        // 1. No member tool starts before its master's verify ended.
        let master_verified = log
            .iter()
            .find(|e| {
                env_of(&e.node) == env && is_master(&e.node) && e.tool == "verify" && !e.start
            })
            .map(|e| e.at_ns);
        for e in log
            .iter()
            .filter(|e| env_of(&e.node) == env && !is_master(&e.node) && e.start)
        {
            let verified = master_verified.unwrap_or_else(|| {
                panic!(
                    "{} {} ran, but the {env} master was never verified",
                    e.node, e.tool
                )
            });
            assert!(
                e.at_ns > verified,
                "{} {} started before the {env} master was verified",
                e.node,
                e.tool
            );
        }
        // 3. At most max_parallel member tools at once.
        let mut running = 0usize;
        for e in log
            .iter()
            .filter(|e| env_of(&e.node) == env && !is_master(&e.node))
        {
            if e.start {
                running += 1;
                assert!(
                    running <= max_parallel,
                    "{running} member steps at once in {env}"
                );
            } else {
                running -= 1;
            }
        }
    }
    // 2. Nothing of prod before everything of dev ended.
    let dev_end = log
        .iter()
        .filter(|e| env_of(&e.node) == "dev")
        .map(|e| e.at_ns)
        .max();
    if let Some(first_prod) = log.iter().find(|e| env_of(&e.node) == "prod") {
        assert!(
            dev_end.is_some_and(|end| first_prod.at_ns > end),
            "prod started before dev finished"
        );
    }
    // Each tool at most once per node.
    let mut runs: HashMap<(String, String), usize> = HashMap::new();
    for e in log.iter().filter(|e| e.start) {
        *runs.entry((e.node.clone(), e.tool.clone())).or_default() += 1;
    }
    assert!(runs.values().all(|n| *n == 1), "a tool ran twice: {runs:?}");
}

pub(crate) fn setups(log: &[ToolEvent]) -> Vec<String> {
    log.iter()
        .filter(|e| e.tool == "setup" && e.start)
        .map(|e| e.node.clone())
        .collect()
}

/// How many times `node`'s setup started, from the fixtures' log.
pub(crate) fn setups_of(fleet: &Fleet, node: &str) -> usize {
    setups(&tool_log(fleet))
        .iter()
        .filter(|n| *n == node)
        .count()
}

#[test]
fn two_environments_upgrade_master_first_members_two_at_a_time() {
    let s = setup(
        FLEET,
        &[],
        &[
            ("a1", ", FAKE_SETUP_SECONDS = \"0.3\""),
            ("a2", ", FAKE_SETUP_SECONDS = \"0.3\""),
            ("a3", ", FAKE_SETUP_SECONDS = \"0.3\""),
        ],
    );
    let (code, run) = s.json(&["upgrade", "--all"]);
    assert_eq!(code, Some(0), "{run}");
    assert_eq!(run["state"], "succeeded");
    let log = tool_log(&s.fleet);
    check_order(&log, 2);
    let mut installed = setups(&log);
    installed.sort();
    assert_eq!(installed, ["a1", "a2", "a3", "b1", "b2", "m1", "m2"]);
    // The secret backups were recorded with their size and hash.
    let backups: Vec<&serde_json::Value> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["step"] == "backup-secret")
        .collect();
    assert_eq!(backups.len(), 2);
    for b in backups {
        let artifact = &b["artifacts"][0];
        let path = artifact["path"].as_str().unwrap();
        assert_eq!(
            artifact["size"].as_u64().unwrap(),
            std::fs::metadata(path).unwrap().len()
        );
        assert_eq!(artifact["sha256"].as_str().unwrap().len(), 64);
    }
    // `runs` and `audit` know about it.
    let (_, runs) = s.json(&["runs"]);
    assert_eq!(runs[0]["state"], "succeeded");
    let (_, audit) = s.json(&["audit"]);
    assert_eq!(
        (audit[0]["operator"].as_str(), audit[0]["action"].as_str()),
        (Some("admin"), Some("start"))
    );
    // What a step printed is kept.
    let o = s.ctl(&[
        "logs",
        run["id"].as_str().unwrap(),
        "--node",
        "m1",
        "--step",
        "upgrade-master",
    ]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("upgrade-master: [100%] installed"),
        "{o:?}"
    );
}

#[test]
fn a_failing_master_install_halts_and_no_member_is_touched() {
    let s = setup(FLEET, &[], &[("m1", ", FAKE_SETUP_EXIT = \"67\"")]);
    let (code, run) = s.json(&["upgrade", "--all"]);
    assert_eq!(code, Some(1), "{run}");
    assert_eq!(run["state"], "halted");
    assert!(
        run["reason"]
            .as_str()
            .unwrap()
            .contains("upgrade-master on m1 (dev) failed"),
        "{run}"
    );
    assert_eq!(
        setups(&tool_log(&s.fleet)),
        ["m1"],
        "no member, no other environment"
    );
    // The operator cannot skip the master: members never start on an unverified master.
    let o = s.ctl(&["skip", run["id"].as_str().unwrap(), "--node", "m1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot be skipped"),
        "{o:?}"
    );
}

#[test]
fn a_failing_member_halts_with_max_failures_0_and_the_run_goes_on_with_1() {
    let s = setup(FLEET, &[], &[("a1", ", FAKE_SETUP_EXIT = \"67\"")]);
    let (code, run) = s.json(&["upgrade", "--all", "--max-parallel", "1"]);
    assert_eq!(code, Some(1), "{run}");
    assert_eq!(run["state"], "halted");
    assert!(
        run["reason"]
            .as_str()
            .unwrap()
            .contains("exceed max_failures = 0"),
        "{run}"
    );
    let log = tool_log(&s.fleet);
    assert!(
        log.iter().all(|e| env_of(&e.node) == "dev"),
        "prod untouched"
    );
    assert_eq!(setups(&log), ["m1", "a1"]);

    let s = setup(FLEET, &[], &[("a1", ", FAKE_SETUP_EXIT = \"67\"")]);
    let (code, run) = s.json(&["upgrade", "--all", "--max-failures", "1"]);
    assert_eq!(
        code,
        Some(1),
        "a failed member fails the run, which still went on: {run}"
    );
    assert_eq!(run["state"], "failed");
    let steps = Setup::steps(&run);
    assert_eq!(steps["a1 upgrade"], "failed");
    assert_eq!(steps["a1 verify"], "skipped");
    assert_eq!(steps["b2 verify"], "succeeded");
    check_order(&tool_log(&s.fleet), 2);
}

#[test]
fn a_plan_hash_is_accepted_and_refused_once_the_inventory_changed() {
    let s = setup(FLEET, &[], &[]);
    let (_, plan) = s.json(&["plan", "--all"]);
    let hash = plan["plan_hash"].as_str().unwrap().to_string();

    // The inventory changes under the reviewed plan: the coordinator restarted on it refuses the hash.
    let addr = s.coordinator.addr.to_string();
    let Setup {
        fleet,
        mut coordinator,
        agents,
        proxies,
    } = s;
    coordinator.process.kill();
    let text = std::fs::read_to_string(fleet.path("fleet.toml"))
        .unwrap()
        .replace("max_parallel = 2", "max_parallel = 1");
    fleet.write("fleet.toml", &text).unwrap();
    let coordinator = eventually(PATIENCE, "the coordinator back on its port", || {
        Coordinator::start(&fleet, &addr, &CoordinatorOptions::default()).ok()
    });
    for (node, _) in NODES {
        coordinator.wait_attached(&fleet, node, true);
    }
    let s = Setup {
        fleet,
        coordinator,
        agents,
        proxies,
    };
    let o = s.ctl(&["upgrade", "--all", "--plan-hash", &hash]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("drifted from the reviewed plan"),
        "{o:?}"
    );
    assert!(tool_log(&s.fleet).is_empty(), "nothing ran");

    let (_, plan) = s.json(&["plan", "--all"]);
    let (code, run) = s.json(&[
        "upgrade",
        "--all",
        "--plan-hash",
        plan["plan_hash"].as_str().unwrap(),
    ]);
    assert_eq!((code, run["state"].as_str()), (Some(0), Some("succeeded")));
}

#[test]
fn master_only_leaves_members_and_already_current_nodes_are_not_reinstalled() {
    let s = setup(FLEET, &[("a2", "3.0.7"), ("m2", "3.0.7")], &[]);
    let (code, run) = s.json(&["upgrade", "--all", "--master-only"]);
    assert_eq!(code, Some(0), "{run}");
    let steps = Setup::steps(&run);
    assert_eq!(steps["a1 upgrade"], "skipped");
    assert_eq!(steps["m2 upgrade-master"], "already-current");
    assert_eq!(
        steps["m2 verify-master"], "succeeded",
        "a current master is still verified"
    );
    assert_eq!(setups(&tool_log(&s.fleet)), ["m1"]);

    // Now the members: a2 is already current and is not reinstalled.
    let (code, run) = s.json(&["upgrade", "--all"]);
    assert_eq!(code, Some(0), "{run}");
    let steps = Setup::steps(&run);
    assert_eq!(steps["a2 upgrade"], "already-current");
    assert_eq!(
        steps["m1 upgrade-master"], "already-current",
        "m1 was upgraded by the first run"
    );
    let mut installed = setups(&tool_log(&s.fleet));
    installed.sort();
    assert_eq!(installed, ["a1", "a3", "b1", "b2", "m1"]);
}

#[test]
fn a_manual_gate_waits_for_approve_and_a_soak_gate_for_its_time() {
    let inventory = FLEET
        .replace("gate = \"auto\"", "gate = \"manual\"")
        .replace("name = \"prod\"", "name = \"prod\"\ngate = \"soak 1s\"");
    let s = setup(&inventory, &[], &[]);
    let (code, started) = s.json(&["upgrade", "--all", "--detach"]);
    assert_eq!(code, Some(0));
    let id = started["run_id"].as_str().unwrap().to_string();
    eventually(PATIENCE, "the run to wait for approval", || {
        let (_, run) = s.json(&["run", "show", &id]);
        (run["state"] == "waiting-approval").then_some(())
    });
    assert!(
        tool_log(&s.fleet).iter().all(|e| env_of(&e.node) == "dev"),
        "prod waits behind the gate"
    );

    let (code, _) = s.json(&["approve", &id]);
    assert_eq!(code, Some(0));
    let run = wait_state(&s, &id, "succeeded");
    assert_eq!(Setup::steps(&run)["- gate"], "succeeded");
    let log = tool_log(&s.fleet);
    check_order(&log, 2);
    let (_, audit) = s.json(&["audit", &id]);
    let actions: Vec<(&str, &str)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["operator"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(actions, [("admin", "start"), ("admin", "approve")]);
    // The prod soak: its gate passed no sooner than 1 s after prod's last tool ended.
    let prod_end_ns = log
        .iter()
        .filter(|e| env_of(&e.node) == "prod")
        .map(|e| e.at_ns)
        .max()
        .unwrap();
    let gate = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["environment"] == "prod" && s["step"] == "gate")
        .unwrap();
    let passed_ms = u128::from(gate["finished_at_ms"].as_u64().unwrap());
    assert!(
        passed_ms * 1_000_000 >= prod_end_ns + 1_000_000_000 - 1_000_000,
        "the soak gate passed {} ms after prod ended",
        (passed_ms * 1_000_000).saturating_sub(prod_end_ns) / 1_000_000
    );
}

#[test]
fn every_environment_installs_the_same_installer() {
    let inventory = FLEET.replace("gate = \"auto\"", "gate = \"manual\"");
    let s = setup(&inventory, &[], &[]);
    let (_, started) = s.json(&["upgrade", "--all", "--detach"]);
    let id = started["run_id"].as_str().unwrap().to_string();
    eventually(PATIENCE, "dev to wait at its gate", || {
        let (_, run) = s.json(&["run", "show", &id]);
        (run["state"] == "waiting-approval").then_some(())
    });
    // Someone replaces the installer between the environments.
    s.fleet.write("media/Setup.exe", "another build\n").unwrap();
    s.json(&["approve", &id]);
    let run = wait_state(&s, &id, "halted");
    assert!(
        run["reason"]
            .as_str()
            .unwrap()
            .contains("one run installs one installer"),
        "{run}"
    );
    assert!(
        tool_log(&s.fleet).iter().all(|e| env_of(&e.node) == "dev"),
        "prod was not touched"
    );
}

#[test]
fn the_master_installs_from_its_own_installer_and_each_role_keeps_its_installer() {
    let inventory = FLEET
        .replace(
            "installer = 'INSTALLER'\n",
            "installer = 'INSTALLER'\nmaster_installer = 'MASTER_INSTALLER'\n",
        )
        .replace("gate = \"auto\"", "gate = \"manual\"");
    let s = setup(&inventory, &[], &[]);
    let master_installer = s.fleet.path("media/Platform/SSO/Setup.exe");
    // `plan` names the master's installer on its install step.
    let (_, plan) = s.json(&["plan", "--all"]);
    let note = |node: &str, step: &str| {
        plan["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|st| st["node"] == node && st["step"] == step)
            .map(|st| st["note"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(
        note("m1", "upgrade-master"),
        format!("from {}", master_installer.display())
    );
    assert_eq!(note("a1", "upgrade"), "");
    assert_eq!(
        plan["master_installer"],
        path_str(&master_installer).unwrap()
    );
    let (_, started) = s.json(&["upgrade", "--all", "--detach"]);
    let id = started["run_id"].as_str().unwrap().to_string();
    let run = eventually(PATIENCE, "dev to wait at its gate", || {
        let (_, run) = s.json(&["run", "show", &id]);
        (run["state"] == "waiting-approval").then_some(run)
    });
    // `run show` records each role's installer as preflight read it.
    let sha256 = |path: &std::path::Path| {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(std::fs::read(path).unwrap());
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert_eq!(
        run["master_installer_sha256"],
        sha256(&master_installer),
        "{run}"
    );
    assert_eq!(
        run["installer_sha256"],
        sha256(&s.fleet.path("media/Setup.exe")),
        "{run}"
    );
    // The members' installer is what dev's members read; the master read its own: replacing the
    // master's between the environments stops prod's preflight, naming the master's installer.
    s.fleet
        .write("media/Platform/SSO/Setup.exe", "another build\n")
        .unwrap();
    s.json(&["approve", &id]);
    let run = wait_state(&s, &id, "halted");
    let reason = run["reason"].as_str().unwrap();
    assert!(
        reason.contains("preflight of prod failed")
            && reason.contains(&format!(
                "the master installer {} here has SHA-256",
                master_installer.display()
            ))
            && reason.contains("one run installs one installer per role"),
        "{reason}"
    );
    assert!(
        tool_log(&s.fleet).iter().all(|e| env_of(&e.node) == "dev"),
        "prod was not touched"
    );
}

#[test]
fn a_missing_installer_stops_the_environment_in_preflight() {
    let s = setup(FLEET, &[], &[]);
    std::fs::remove_file(s.fleet.path("media/Setup.exe")).unwrap();
    let (code, run) = s.json(&["upgrade", "--all"]);
    assert_eq!(code, Some(1));
    let reason = run["reason"].as_str().unwrap();
    assert!(
        reason.contains("preflight of dev failed") && reason.contains("Setup.exe"),
        "{reason}"
    );
    assert!(tool_log(&s.fleet).is_empty(), "nothing ran");
}
