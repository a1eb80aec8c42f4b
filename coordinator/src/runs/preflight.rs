//! Preflight, the coordinator's first step in every environment: the nodes are there and healthy (no
//! facts error, no failed fitness check: `fitness`), the installers they will install are the same on
//! each node of a role, and the SSO database names the inventory's master.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::Request;
use crate::domain::{NodeName, Role};
use crate::engine::Run;
use crate::fitness;
use crate::fleet::FleetHandle;
use crate::inventory::SsoDatabase;
use crate::plan::{Expected, Plan};
use crate::protocol::{Facts, ToAgent};
use crate::sql;

/// How long preflight waits for the environment's nodes to attach.
const ATTACH_WAIT: Duration = Duration::from_secs(60);

/// Where an SSO database is configured: it must record the inventory's master as the master secret server.
pub(super) struct SsoCheck {
    pub db: SsoDatabase,
    pub master: NodeName,
    pub env: String,
}

/// The installers' SHA-256 per role (invariant 8 holds per role): what a preflight read, and what a
/// run recorded from the first preflight that read each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct InstallerHashes {
    pub master: Option<String>,
    pub member: Option<String>,
}

impl InstallerHashes {
    /// As a run stored them: `member` in `installer_sha256`, `master` in `master_installer_sha256`.
    /// A run stored before the master had an installer of its own recorded one hash for both roles.
    pub(super) fn stored(
        master_installer: Option<&str>,
        member: Option<String>,
        master: Option<String>,
    ) -> Self {
        Self {
            master: master.or_else(|| master_installer.is_none().then(|| member.clone()).flatten()),
            member,
        }
    }

    pub(super) fn get(&self, role: Role) -> Option<&String> {
        match role {
            Role::Master => self.master.as_ref(),
            Role::Member => self.member.as_ref(),
        }
    }

    pub(super) fn set(&mut self, role: Role, hash: String) {
        match role {
            Role::Master => self.master = Some(hash),
            Role::Member => self.member = Some(hash),
        }
    }
}

/// One installer a preflight reads, the roles that install from it, and the nodes that install here.
struct InstallerGroup {
    installer: String,
    roles: Vec<Role>,
    nodes: Vec<NodeName>,
}

/// What a preflight checks: the nodes of one environment that have steps to run, the installers the
/// installing ones read (one per role, or one for both where the master has no installer of its own);
/// and the SSO database's master secret server, where one is configured.
pub(super) struct PreflightJob {
    run_id: String,
    step: usize,
    attempt: u32,
    epoch: u64,
    nodes: BTreeSet<NodeName>,
    groups: Vec<InstallerGroup>,
    sso: Option<SsoCheck>,
}

impl PreflightJob {
    pub(super) fn new(
        run_id: &str,
        run: &Run,
        plan: &Plan,
        step: usize,
        attempt: u32,
        epoch: u64,
        sso: Option<SsoCheck>,
    ) -> Self {
        let env = run.steps()[step].plan().env;
        let steps = &run.steps()[run.envs()[env].steps()];
        let nodes = steps
            .iter()
            .filter(|x| matches!(x.plan().expected, Expected::Run))
            .filter_map(|x| x.plan().node.clone())
            .collect();
        let mut groups: Vec<InstallerGroup> = Vec::new();
        for role in [Role::Master, Role::Member] {
            let installer = plan.installer_for(role);
            let index = match groups.iter().position(|g| g.installer == installer) {
                Some(i) => i,
                None => {
                    groups.push(InstallerGroup {
                        installer: installer.to_string(),
                        roles: Vec::new(),
                        nodes: Vec::new(),
                    });
                    groups.len() - 1
                }
            };
            groups[index].roles.push(role);
            groups[index].nodes.extend(
                steps
                    .iter()
                    .filter(|x| matches!(x.plan().expected, Expected::Run))
                    .filter(|x| x.plan().kind.installs() && x.plan().kind.role() == Some(role))
                    .filter_map(|x| x.plan().node.clone()),
            );
        }
        groups.retain(|g| !g.nodes.is_empty());
        for group in &mut groups {
            // In the inventory's order by name, so that the first hash is the same at every run.
            group.nodes.sort();
        }
        Self {
            run_id: run_id.to_string(),
            step,
            attempt,
            epoch,
            nodes,
            groups,
            sso,
        }
    }
}

/// Preflight, off the manager's task: every node with a step to run is attached and its facts have no
/// error; every installing node reads its role's installer, and all nodes of a role read the same SHA-256.
pub(super) async fn preflight(
    job: PreflightJob,
    fleet: FleetHandle,
    requests: mpsc::Sender<Request>,
) {
    let (database, nodes) = tokio::join!(
        check_master_secret_server(job.sso.as_ref()),
        check_nodes(&job, &fleet)
    );
    let result = match (database, nodes) {
        (Ok(()), nodes) => nodes,
        (Err(db), Ok(_)) => Err(db),
        (Err(db), Err(nodes)) => Err(format!("{db}; {nodes}")),
    };
    let _ = requests
        .send(Request::PreflightDone {
            run_id: job.run_id,
            step: job.step,
            attempt: job.attempt,
            result,
        })
        .await;
}

