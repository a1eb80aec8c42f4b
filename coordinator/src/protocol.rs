//! The agent protocol in the coordinator's own terms: what an agent reports about its node
//! ([`Facts`]), what it says of its attempts ([`FromAgent`]) and what the coordinator tells it
//! ([`ToAgent`]). The fleet and the run manager speak these; the gRPC layer (`grpc::convert`) is the
//! one place they meet the wire.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use crate::domain::{AttemptId, AttemptOutcome};
use crate::fitness::Check;
use crate::inventory::InstallMode;
use crate::plan::StepKind;

/// What an agent reports about its node (the facts action's result).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// `None`: ESSO is not installed (or not detectable).
    pub esso_version: Option<String>,
    pub install_path: String,
    /// The ENTSSO service.
    pub service: ServiceState,
    pub products: Vec<String>,
    pub master_secret_server: bool,
    pub reboot_pending: bool,
    pub hostname: String,
    pub os: String,
    /// The installer's SHA-256, when the coordinator asked for it.
    pub installer_sha256: Option<String>,
    pub extra: HashMap<String, String>,
    /// Non-empty: the facts action failed; the other fields are partial.
    pub error: String,
    pub collected_at_unix_ms: i64,
    /// The catalogue actions the agent runs with its own command.
    pub overridden_actions: Vec<String>,
    pub checks: Vec<Check>,
}

/// The ENTSSO service's state, as the facts report it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ServiceState {
    #[default]
    Unreported,
    Running,
    Stopped,
    NotInstalled,
    /// Start or stop pending.
    Pending,
}

/// What the coordinator tells an agent on its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToAgent {
    /// The first message after a valid hello.
    Welcome {
        epoch: u64,
        coordinator_id: String,
        heartbeat_interval: Duration,
        heartbeat_timeout: Duration,
    },
    Heartbeat {
        sent_at: SystemTime,
    },
    Assign(Assignment),
    /// Every event of the attempt with a seq up to `up_to_seq` is stored; `complete`: its result
    /// too, so the agent may forget it.
    EventAck {
        attempt_id: AttemptId,
        up_to_seq: u64,
        complete: bool,
        epoch: u64,
    },
    /// What does the agent hold of these attempts?
    AttemptQuery {
        attempt_ids: Vec<AttemptId>,
        epoch: u64,
    },
    Cancel {
        attempt_id: AttemptId,
        reason: String,
        epoch: u64,
    },
    /// The operator approved an attended install: verify and finish it.
    Continue {
        attempt_id: AttemptId,
        operator: String,
        epoch: u64,
    },
    /// Send fresh facts; with an installer, its SHA-256 among them.
    RefreshFacts {
        installer: String,
        epoch: u64,
    },
}

/// An agent step to run: the catalogue action (from the step's kind) and placeholder values, never a
/// command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub epoch: u64,
    pub attempt_id: AttemptId,
    pub run_id: String,
    pub environment: String,
    pub kind: StepKind,
    pub params: HashMap<String, String>,
    pub timeout_ms: u64,
    /// Install steps only.
    pub install_mode: Option<InstallMode>,
    /// Empty: not checked.
    pub expected_installer_sha256: String,
}

/// What an agent says of its attempts, for the run manager.
#[derive(Debug, Clone, PartialEq)]
pub enum FromAgent {
    Event(StepEvent),
    Ack(AssignmentAck),
    Report(AttemptReport),
}

/// One event of an attempt; `seq` counts 1, 2, 3, … per attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct StepEvent {
    pub attempt_id: AttemptId,
    pub seq: u64,
    pub at_unix_ms: i64,
    /// `None`: a kind this build does not know.
    pub kind: Option<StepEventKind>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StepEventKind {
    Started { command: String },
    Progress(Progress),
    Output(Output),
    Log(LogLine),
    Waiting(Waiting),
    Finished(Finished),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub percent: u32,
    pub message: String,
}

/// A `::output::` result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub stream: LogStream,
    pub line: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Unspecified,
    Stdout,
    Stderr,
    /// Written by the agent itself.
    Agent,
}

/// An attempt waits: for the operator, or for a reboot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// What to run, on which server, which options.
    pub instruction: String,
    pub reason: WaitReason,
    pub boot_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    /// The agent said no reason: stored and shown as an attended install, but not waited on.
    Unspecified,
    AttendedInstall,
    Reboot,
    RestartByHand,
}

impl WaitReason {
    /// How a wait's reason is stored with its event (and shown in `--output json`). These spellings
    /// are in existing databases: never change one.
    pub fn as_str(self) -> &'static str {
        match self {
            WaitReason::Reboot => "reboot",
            WaitReason::RestartByHand => "restart-by-hand",
            WaitReason::AttendedInstall | WaitReason::Unspecified => "attended",
        }
    }

    /// A stored name back; anything else is an attended install.
    pub fn parse(stored: &str) -> Self {
        match stored {
            "reboot" => WaitReason::Reboot,
            "restart-by-hand" => WaitReason::RestartByHand,
            _ => WaitReason::AttendedInstall,
        }
    }
}

/// An attempt's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub outcome: AttemptOutcome,
    pub exit_code: Option<i32>,
    /// A clear message for failures.
    pub error: String,
    /// `::output::` results.
    pub outputs: HashMap<String, String>,
    pub artifacts: Vec<Artifact>,
}

/// A file an attempt produced (e.g. the secret backup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub kind: String,
    pub path: String,
    pub size_bytes: u64,
    pub sha256: String,
    /// E.g. the secret backup's password reminder (never the password).
    pub note: String,
}

/// An agent's answer to an assignment.
#[derive(Debug, Clone, PartialEq)]
pub struct AssignmentAck {
    pub attempt_id: AttemptId,
    pub decision: Decision,
    pub reason: String,
    /// With [`Decision::Duplicate`]: what the journal holds of the attempt.
    pub report: Option<AttemptReport>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Journaled, will run once.
    Accepted,
    /// In the journal already: not run again.
    Duplicate,
    /// Refused (stale epoch, unknown action, busy, invalid, unspecified).
    Refused(Refusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Unspecified,
    StaleEpoch,
    UnknownAction,
    Busy,
    Invalid,
}

/// What an agent's journal holds of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptReport {
    pub attempt_id: AttemptId,
    pub state: AttemptState,
    /// The highest event seq emitted.
    pub last_seq: u64,
    /// Set when finished.
    pub result: Option<Finished>,
    /// Set when waiting.
    pub waiting: Option<Waiting>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptState {
    Unspecified,
    /// Not in the journal: never received.
    Unknown,
    Accepted,
    Running,
    Waiting,
    Finished,
    /// The agent stopped while it ran; outcome unknown, not run again.
    Interrupted,
}
