//! `fleetctl nodes`: every inventory node with its attachment and facts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleet_proto::pb;
use serde_json::{Value, json};

use crate::Output;
use crate::error::{CliError, Result};
use crate::remote::Remote;

pub(crate) async fn show(remote: &mut Remote, output: Output) -> Result<()> {
    let nodes = remote
        .client
        .list_nodes(pb::ListNodesRequest {})
        .await
        .map_err(|s| CliError::from_status(&s, &remote.url))?
        .into_inner()
        .nodes;
    match output {
        Output::Json => println!("{}", Value::Array(nodes.iter().map(to_json).collect())),
        Output::Text => print!("{}", table(&nodes, SystemTime::now())),
    }
    Ok(())
}

fn role(node: &pb::NodeStatus) -> &'static str {
    match node.role() {
        pb::Role::Master => "master",
        pb::Role::Member => "member",
        pb::Role::Unspecified => "?",
    }
}

/// The node's version against the target (`None`: no version known).
fn standing(node: &pb::NodeStatus) -> Option<&'static str> {
    match node.standing() {
        pb::VersionStanding::Older => Some("older"),
        pb::VersionStanding::Current => Some("current"),
        pb::VersionStanding::Newer => Some("newer"),
        pb::VersionStanding::Unspecified => None,
    }
}

fn service(facts: Option<&pb::Facts>) -> &'static str {
    match facts.map(pb::Facts::service) {
        Some(pb::ServiceState::Running) => "running",
        Some(pb::ServiceState::Stopped) => "stopped",
        Some(pb::ServiceState::NotInstalled) => "not-installed",
        Some(pb::ServiceState::Pending) => "pending",
        Some(pb::ServiceState::Unspecified) | None => "unknown",
    }
}

fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn to_json(node: &pb::NodeStatus) -> Value {
    let facts = node.facts.as_ref();
    json!({
        "name": node.name,
        "environment": node.environment,
        "role": role(node),
        "attached": node.attached,
        "version": node.version,
        "standing": standing(node),
        "last_seen": node.last_seen_unix_ms.map(rfc3339),
        "attached_since": node.attached_since_unix_ms.map(rfc3339),
        "agent_version": (!node.agent_version.is_empty()).then_some(&node.agent_version),
        "remote_addr": (!node.remote_addr.is_empty()).then_some(&node.remote_addr),
        "refused_agent": node.refused_agent.as_ref().map(|r| json!({
            "instance_id": r.instance_id,
            "remote_addr": r.remote_addr,
            "last_refused": rfc3339(r.last_refused_unix_ms),
            "times": r.times,
            "attached_instance_id": r.attached_instance_id,
        })),
        "facts": facts.map(|f| json!({
            "service": service(Some(f)),
            "products": f.products,
            "master_secret_server": f.master_secret_server,
            "reboot_pending": f.reboot_pending,
            "hostname": f.hostname,
            "os": f.os,
            "install_path": (!f.install_path.is_empty()).then_some(&f.install_path),
            "extra": f.extra,
            "error": (!f.error.is_empty()).then_some(&f.error),
        })),
    })
}

fn ago(ms: Option<i64>, now: SystemTime) -> String {
    let Some(ms) = ms else { return "never".into() };
    let then = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    match now.duration_since(then) {
        Ok(d) if d < Duration::from_secs(1) => "just now".into(),
        Ok(d) => format!(
            "{} ago",
            humantime::format_duration(Duration::from_secs(d.as_secs()))
        ),
        Err(_) => "just now".into(),
    }
}

fn table(nodes: &[pb::NodeStatus], now: SystemTime) -> String {
    let header = [
        "NODE",
        "ENVIRONMENT",
        "ROLE",
        "ATTACHED",
        "VERSION",
        "STANDING",
        "SERVICE",
        "LAST SEEN",
        "NOTE",
    ];
    let rows: Vec<[String; 9]> = nodes
        .iter()
        .map(|n| {
            let facts = n.facts.as_ref();
            let refused = n.refused_agent.as_ref().map(|r| {
                format!(
                    "a second agent process for this node was refused {}x, last {} (instance {} from {})",
                    r.times,
                    ago(Some(r.last_refused_unix_ms), now),
                    r.instance_id,
                    r.remote_addr
                )
            });
            let note = facts
                .map(|f| f.error.clone())
                .into_iter()
                .chain(refused)
                .filter(|n| !n.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            [
                n.name.clone(),
                n.environment.clone(),
                role(n).into(),
                if n.attached { "yes" } else { "no" }.into(),
                n.version.clone().unwrap_or_else(|| "-".into()),
                standing(n).unwrap_or("-").into(),
                service(facts).into(),
                ago(n.last_seen_unix_ms, now),
                note,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_shows_detached_nodes() {
        let now = SystemTime::now();
        let now_ms = i64::try_from(now.duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap();
        let nodes = vec![
            pb::NodeStatus {
                name: "sso-dev-01".into(),
                environment: "dev".into(),
                role: pb::Role::Master as i32,
                attached: true,
                version: Some("3.0.8".into()),
                standing: pb::VersionStanding::Newer as i32,
                last_seen_unix_ms: Some(now_ms - 5_000),
                facts: Some(pb::Facts {
                    service: pb::ServiceState::Running as i32,
                    ..Default::default()
                }),
                ..Default::default()
            },
            pb::NodeStatus {
                name: "sso-dev-02".into(),
                environment: "dev".into(),
                role: pb::Role::Member as i32,
                ..Default::default()
            },
        ];
        let text = table(&nodes, now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "NODE        ENVIRONMENT  ROLE    ATTACHED  VERSION  STANDING  SERVICE  LAST SEEN  NOTE"
        );
        assert_eq!(
            lines[1],
            "sso-dev-01  dev          master  yes       3.0.8    newer     running  5s ago"
        );
        assert_eq!(
            lines[2],
            "sso-dev-02  dev          member  no        -        -         unknown  never"
        );
        let json = to_json(&nodes[1]);
        assert_eq!(json["attached"], false);
        assert_eq!(json["version"], Value::Null);
        assert_eq!(json["standing"], Value::Null);
        assert_eq!(json["role"], "member");
        assert_eq!(to_json(&nodes[0])["standing"], "newer");
    }
}