/// The nodes' part of preflight: attached, healthy facts, the installers' SHA-256 per role.
async fn check_nodes(job: &PreflightJob, fleet: &FleetHandle) -> Result<InstallerHashes, String> {
    const WAIT: Duration = Duration::from_secs(120);
    // Looked at again whenever the fleet changes (an attach, a detach, facts), never polled.
    let mut changes = fleet.changes();
    // Nodes that are away (a restarted coordinator, an agent re-attaching) get a while to attach.
    let attach_deadline = Instant::now() + ATTACH_WAIT;
    let mut past = false;
    let detached = loop {
        changes.mark_unchanged();
        let attached: BTreeSet<NodeName> = fleet.attached().await.unwrap_or_default();
        let detached: Vec<String> = job
            .nodes
            .iter()
            .filter(|n| !attached.contains(*n))
            .map(|n| format!("{n} is not attached"))
            .collect();
        if detached.is_empty() || past {
            break detached;
        }
        past = !changed_before(&mut changes, attach_deadline).await;
    };
    if !detached.is_empty() {
        return Err(format!(
            "{} (waited {} s)",
            detached.join("; "),
            ATTACH_WAIT.as_secs()
        ));
    }
    // Ask each installing node for fresh facts, its role's installer's SHA-256 among them: one
    // request to the fleet per installer, then all the answers looked at together.
    let mut waiting: Vec<(usize, NodeName, u64)> = Vec::new();
    for (g, group) in job.groups.iter().enumerate() {
        let message = ToAgent::RefreshFacts {
            installer: group.installer.clone(),
            epoch: job.epoch,
        };
        let asked = fleet
            .ask_facts(group.nodes.clone(), message)
            .await
            .unwrap_or_default();
        for (node, before) in asked {
            match before {
                Some(before) => waiting.push((g, node, before)),
                None => return Err(format!("{node} is not attached")),
            }
        }
    }
    let deadline = Instant::now() + WAIT;
    let mut past = false;
    let mut problems = Vec::new();
    let mut answered: Vec<(usize, NodeName, Facts)> = Vec::new();
    while !waiting.is_empty() {
        changes.mark_unchanged();
        let since = waiting.iter().map(|(_, n, b)| (n.clone(), *b)).collect();
        let facts = fleet.facts_since(since).await.unwrap_or_default();
        let mut still = Vec::new();
        for ((g, node, before), facts) in waiting.into_iter().zip(facts) {
            match facts {
                Some(f) => answered.push((g, node, f)),
                None => still.push((g, node, before)),
            }
        }
        waiting = still;
        if waiting.is_empty() {
            break;
        }
        if past {
            problems.extend(waiting.iter().map(|(_, node, _)| {
                format!(
                    "{node} did not report its facts within {} s",
                    WAIT.as_secs()
                )
            }));
            break;
        }
        past = !changed_before(&mut changes, deadline).await;
    }
    // In the order asked (by name), so that the first hash is the same at every run.
    answered.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut hashes: Vec<Vec<(NodeName, String)>> = vec![Vec::new(); job.groups.len()];
    for (g, node, f) in answered {
        if !f.error.is_empty() {
            problems.push(format!("{node}: {}", f.error));
            continue;
        }
        problems.extend(fitness::failures(node.as_str(), &f.checks));
        match f.installer_sha256 {
            Some(hash) => hashes[g].push((node, hash)),
            None => problems.push(format!(
                "{node} did not report the SHA-256 of {}",
                job.groups[g].installer
            )),
        }
    }
    // Nodes that only verify must still report healthy facts.
    let installing: BTreeSet<&NodeName> = job.groups.iter().flat_map(|g| &g.nodes).collect();
    for node in job.nodes.iter().filter(|n| !installing.contains(n)) {
        match fleet.facts_of(node.clone()).await {
            Some((_, facts)) => {
                if !facts.error.is_empty() {
                    problems.push(format!("{node}: {}", facts.error));
                }
                problems.extend(fitness::failures(node.as_str(), &facts.checks));
            }
            None => problems.push(format!("{node} has reported no facts")),
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    let mut read = InstallerHashes::default();
    for (group, hashes) in job.groups.iter().zip(hashes) {
        let Some((first_node, first)) = hashes.first() else {
            continue;
        };
        let differing: Vec<String> = hashes
            .iter()
            .filter(|(_, h)| h != first)
            .map(|(n, h)| format!("{n} has {h}"))
            .collect();
        if !differing.is_empty() {
            return Err(format!(
                "the nodes read different installers at {}: {first_node} has {first}, {}",
                group.installer,
                differing.join(", ")
            ));
        }
        for role in &group.roles {
            read.set(*role, first.clone());
        }
    }
    Ok(read)
}

/// Waits until the fleet changes after the last look (`mark_unchanged`), or until `deadline`: false
/// when the deadline came first (the caller looks once more, then gives up). A fleet task that has
/// stopped changes nothing more.
async fn changed_before(changes: &mut watch::Receiver<u64>, deadline: Instant) -> bool {
    match tokio::time::timeout_at(deadline, changes.changed()).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => {
            tokio::time::sleep_until(deadline).await;
            false
        }
        Err(_) => false,
    }
}

/// The master secret server recorded in the SSO database must be the inventory's master (SPEC §5):
/// upgrading another server first would upgrade the wrong one first.
async fn check_master_secret_server(check: Option<&SsoCheck>) -> Result<(), String> {
    let Some(check) = check else {
        return Ok(());
    };
    let db = &check.db;
    let recorded = sql::secret_server(db)
        .await
        .map_err(|e| format!("SSO database: {e}"))?;
    if sql::same_server(&recorded, check.master.as_str()) {
        tracing::info!(env = %check.env, database = %db.database, server = %db.server, "the SSO database records {recorded} as the master secret server, as the inventory says");
        Ok(())
    } else {
        Err(format!(
            "the SSO database {} on {}:{} records {recorded} as the master secret server, but the inventory's master of {} is {}: correct the inventory, or move the master secret server first (ssomanage -updatedb, ESSO.md); nothing was changed",
            db.database, db.server, db.port, check.env, check.master
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::inventory::Inventory;
    use crate::plan::{Reported, Reports, Selection, Workflow, plan};

    /// The installers a preflight of the first environment reads: (installer, roles, nodes).
    fn groups(upgrade: &str, versions: &[(&str, &str)]) -> Vec<(String, Vec<Role>, Vec<String>)> {
        let text = format!(
            "[upgrade]\ntarget_version = \"3.0.7\"\n{upgrade}[[environment]]\nname = \"dev\"\nmaster = \"m\"\nmembers = [\"a\", \"b\"]\nbackup_dir = 'B'\n"
        );
        let inv = Inventory::parse(Path::new("fleet.toml"), &text).unwrap();
        let reports: Reports = versions
            .iter()
            .map(|(n, v)| (NodeName::new(n).unwrap(), Reported::version(v)))
            .collect();
        let selection = Selection {
            workflow: Workflow::Upgrade,
            environments: Vec::new(),
            master_only: false,
            max_parallel: None,
            max_failures: None,
        };
        let p = plan(&inv, &selection, &reports).unwrap();
        let run = Run::new(&p, 60_000, BTreeSet::new());
        PreflightJob::new("run", &run, &p, 0, 1, 1, None)
            .groups
            .into_iter()
            .map(|g| {
                let nodes = g.nodes.iter().map(ToString::to_string).collect();
                (g.installer, g.roles, nodes)
            })
            .collect()
    }

    #[test]
    fn each_role_reads_its_own_installer() {
        let both = "installer = 'setup.exe'\nmaster_installer = 'sso.exe'\n";
        let old = [("m", "3.0.6"), ("a", "3.0.6"), ("b", "3.0.6")];
        assert_eq!(
            groups(both, &old),
            [
                (
                    "sso.exe".to_string(),
                    vec![Role::Master],
                    vec!["m".to_string()]
                ),
                (
                    "setup.exe".to_string(),
                    vec![Role::Member],
                    vec!["a".to_string(), "b".to_string()]
                ),
            ]
        );
        // One installer for both roles: one group, whose hash is recorded for both.
        assert_eq!(
            groups("installer = 'setup.exe'\n", &old),
            [(
                "setup.exe".to_string(),
                vec![Role::Master, Role::Member],
                vec!["a".to_string(), "b".to_string(), "m".to_string()]
            )]
        );
        // A master already current reads nothing; nor does a newer member.
        let current = [("m", "3.0.7"), ("a", "3.0.6"), ("b", "3.0.8")];
        assert_eq!(
            groups(both, &current),
            [(
                "setup.exe".to_string(),
                vec![Role::Member],
                vec!["a".to_string()]
            )]
        );
    }

    #[test]
    fn installer_hashes_are_kept_per_role() {
        let mut hashes = InstallerHashes::default();
        hashes.set(Role::Master, "aa".into());
        assert_eq!(hashes.get(Role::Master).map(String::as_str), Some("aa"));
        assert_eq!(hashes.get(Role::Member), None);
    }
}
