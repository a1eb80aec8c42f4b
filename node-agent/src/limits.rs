//! How big anything the agent sends may be (issue 18), in one place: a line of a program's output,
//! a step's log, a result's error, standard error tail and outputs, and any one message. The
//! coordinator refuses a message over 4 MiB (tonic's default) and drops the stream with it, so one
//! over-long line, re-sent after every re-attach, would wedge the agent for good. The caps:
//! - [`LINE_MAX`], 16 KiB a line: Windows tools print lines well under 1 KiB; 16 KiB keeps a long
//!   PowerShell error or a line of JSON whole. The rest of the line is in the program's output file,
//!   which the marker names (`runner`).
//! - [`STEP_LOG_MAX`], 2 MiB of a step's programs' output (log lines, progress, outputs: what a
//!   program prints, as events): an installer's own log goes to its log file, not to standard output;
//!   what a step prints beyond this is in its files ([`LogBudget`], for the executor and for an
//!   orphan alike).
//! - [`ERROR_MAX`], 4 KiB a result's error; [`TAIL_LINE_MAX`], 1 KiB a line of its standard error
//!   tail (20 lines); [`OUTPUTS_MAX`], 64 KiB of `::output::` results: a whole result stays under
//!   100 KiB, so that a hello carrying several is far from the limit.
//! - [`MESSAGE_MAX`], 1 MiB, a quarter of the coordinator's limit: what is still over it after the
//!   caps (a row an older agent journaled) is replaced by a small marker, never sent.

use fleet_proto::pb;
use prost::Message;

pub const LINE_MAX: usize = 16 * 1024;
pub const STEP_LOG_MAX: usize = 2 * 1024 * 1024;
pub const ERROR_MAX: usize = 4 * 1024;
pub const TAIL_LINE_MAX: usize = 1024;
pub const OUTPUTS_MAX: usize = 64 * 1024;
pub const MESSAGE_MAX: usize = 1024 * 1024;
/// A journaled row bigger than this was not written by this agent's caps: it is fitted when the
/// journal opens.
pub const RESULT_MAX: usize = 128 * 1024;
/// Room for the marker (and the file it names) after a text cut to its cap: a text within its cap
/// and this room is not cut again, so fitting twice changes nothing.
const MARKER_ROOM: usize = 1024;

/// `text` cut to `max` bytes (at a character boundary) with the marker `… truncated, N bytes`
/// (`N`: its whole length) and `note` after it, when it is longer; unchanged otherwise.
pub fn truncated(text: &str, max: usize, note: &str) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    marked(&text[..end], text.len(), note)
}

/// The first bytes of a longer line, with the marker.
pub fn marked(head: &str, total: usize, note: &str) -> String {
    if note.is_empty() {
        format!("{head}… truncated, {total} bytes")
    } else {
        format!("{head}… truncated, {total} bytes ({note})")
    }
}

/// Caps `text` in place (one cut already, with its marker, is left alone); true when it was cut.
fn cap(text: &mut String, max: usize, note: &str) -> bool {
    if text.len() <= max + MARKER_ROOM {
        return false;
    }
    *text = truncated(text, max, note);
    true
}

/// Fits a result into the caps; true when something was cut.
pub fn fit_result(result: &mut pb::StepFinished) -> bool {
    let mut cut = cap(&mut result.error, ERROR_MAX, "");
    for line in &mut result.stderr_tail {
        cut |= cap(line, TAIL_LINE_MAX, "");
    }
    let mut total = 0;
    let mut dropped = 0;
    result.outputs.retain(|key, value| {
        cut |= cap(value, LINE_MAX, "");
        total += key.len() + value.len();
        let keep = total <= OUTPUTS_MAX && key.len() <= LINE_MAX;
        dropped += usize::from(!keep);
        keep
    });
    if dropped > 0 {
        let (key, value) = outputs_truncated(dropped);
        result.outputs.insert(key, value);
        cut = true;
    }
    for artifact in &mut result.artifacts {
        cut |= cap(&mut artifact.path, LINE_MAX, "");
        cut |= cap(&mut artifact.note, ERROR_MAX, "");
    }
    cut
}

