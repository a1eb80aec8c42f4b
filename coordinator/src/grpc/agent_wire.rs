//! The agent protocol on the wire: proto messages ↔ [`crate::protocol`], and the fleet's view of a
//! node as the operator's `NodeStatus`.

use fleet_proto::pb;
use fleet_proto::pb::agent_message::Body as AgentBody;
use fleet_proto::pb::coordinator_message::Body as CoordinatorBody;
use fleet_proto::unix_ms;
use tonic::Status;

use super::convert;
use crate::fitness::Check;
use crate::fleet::{NodeView, SessionEnd};
use crate::protocol::{
    Artifact, AssignmentAck, AttemptReport, AttemptState, Decision, Facts, Finished, FromAgent,
    LogLine, LogStream, Output, Progress, Refusal, ServiceState, StepEvent, StepEventKind, ToAgent,
    WaitReason, Waiting,
};

fn millis_u32(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// What the coordinator tells an agent, on the wire; the end of a stream as its status.
pub fn to_agent(message: Result<ToAgent, SessionEnd>) -> Result<pb::CoordinatorMessage, Status> {
    let body = match message.map_err(session_end)? {
        ToAgent::Welcome {
            epoch,
            coordinator_id,
            heartbeat_interval,
            heartbeat_timeout,
        } => CoordinatorBody::Welcome(pb::Welcome {
            epoch,
            coordinator_id,
            heartbeat_interval_ms: millis_u32(heartbeat_interval),
            heartbeat_timeout_ms: millis_u32(heartbeat_timeout),
            acks: Vec::new(),
            protocol_version: fleet_proto::PROTOCOL_VERSION,
        }),
        ToAgent::Heartbeat { sent_at } => CoordinatorBody::Heartbeat(pb::Heartbeat {
            sent_at_unix_ms: unix_ms(sent_at),
            attempts_in_flight: 0,
        }),
        ToAgent::Assign(a) => CoordinatorBody::Assign(pb::StepAssignment {
            epoch: a.epoch,
            attempt_id: a.attempt_id.into(),
            run_id: a.run_id,
            environment: a.environment,
            step: a.kind.name().to_string(),
            action: convert::action(a.kind) as i32,
            params: a.params,
            timeout_ms: a.timeout_ms,
            install_mode: a
                .install_mode
                .map_or(pb::InstallMode::Unspecified, convert::install_mode)
                as i32,
            expected_installer_sha256: a.expected_installer_sha256,
        }),
        ToAgent::EventAck {
            attempt_id,
            up_to_seq,
            complete,
            epoch,
        } => CoordinatorBody::EventAck(pb::EventAck {
            attempt_id: attempt_id.into(),
            up_to_seq,
            complete,
            epoch,
        }),
        ToAgent::AttemptQuery { attempt_ids, epoch } => {
            CoordinatorBody::AttemptQuery(pb::AttemptQuery {
                attempt_ids: attempt_ids.into_iter().map(String::from).collect(),
                epoch,
            })
        }
        ToAgent::Cancel {
            attempt_id,
            reason,
            epoch,
        } => CoordinatorBody::Cancel(pb::CancelAttempt {
            attempt_id: attempt_id.into(),
            reason,
            epoch,
        }),
        ToAgent::Continue {
            attempt_id,
            operator,
            epoch,
        } => CoordinatorBody::ContinueAttempt(pb::ContinueAttempt {
            attempt_id: attempt_id.into(),
            operator,
            epoch,
        }),
        ToAgent::RefreshFacts { installer, epoch } => {
            CoordinatorBody::RefreshFacts(pb::RefreshFacts { installer, epoch })
        }
    };
    Ok(pb::CoordinatorMessage { body: Some(body) })
}

fn session_end(end: SessionEnd) -> Status {
    match end {
        SessionEnd::Replaced => Status::aborted(end.to_string()),
        SessionEnd::HeartbeatTimeout => Status::unavailable(end.to_string()),
    }
}

/// What an agent says of its attempts, for the run manager; `None` for the fleet's messages (hello,
/// heartbeat, facts).
pub fn from_agent(body: AgentBody) -> Option<FromAgent> {
    match body {
        AgentBody::Event(e) => Some(FromAgent::Event(step_event(e))),
        AgentBody::AssignmentAck(a) => Some(FromAgent::Ack(assignment_ack(a))),
        AgentBody::AttemptReport(r) => Some(FromAgent::Report(attempt_report(r))),
        AgentBody::Hello(_) | AgentBody::Heartbeat(_) | AgentBody::Facts(_) => None,
    }
}

fn step_event(e: pb::StepEvent) -> StepEvent {
    use pb::step_event::Kind;
    let kind = e.kind.map(|kind| match kind {
        Kind::Started(s) => StepEventKind::Started { command: s.command },
        Kind::Progress(p) => StepEventKind::Progress(Progress {
            percent: p.percent,
            message: p.message,
        }),
        Kind::Output(o) => StepEventKind::Output(Output {
            key: o.key,
            value: o.value,
        }),
        Kind::Log(l) => StepEventKind::Log(log_line(l)),
        Kind::Waiting(w) => StepEventKind::Waiting(waiting(w)),
        Kind::Finished(f) => StepEventKind::Finished(finished(f)),
    });
    StepEvent {
        attempt_id: e.attempt_id.into(),
        seq: e.seq,
        at_unix_ms: e.at_unix_ms,
        kind,
    }
}

pub fn log_line(l: pb::StepLog) -> LogLine {
    let stream = match l.stream() {
        pb::LogStream::Unspecified => LogStream::Unspecified,
        pb::LogStream::Stdout => LogStream::Stdout,
        pb::LogStream::Stderr => LogStream::Stderr,
        pb::LogStream::Agent => LogStream::Agent,
    };
    LogLine {
        stream,
        line: l.line,
    }
}

pub fn log_line_to_wire(l: LogLine) -> pb::StepLog {
    let stream = match l.stream {
        LogStream::Unspecified => pb::LogStream::Unspecified,
        LogStream::Stdout => pb::LogStream::Stdout,
        LogStream::Stderr => pb::LogStream::Stderr,
        LogStream::Agent => pb::LogStream::Agent,
    };
    pb::StepLog {
        stream: stream as i32,
        line: l.line,
    }
}

fn waiting(w: pb::StepWaiting) -> Waiting {
    let reason = match w.reason() {
        pb::WaitReason::Unspecified => WaitReason::Unspecified,
        pb::WaitReason::AttendedInstall => WaitReason::AttendedInstall,
        pb::WaitReason::Reboot => WaitReason::Reboot,
        pb::WaitReason::RestartByHand => WaitReason::RestartByHand,
    };
    Waiting {
        instruction: w.instruction,
        reason,
        boot_id: w.boot_id,
    }
}

pub fn waiting_to_wire(w: Waiting) -> pb::StepWaiting {
    let reason = match w.reason {
        WaitReason::Unspecified => pb::WaitReason::Unspecified,
        WaitReason::AttendedInstall => pb::WaitReason::AttendedInstall,
        WaitReason::Reboot => pb::WaitReason::Reboot,
        WaitReason::RestartByHand => pb::WaitReason::RestartByHand,
    };
    pb::StepWaiting {
        instruction: w.instruction,
        reason: reason as i32,
        boot_id: w.boot_id,
    }
}

fn finished(f: pb::StepFinished) -> Finished {
    Finished {
        outcome: convert::outcome(f.outcome()),
        exit_code: f.exit_code,
        error: f.error,
        outputs: f.outputs,
        artifacts: f
            .artifacts
            .into_iter()
            .map(|a| Artifact {
                kind: a.kind,
                path: a.path,
                size_bytes: a.size_bytes,
                sha256: a.sha256,
                note: a.note,
            })
            .collect(),
    }
}

fn assignment_ack(a: pb::AssignmentAck) -> AssignmentAck {
    let decision = match a.decision() {
        pb::AssignmentDecision::Accepted => Decision::Accepted,
        pb::AssignmentDecision::Duplicate => Decision::Duplicate,
        pb::AssignmentDecision::Unspecified => Decision::Refused(Refusal::Unspecified),
        pb::AssignmentDecision::StaleEpoch => Decision::Refused(Refusal::StaleEpoch),
        pb::AssignmentDecision::UnknownAction => Decision::Refused(Refusal::UnknownAction),
        pb::AssignmentDecision::Busy => Decision::Refused(Refusal::Busy),
        pb::AssignmentDecision::Invalid => Decision::Refused(Refusal::Invalid),
    };
    AssignmentAck {
        attempt_id: a.attempt_id.into(),
        decision,
        reason: a.reason,
        report: a.report.map(attempt_report),
    }
}

/// What an agent's journal holds of one attempt (in its hello, an answer, a duplicate's ack).
pub fn attempt_report(r: pb::AttemptReport) -> AttemptReport {
    let state = match r.state() {
        pb::AttemptState::Unspecified => AttemptState::Unspecified,
        pb::AttemptState::Unknown => AttemptState::Unknown,
        pb::AttemptState::Accepted => AttemptState::Accepted,
        pb::AttemptState::Running => AttemptState::Running,
        pb::AttemptState::Waiting => AttemptState::Waiting,
        pb::AttemptState::Finished => AttemptState::Finished,
        pb::AttemptState::Interrupted => AttemptState::Interrupted,
    };
    AttemptReport {
        attempt_id: r.attempt_id.into(),
        state,
        last_seq: r.last_seq,
        result: r.result.map(finished),
        waiting: r.waiting.map(waiting),
    }
}

/// An agent's facts, as the fleet keeps them.
pub fn facts(f: pb::Facts) -> Facts {
    let service = match f.service() {
        pb::ServiceState::Unspecified => ServiceState::Unreported,
        pb::ServiceState::Running => ServiceState::Running,
        pb::ServiceState::Stopped => ServiceState::Stopped,
        pb::ServiceState::NotInstalled => ServiceState::NotInstalled,
        pb::ServiceState::Pending => ServiceState::Pending,
    };
    Facts {
        esso_version: f.esso_version,
        install_path: f.install_path,
        service,
        products: f.products,
        master_secret_server: f.master_secret_server,
        reboot_pending: f.reboot_pending,
        hostname: f.hostname,
        os: f.os,
        installer_sha256: f.installer_sha256,
        extra: f.extra,
        error: f.error,
        collected_at_unix_ms: f.collected_at_unix_ms,
        overridden_actions: f.overridden_actions,
        checks: f
            .checks
            .into_iter()
            .map(|c| Check {
                name: c.name,
                passed: c.passed,
                detail: c.detail,
            })
            .collect(),
    }
}

fn facts_to_wire(f: Facts) -> pb::Facts {
    let service = match f.service {
        ServiceState::Unreported => pb::ServiceState::Unspecified,
        ServiceState::Running => pb::ServiceState::Running,
        ServiceState::Stopped => pb::ServiceState::Stopped,
        ServiceState::NotInstalled => pb::ServiceState::NotInstalled,
        ServiceState::Pending => pb::ServiceState::Pending,
    };
    pb::Facts {
        esso_version: f.esso_version,
        install_path: f.install_path,
        service: service as i32,
        products: f.products,
        master_secret_server: f.master_secret_server,
        reboot_pending: f.reboot_pending,
        hostname: f.hostname,
        os: f.os,
        installer_sha256: f.installer_sha256,
        extra: f.extra,
        error: f.error,
        collected_at_unix_ms: f.collected_at_unix_ms,
        overridden_actions: f.overridden_actions,
        checks: f
            .checks
            .into_iter()
            .map(|c| pb::FitnessCheck {
                name: c.name,
                passed: c.passed,
                detail: c.detail,
            })
            .collect(),
    }
}

/// One node of `ListNodes`.
pub fn node_status(n: NodeView) -> pb::NodeStatus {
    let role = match n.role {
        crate::domain::Role::Master => pb::Role::Master,
        crate::domain::Role::Member => pb::Role::Member,
    };
    let addr = |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
    pb::NodeStatus {
        name: n.name.to_string(),
        environment: n.environment.to_string(),
        role: role as i32,
        attached: n.attached,
        version: n.version().map(str::to_string),
        last_seen_unix_ms: n.last_seen.map(unix_ms),
        attached_since_unix_ms: n.attached_since.map(unix_ms),
        agent_version: n.agent_version,
        remote_addr: addr(n.remote_addr),
        facts: n.facts.map(facts_to_wire),
        standing: convert::standing(n.standing) as i32,
        refused_agent: n.refused_agent.map(|r| pb::RefusedAgent {
            instance_id: r.instance_id,
            remote_addr: addr(r.remote_addr),
            last_refused_unix_ms: unix_ms(r.last_refused),
            times: r.times,
            attached_instance_id: r.attached_instance_id,
        }),
    }
}

#[cfg(test)]
mod tests;