/// The output that says `dropped` outputs did not fit in [`OUTPUTS_MAX`].
pub fn outputs_truncated(dropped: usize) -> (String, String) {
    (
        "outputs_truncated".into(),
        format!("{dropped} outputs over {OUTPUTS_MAX} bytes were dropped"),
    )
}

/// Fits an event into the caps. `Some(problem)` when it was over them: what was cut or replaced, to
/// be recorded (a row an older agent journaled, or a bug); the event is then within them.
pub fn fit_event(event: &mut pb::StepEvent) -> Option<String> {
    use pb::step_event::Kind;
    let before = event.encoded_len();
    let note = "over the limit of what the agent sends";
    let cut = match &mut event.kind {
        Some(Kind::Log(log)) => cap(&mut log.line, LINE_MAX, note),
        Some(Kind::Progress(progress)) => cap(&mut progress.message, LINE_MAX, note),
        Some(Kind::Output(output)) => {
            cap(&mut output.key, LINE_MAX, note) | cap(&mut output.value, LINE_MAX, note)
        }
        Some(Kind::Started(started)) => cap(&mut started.command, LINE_MAX, note),
        Some(Kind::Waiting(waiting)) => cap(&mut waiting.instruction, ERROR_MAX, note),
        Some(Kind::Finished(result)) => fit_result(result),
        None => false,
    };
    if event.encoded_len() > MESSAGE_MAX {
        // Nothing the caps know of is that big any more; whatever it is, it is not sent.
        event.kind = Some(match event.kind.take() {
            Some(Kind::Finished(result)) => Kind::Finished(pb::StepFinished {
                outcome: pb::StepOutcome::Failed as i32,
                exit_code: result.exit_code,
                error: format!(
                    "the agent's result ({:?}) was {before} bytes, over the limit of {MESSAGE_MAX} it sends; it was dropped (see the agent's log)",
                    result.outcome()
                ),
                ..Default::default()
            }),
            _ => Kind::Log(pb::StepLog {
                stream: pb::LogStream::Agent as i32,
                line: format!(
                    "an event of {before} bytes, over the limit of {MESSAGE_MAX} the agent sends, was dropped"
                ),
            }),
        });
    } else if !cut {
        return None;
    }
    Some(format!(
        "event {} of attempt {} was {before} bytes with parts over the limit of what the agent sends; they were cut ({} bytes now)",
        event.seq,
        event.attempt_id,
        event.encoded_len()
    ))
}

/// Fits the facts (their strings come from a tool's output); true when something was cut.
pub fn fit_facts(facts: &mut pb::Facts) -> bool {
    let mut cut = false;
    for text in [&mut facts.install_path, &mut facts.hostname, &mut facts.os] {
        cut |= cap(text, LINE_MAX, "");
    }
    cut |= cap(&mut facts.error, ERROR_MAX, "");
    if let Some(version) = facts.esso_version.as_mut() {
        cut |= cap(version, LINE_MAX, "");
    }
    for product in &mut facts.products {
        cut |= cap(product, LINE_MAX, "");
    }
    let mut total = 0;
    let before = facts.extra.len();
    facts.extra.retain(|key, value| {
        cut |= cap(value, LINE_MAX, "");
        total += key.len() + value.len();
        total <= OUTPUTS_MAX
    });
    cut |= facts.extra.len() != before;
    for check in &mut facts.checks {
        cut |= cap(&mut check.detail, ERROR_MAX, "");
    }
    cut
}

/// Fits a hello: its facts and each attempt's result; when it is still over the limit (a great many
/// unsettled attempts), the results keep their outcome, exit code and error only.
pub fn fit_hello(hello: &mut pb::Hello) -> bool {
    let mut cut = hello.facts.as_mut().is_some_and(fit_facts);
    for report in &mut hello.attempts {
        if let Some(result) = report.result.as_mut() {
            cut |= fit_result(result);
        }
    }
    if hello.encoded_len() > MESSAGE_MAX {
        for result in hello.attempts.iter_mut().filter_map(|r| r.result.as_mut()) {
            result.stderr_tail.clear();
            result.outputs.clear();
            result.artifacts.clear();
        }
        cut = true;
    }
    cut
}

/// Fits a hello ([`fit_hello`]) and takes out of it the attempts it cannot carry within
/// [`MESSAGE_MAX`] (hundreds of unsettled attempts with long errors): returned in order, to be sent
/// after the hello, each in its own `AttemptReport` message (the coordinator takes one at any time).
/// The hello keeps as many as fit, so that a coordinator hears of the node before its reports.
pub fn split_hello(hello: &mut pb::Hello) -> Vec<pb::AttemptReport> {
    fit_hello(hello);
    // Room for the message around the hello.
    let limit = MESSAGE_MAX - 64;
    let mut len = hello.encoded_len();
    let mut overflow = Vec::new();
    while len > limit {
        let Some(report) = hello.attempts.pop() else {
            break;
        };
        len = hello.encoded_len();
        overflow.push(report);
    }
    overflow.reverse();
    overflow
}

/// A message as it may leave: fitted into the caps, `None` (the error logged) when it is still over
/// [`MESSAGE_MAX`]. Events and results come fitted from the journal; this is the last check.
pub fn sendable(mut message: pb::AgentMessage) -> Option<pb::AgentMessage> {
    use pb::agent_message::Body;
    let cut = match &mut message.body {
        Some(Body::Hello(hello)) => fit_hello(hello),
        Some(Body::Facts(facts)) => fit_facts(facts),
        Some(Body::Event(event)) => fit_event(event).is_some(),
        Some(Body::AttemptReport(report)) => report.result.as_mut().is_some_and(fit_result),
        Some(Body::AssignmentAck(ack)) => {
            cap(&mut ack.reason, ERROR_MAX, "")
                | ack
                    .report
                    .as_mut()
                    .and_then(|r| r.result.as_mut())
                    .is_some_and(fit_result)
        }
        Some(Body::Heartbeat(_)) | None => false,
    };
    if cut {
        tracing::warn!(
            "a message to the coordinator had parts over the limits of what the agent sends; they were cut"
        );
    }
    let len = message.encoded_len();
    if len > MESSAGE_MAX {
        tracing::error!(
            "a message of {len} bytes, over the limit of {MESSAGE_MAX} the agent sends, was not sent"
        );
        return None;
    }
    Some(message)
}

/// What a step's programs may still send as events: [`STEP_LOG_MAX`] bytes of their output (log
/// lines, progress, outputs), then one marker. The agent's own lines and the step's milestones
/// (started, waiting, finished) are always sent.
#[derive(Debug, Default)]
pub struct LogBudget {
    used: usize,
    dropped: usize,
}

impl LogBudget {
    /// A budget of which `used` bytes are spent already (an orphan's output a previous agent read).
    pub fn spent(used: u64) -> Self {
        Self {
            used: usize::try_from(used)
                .unwrap_or(usize::MAX)
                .min(STEP_LOG_MAX),
            dropped: 0,
        }
    }

    /// `kind` when it may be sent; the marker instead the first time one may not (`full`: where the
    /// whole output is), then nothing.
    pub fn admit(
        &mut self,
        kind: pb::step_event::Kind,
        full: &str,
    ) -> Option<pb::step_event::Kind> {
        use pb::step_event::Kind;
        let len = match &kind {
            Kind::Log(log) if log.stream() != pb::LogStream::Agent => log.line.len(),
            Kind::Progress(progress) => progress.message.len() + 4,
            Kind::Output(output) => output.key.len() + output.value.len(),
            _ => return Some(kind),
        };
        if self.used + len <= STEP_LOG_MAX {
            self.used += len;
            return Some(kind);
        }
        self.dropped += 1;
        (self.dropped == 1).then(|| {
            Kind::Log(pb::StepLog {
                stream: pb::LogStream::Agent as i32,
                line: format!(
                    "… the step's output is over {STEP_LOG_MAX} bytes: further lines, progress and outputs are not sent (full output: {full})"
                ),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_text_is_cut_at_a_character_boundary_with_the_marker() {
        assert_eq!(truncated("short", 10, ""), "short");
        let long = "é".repeat(10); // 20 bytes
        assert_eq!(truncated(&long, 5, "x"), "éé… truncated, 20 bytes (x)");
    }

    #[test]
    fn an_older_agents_event_is_cut_or_replaced_to_fit() {
        let big = "e".repeat(5 << 20);
        let mut log = pb::StepEvent {
            attempt_id: "a".into(),
            seq: 3,
            at_unix_ms: 1,
            kind: Some(pb::step_event::Kind::Log(pb::StepLog {
                stream: 1,
                line: big.clone(),
            })),
        };
        assert!(fit_event(&mut log).is_some());
        assert!(log.encoded_len() < LINE_MAX + 200);
        let mut finished = pb::StepEvent {
            kind: Some(pb::step_event::Kind::Finished(pb::StepFinished {
                outcome: pb::StepOutcome::Failed as i32,
                error: big.clone(),
                stderr_tail: vec![big.clone(); 20],
                outputs: (0..100).map(|i| (format!("k{i}"), big.clone())).collect(),
                ..Default::default()
            })),
            ..log.clone()
        };
        assert!(fit_event(&mut finished).is_some());
        assert!(
            finished.encoded_len() < 128 * 1024,
            "{}",
            finished.encoded_len()
        );
        let Some(pb::step_event::Kind::Finished(result)) = &finished.kind else {
            panic!()
        };
        assert_eq!(result.outcome(), pb::StepOutcome::Failed);
        assert!(result.outputs.contains_key("outputs_truncated"));
        let mut small = log.clone();
        assert_eq!(fit_event(&mut small), None, "a fitted event stays as it is");
    }

    /// However many unsettled attempts there are, the hello fits, and the rest follow it.
    #[test]
    fn a_hello_with_too_many_attempts_sends_the_rest_after_it() {
        let attempts: Vec<pb::AttemptReport> = (0..600)
            .map(|i| pb::AttemptReport {
                attempt_id: format!("a-{i}"),
                state: pb::AttemptState::Finished as i32,
                result: Some(pb::StepFinished {
                    error: "e".repeat(ERROR_MAX),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        let mut hello = pb::Hello {
            attempts: attempts.clone(),
            ..Default::default()
        };
        let overflow = split_hello(&mut hello);
        assert!(!overflow.is_empty());
        let all: Vec<_> = hello.attempts.iter().chain(&overflow).cloned().collect();
        assert_eq!(all, attempts, "each attempt once, in order");
        let body = pb::agent_message::Body::Hello(hello);
        assert!(
            sendable(pb::AgentMessage { body: Some(body) }).is_some(),
            "the hello fits"
        );
        for report in overflow {
            let body = pb::agent_message::Body::AttemptReport(report);
            assert!(sendable(pb::AgentMessage { body: Some(body) }).is_some());
        }
    }

    #[test]
    fn a_steps_output_stops_at_its_budget_with_one_marker() {
        use pb::step_event::Kind;
        let log = |stream: pb::LogStream, n: usize| {
            Kind::Log(pb::StepLog {
                stream: stream as i32,
                line: "l".repeat(n),
            })
        };
        let progress = |n: usize| {
            Kind::Progress(pb::StepProgress {
                percent: 1,
                message: "p".repeat(n),
            })
        };
        let mut budget = LogBudget::default();
        assert!(
            budget
                .admit(log(pb::LogStream::Stdout, STEP_LOG_MAX - 20), "d")
                .is_some()
        );
        assert!(
            budget.admit(progress(10), "d").is_some(),
            "progress counts too"
        );
        let marker = budget.admit(progress(10), "d");
        assert!(
            matches!(&marker, Some(Kind::Log(l)) if l.stream() == pb::LogStream::Agent && l.line.contains("full output: d")),
            "{marker:?}"
        );
        let output = Kind::Output(pb::StepOutput {
            key: "k".into(),
            value: "v".repeat(10),
        });
        assert_eq!(budget.admit(output, "d"), None, "outputs count too");
        assert_eq!(budget.admit(log(pb::LogStream::Stderr, 11), "d"), None);
        assert!(budget.admit(log(pb::LogStream::Agent, 100), "d").is_some());
        assert!(
            budget.admit(log(pb::LogStream::Stdout, 1), "d").is_some(),
            "a shorter line still fits"
        );
        let mut resumed = LogBudget::spent(STEP_LOG_MAX as u64);
        assert!(
            resumed.admit(log(pb::LogStream::Stdout, 1), "d").is_some(),
            "the marker"
        );
        assert_eq!(resumed.admit(log(pb::LogStream::Stdout, 1), "d"), None);
    }
}
