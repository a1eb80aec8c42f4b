//! Starting, following and inspecting runs: `upgrade`, `watch`, `run show`, `runs`, `logs`, the
//! control commands and `audit`. On a terminal, following shows one live line per node and an overall
//! bar (indicatif); otherwise one plain line per event.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, UNIX_EPOCH};

use fleet_proto::pb;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::Output;
use crate::error::{CliError, Result};
use crate::remote::Remote;

fn rpc(remote: &Remote) -> impl Fn(tonic::Status) -> CliError + '_ {
    |s| CliError::from_status(&s, &remote.url)
}

fn run_state(state: pb::RunState) -> &'static str {
    match state {
        pb::RunState::Running => "running",
        pb::RunState::Paused => "paused",
        pb::RunState::WaitingApproval => "waiting-approval",
        pb::RunState::Halted => "halted",
        pb::RunState::Succeeded => "succeeded",
        pb::RunState::Failed => "failed",
        pb::RunState::Aborted => "aborted",
        pb::RunState::Unspecified => "unknown",
    }
}

fn step_state(state: pb::StepState) -> &'static str {
    match state {
        pb::StepState::Pending => "pending",
        pb::StepState::Running => "running",
        pb::StepState::Waiting => "waiting",
        pb::StepState::Succeeded => "succeeded",
        pb::StepState::Failed => "failed",
        pb::StepState::Skipped => "skipped",
        pb::StepState::AlreadyCurrent => "already-current",
        pb::StepState::Newer => "newer",
        pb::StepState::Unspecified => "unknown",
    }
}

pub(crate) fn time(ms: i64) -> String {
    humantime::format_rfc3339_seconds(
        UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
    )
    .to_string()
}

/// `run show` as JSON (SPEC §8).
pub(crate) fn run_json(run: &pb::Run) -> Value {
    json!({
        "id": run.id,
        "workflow": workflow(run.workflow()),
        "state": run_state(run.state()),
        "reason": run.reason,
        "started_at": time(run.started_at_unix_ms),
        "finished_at": run.finished_at_unix_ms.map(time),
        "started_by": run.started_by,
        "target_version": run.target_version,
        "installer": run.installer,
        "installer_sha256": run.installer_sha256,
        "master_installer": (!run.master_installer.is_empty()).then_some(&run.master_installer),
        "master_installer_sha256": (!run.master_installer_sha256.is_empty()).then_some(&run.master_installer_sha256),
        "steps": run.steps.iter().map(|s| json!({
            "environment": s.environment,
            "node": s.node,
            "step": s.step,
            "state": step_state(s.state()),
            "attempts": s.attempts,
            "message": s.message,
            "started_at_ms": s.started_at_unix_ms,
            "finished_at_ms": s.finished_at_unix_ms,
            "artifacts": s.artifacts.iter().map(|a| json!({
                "kind": a.kind, "path": a.path, "size": a.size_bytes, "sha256": a.sha256,
                "note": (!a.note.is_empty()).then_some(&a.note),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn run_text(run: &pb::Run) -> String {
    let mut out = format!("run {}: {}", run.id, run_state(run.state()));
    if !run.reason.is_empty() {
        out.push_str(&format!(" ({})", run.reason));
    }
    out.push_str(&format!(
        "\nstarted {} by {}\n",
        time(run.started_at_unix_ms),
        run.started_by
    ));
    let width = run
        .steps
        .iter()
        .filter_map(|s| s.node.as_ref())
        .map(String::len)
        .max()
        .unwrap_or(1)
        .max(4);
    for s in &run.steps {
        let node = s.node.as_deref().unwrap_or("-");
        let attempts = if s.attempts > 1 {
            format!(" (attempt {})", s.attempts)
        } else {
            String::new()
        };
        let line = format!(
            "  {:<10} {node:<width$}  {:<15} {:<15} {}{attempts}",
            s.environment,
            s.step,
            step_state(s.state()),
            s.message
        );
        out.push_str(line.trim_end());
        out.push('\n');
        for a in &s.artifacts {
            let note = if a.note.is_empty() {
                String::new()
            } else {
                format!("; {}", a.note)
            };
            out.push_str(&format!(
                "      {}: {} ({} bytes, sha256 {}{note})\n",
                a.kind, a.path, a.size_bytes, a.sha256
            ));
        }
    }
    out
}

fn final_result(run: &pb::Run) -> Result<()> {
    match run.state() {
        pb::RunState::Succeeded => Ok(()),
        pb::RunState::Failed | pb::RunState::Halted | pb::RunState::Aborted => {
            Err(CliError::Failed(format!(
                "run {} {}: {}",
                run.id,
                run_state(run.state()),
                run.reason
            )))
        }
        other => Err(CliError::Failed(format!(
            "run {} is {}",
            run.id,
            run_state(other)
        ))),
    }
}

pub(crate) async fn upgrade(
    remote: &mut Remote,
    selection: pb::RunSelection,
    plan_hash: Option<String>,
    detach: bool,
    output: Output,
) -> Result<()> {
    let run_id = remote
        .client
        .start_run(pb::StartRunRequest {
            selection: Some(selection),
            plan_hash,
        })
        .await
        .map_err(rpc(remote))?
        .into_inner()
        .run_id;
    if detach {
        match output {
            Output::Json => println!("{}", json!({ "run_id": run_id })),
            Output::Text => {
                println!("started run {run_id}\nfollow it with: fleetctl watch {run_id}")
            }
        }
        return Ok(());
    }
    if output == Output::Text {
        println!("run {run_id} started");
    }
    follow_from(remote, &run_id, output, true).await
}

/// Follows a run until it succeeds, fails, halts or is aborted; then shows it (exit 1 unless it succeeded).
pub(crate) async fn follow(remote: &mut Remote, run_id: &str, output: Output) -> Result<()> {
    follow_from(remote, run_id, output, false).await
}

/// `from_start`: replay the run's events from the beginning (a run just started); otherwise follow from
/// where the run is now, so that an old `halted` that was since resumed does not end the watch.
async fn follow_from(
    remote: &mut Remote,
    run_id: &str,
    output: Output,
    from_start: bool,
) -> Result<()> {
    let run = get(remote, run_id).await?;
    let stopped = matches!(
        run.state(),
        pb::RunState::Succeeded
            | pb::RunState::Failed
            | pb::RunState::Aborted
            | pb::RunState::Halted
    );
    if stopped && !from_start {
        match output {
            Output::Json => println!("{}", run_json(&run)),
            Output::Text => print!("{}", run_text(&run)),
        }
        return final_result(&run);
    }
    let mut after_seq = if from_start { 0 } else { run.last_event_seq };
    let live = output == Output::Text && std::io::stdout().is_terminal();
    let mut view = if live { View::live(&run) } else { View::Plain };
    // A coordinator that restarts (or a link that drops) does not end the watch: it reconnects and
    // goes on from the last event it showed, for as long as RECONNECT_FOR allows.
    let mut lost_since: Option<std::time::Instant> = None;
    'watch: loop {
        let lost = match watch_once(
            remote,
            run_id,
            after_seq,
            output,
            &mut view,
            &mut lost_since,
        )
        .await
        {
            Ok(Watched::Stopped) => break 'watch,
            Ok(Watched::Seen(seq)) => {
                after_seq = seq;
                "the coordinator ended the stream".to_string()
            }
            Err((seq, status)) if transient(&status) => {
                after_seq = seq.max(after_seq);
                CliError::from_status(&status, &remote.url).to_string()
            }
            Err((_, status)) => return Err(CliError::from_status(&status, &remote.url)),
        };
        let since = *lost_since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() > RECONNECT_FOR {
            view.finish();
            return Err(gave_up(&lost, run_id));
        }
        view.note(&format!("{lost}; reconnecting"));
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if remote.reconnect().await.is_ok() {
                break;
            }
            if since.elapsed() > RECONNECT_FOR {
                view.finish();
                return Err(gave_up(&lost, run_id));
            }
        }
    }
    view.finish();
    let run = get(remote, run_id).await?;
    match output {
        Output::Json => println!("{}", run_json(&run)),
        Output::Text => print!("{}", run_text(&run)),
    }
    final_result(&run)
}

fn gave_up(lost: &str, run_id: &str) -> CliError {
    CliError::Unreachable(format!(
        "{lost}; gave up after {} s (the run goes on: `fleetctl watch {run_id}`)",
        RECONNECT_FOR.as_secs()
    ))
}

/// How long `watch` keeps reconnecting to a coordinator that went away.
const RECONNECT_FOR: Duration = Duration::from_secs(120);

enum Watched {
    /// The run stopped (finished or halted).
    Stopped,
    /// The stream ended; the last stored event seen.
    Seen(u64),
}

/// Worth reconnecting for: the coordinator or the link went away.
fn transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::Internal
            | tonic::Code::DeadlineExceeded
    )
}

/// One watch stream, from `after_seq`; `Err` carries the last seq seen with the stream's error.
async fn watch_once(
    remote: &mut Remote,
    run_id: &str,
    after_seq: u64,
    output: Output,
    view: &mut View,
    lost_since: &mut Option<std::time::Instant>,
) -> std::result::Result<Watched, (u64, tonic::Status)> {
    let mut seen = after_seq;
    let mut stream = remote
        .client
        .watch_run(pb::WatchRunRequest {
            run_id: run_id.to_string(),
            after_seq,
            follow: true,
            node: None,
            step: None,
        })
        .await
        .map_err(|s| (seen, s))?
        .into_inner();
    *lost_since = None;
    loop {
        let Some(event) = stream.message().await.map_err(|s| (seen, s))? else {
            return Ok(Watched::Seen(seen));
        };
        // A step's live output has no seq (0): the cursor is the highest stored event's.
        seen = seen.max(event.seq);
        if output == Output::Text {
            view.show(&event);
        }
        if let Some(pb::run_event::Kind::RunState(s)) = &event.kind
            && matches!(
                s.state(),
                pb::RunState::Succeeded
                    | pb::RunState::Failed
                    | pb::RunState::Aborted
                    | pb::RunState::Halted
            )
        {
            return Ok(Watched::Stopped);
        }
    }
}

enum View {
    Plain,
    Live {
        bars: MultiProgress,
        overall: ProgressBar,
        nodes: HashMap<String, ProgressBar>,
        done: std::collections::HashSet<(String, String, String)>,
    },
}

impl View {
    fn live(run: &pb::Run) -> Self {
        let bars = MultiProgress::new();
        let overall = bars.add(ProgressBar::new(run.steps.len() as u64));
        overall.set_style(
            ProgressStyle::with_template("{bar:40.cyan/blue} {pos}/{len} steps  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let style = ProgressStyle::with_template("  {prefix:<16} {bar:20} {pos:>3}%  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        let mut nodes = HashMap::new();
        for s in &run.steps {
            if let Some(node) = &s.node {
                nodes.entry(node.clone()).or_insert_with(|| {
                    let bar = bars.add(ProgressBar::new(100));
                    bar.set_style(style.clone());
                    bar.set_prefix(node.clone());
                    bar.set_message("waiting");
                    bar
                });
            }
        }
        // A node with nothing left to do (already current, newer, skipped) says so from the start.
        for (node, bar) in &nodes {
            let steps: Vec<&pb::RunStep> = run
                .steps
                .iter()
                .filter(|s| s.node.as_ref() == Some(node))
                .collect();
            if steps.iter().all(|s| {
                matches!(
                    s.state(),
                    pb::StepState::AlreadyCurrent | pb::StepState::Newer | pb::StepState::Skipped
                )
            }) {
                bar.set_position(100);
                bar.set_message(step_state(
                    steps.last().map_or(pb::StepState::Skipped, |s| s.state()),
                ));
            }
        }
        let done = run
            .steps
            .iter()
            .filter(|s| {
                !matches!(
                    s.state(),
                    pb::StepState::Pending | pb::StepState::Running | pb::StepState::Waiting
                )
            })
            .map(|s| {
                (
                    s.environment.clone(),
                    s.node.clone().unwrap_or_default(),
                    s.step.clone(),
                )
            })
            .collect::<std::collections::HashSet<_>>();
        overall.set_position(done.len() as u64);
        View::Live {
            bars,
            overall,
            nodes,
            done,
        }
    }

    fn show(&mut self, event: &pb::RunEvent) {
        // The dispatch record (it carries the attempt id) repeats the step's change to running.
        if matches!(&event.kind, Some(pb::run_event::Kind::StepState(s)) if !s.attempt_id.is_empty())
        {
            return;
        }
        let node = event.node.clone().unwrap_or_default();
        let place = if node.is_empty() {
            event.environment.clone()
        } else {
            format!("{} {node}", event.environment)
        };
        let line = match &event.kind {
            Some(pb::run_event::Kind::RunState(s)) => {
                let reason = if s.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", s.reason)
                };
                Some(format!("run {}{reason}", run_state(s.state())))
            }
            Some(pb::run_event::Kind::StepState(s)) => {
                let msg = if s.message.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", s.message)
                };
                Some(format!(
                    "{place} {} {}{msg}",
                    event.step,
                    step_state(s.state())
                ))
            }
            Some(pb::run_event::Kind::Progress(p)) => Some(format!(
                "{place} {} {}% {}",
                event.step, p.percent, p.message
            )),
            // An attended install shows as the step's change to waiting; a reboot only here.
            Some(pb::run_event::Kind::Waiting(w)) if w.reason() == pb::WaitReason::Reboot => {
                Some(format!("{place} {} {}", event.step, w.instruction))
            }
            _ => None,
        };
        match self {
            View::Plain => {
                if let Some(line) = line {
                    println!("{} {line}", time(event.at_unix_ms));
                }
            }
            View::Live {
                bars,
                overall,
                nodes,
                done,
            } => match &event.kind {
                Some(pb::run_event::Kind::RunState(_)) => {
                    overall.set_message(line.unwrap_or_default());
                }
                Some(pb::run_event::Kind::StepState(s)) => {
                    let finished = !matches!(
                        s.state(),
                        pb::StepState::Pending | pb::StepState::Running | pb::StepState::Waiting
                    );
                    if finished
                        && done.insert((
                            event.environment.clone(),
                            node.clone(),
                            event.step.clone(),
                        ))
                    {
                        overall.inc(1);
                    }
                    match nodes.get(&node) {
                        Some(bar) => {
                            bar.set_message(format!("{} {}", event.step, step_state(s.state())));
                            if finished {
                                bar.set_position(100);
                            } else if s.state() == pb::StepState::Running {
                                bar.set_position(0);
                            }
                        }
                        None => {
                            let _ = bars.println(line.unwrap_or_default());
                        }
                    }
                    if s.state() == pb::StepState::Failed {
                        let _ =
                            bars.println(format!("failed: {place} {}: {}", event.step, s.message));
                    }
                    if s.state() == pb::StepState::Waiting && !node.is_empty() {
                        let _ =
                            bars.println(format!("waiting: {place} {}: {}", event.step, s.message));
                    }
                }
                Some(pb::run_event::Kind::Waiting(_)) => {
                    if let (Some(bar), Some(line)) = (nodes.get(&node), line) {
                        bar.set_message(line);
                    }
                }
                Some(pb::run_event::Kind::Progress(p)) => {
                    if let Some(bar) = nodes.get(&node) {
                        bar.set_position(u64::from(p.percent.min(100)));
                        bar.set_message(format!("{}: {}", event.step, p.message));
                    }
                }
                _ => {}
            },
        }
    }

    /// A line about the watch itself (not the run), on standard error.
    fn note(&self, text: &str) {
        match self {
            View::Live { bars, .. } => {
                let _ = bars.println(format!("fleetctl: {text}"));
            }
            View::Plain => eprintln!("fleetctl: {text}"),
        }
    }

    fn finish(&self) {
        if let View::Live { overall, nodes, .. } = self {
            for bar in nodes.values() {
                bar.abandon();
            }
            overall.abandon();
        }
    }
}

async fn get(remote: &mut Remote, run_id: &str) -> Result<pb::Run> {
    Ok(remote
        .client
        .get_run(pb::GetRunRequest {
            run_id: run_id.to_string(),
        })
        .await
        .map_err(rpc(remote))?
        .into_inner())
}

pub(crate) async fn show(remote: &mut Remote, run_id: &str, output: Output) -> Result<()> {
    let run = get(remote, run_id).await?;
    match output {
        Output::Json => println!("{}", run_json(&run)),
        Output::Text => print!("{}", run_text(&run)),
    }
    Ok(())
}

pub(crate) async fn list(remote: &mut Remote, output: Output) -> Result<()> {
    let runs = remote
        .client
        .list_runs(pb::ListRunsRequest { limit: 0 })
        .await
        .map_err(rpc(remote))?
        .into_inner()
        .runs;
    match output {
        Output::Json => {
            let items: Vec<Value> = runs
                .iter()
                .map(|r| json!({ "id": r.id, "workflow": workflow(r.workflow()), "state": run_state(r.state()), "started_at": time(r.started_at_unix_ms), "started_by": r.started_by }))
                .collect();
            println!("{}", Value::Array(items));
        }
        Output::Text => {
            println!(
                "{:<36}  {:<8}  {:<16}  {:<20}  STARTED BY",
                "RUN", "WORKFLOW", "STATE", "STARTED"
            );
            for r in &runs {
                println!(
                    "{:<36}  {:<8}  {:<16}  {:<20}  {}",
                    r.id,
                    "upgrade",
                    run_state(r.state()),
                    time(r.started_at_unix_ms),
                    r.started_by
                );
            }
        }
    }
    Ok(())
}

/// `logs`: every page of the run's log, printed as it comes (as text) or as one JSON array.
pub(crate) async fn logs(
    remote: &mut Remote,
    run_id: &str,
    node: Option<String>,
    step: Option<String>,
    output: Output,
) -> Result<()> {
    let every_node = node.is_none();
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = remote
            .client
            .logs(pb::LogsRequest {
                run_id: run_id.to_string(),
                node: node.clone(),
                step: step.clone(),
                page_token: page_token.clone(),
                max_events: 0,
            })
            .await
            .map_err(rpc(remote))?
            .into_inner();
        let lines = page.events.iter().filter_map(|e| log_line(e, every_node));
        match output {
            Output::Json => all.extend(lines.map(|(s, l)| json!({ "step": s, "line": l }))),
            Output::Text => {
                for (step, line) in lines {
                    println!("{step}: {line}");
                }
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        if page.next_page_token == page_token {
            return Err(CliError::Failed(
                "the coordinator sent the same page of the log twice".into(),
            ));
        }
        page_token = page.next_page_token;
    }
    if let Output::Json = output {
        println!("{}", Value::Array(all));
    }
    Ok(())
}

/// An event of a log as (who and which step, text); `None` for events a log does not show.
fn log_line(e: &pb::RunEvent, every_node: bool) -> Option<(String, String)> {
    let text = match &e.kind {
        Some(pb::run_event::Kind::Log(l)) => l.line.clone(),
        Some(pb::run_event::Kind::Progress(p)) => format!("[{}%] {}", p.percent, p.message),
        Some(pb::run_event::Kind::Output(o)) => format!("{}={}", o.key, o.value),
        Some(pb::run_event::Kind::Waiting(w)) => format!("waiting: {}", w.instruction),
        _ => return None,
    };
    let step = if every_node {
        let who = e
            .node
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or("coordinator");
        format!("{who} {}", e.step)
    } else {
        e.step.clone()
    };
    Some((step, text))
}

/// What a control names besides the run: a node's step, and why.
pub(crate) struct ControlArgs {
    pub node: Option<String>,
    pub step: Option<String>,
    pub comment: String,
}

/// How long a control may go unanswered before fleetctl asks again.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

/// A control, with a request id of its own: asked again once, with the same id, when the answer does
/// not come (timeout, connection lost), so that the coordinator applies it once whatever happened.
pub(crate) async fn control(
    remote: &mut Remote,
    run_id: &str,
    action: pb::ControlAction,
    args: ControlArgs,
    output: Output,
) -> Result<()> {
    let request = pb::ControlRequest {
        run_id: run_id.to_string(),
        action: action as i32,
        node: args.node,
        step: args.step,
        comment: args.comment,
        request_id: uuid::Uuid::new_v4().to_string(),
    };
    let mut asked_again = false;
    let answer = loop {
        let mut call = tonic::Request::new(request.clone());
        call.set_timeout(CONTROL_TIMEOUT);
        match remote.client.control(call).await {
            Ok(answer) => break answer,
            Err(status) if !asked_again && worth_asking_again(status.code()) => {
                eprintln!(
                    "no answer from the coordinator at {} ({}); asking again with the same request id",
                    remote.url,
                    status.message()
                );
                asked_again = true;
                remote.reconnect().await?;
            }
            Err(status) => return Err(CliError::from_status(&status, &remote.url)),
        }
    };
    let run = answer
        .into_inner()
        .run
        .ok_or_else(|| CliError::Failed("the coordinator returned no run".into()))?;
    match output {
        Output::Json => println!("{}", run_json(&run)),
        Output::Text => println!(
            "run {} is {}{}",
            run.id,
            run_state(run.state()),
            if run.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", run.reason)
            }
        ),
    }
    Ok(())
}

pub(crate) async fn audit(
    remote: &mut Remote,
    run_id: Option<String>,
    output: Output,
) -> Result<()> {
    let entries = remote
        .client
        .audit(pb::AuditRequest { run_id })
        .await
        .map_err(rpc(remote))?
        .into_inner()
        .entries;
    match output {
        Output::Json => {
            let items: Vec<Value> = entries
                .iter()
                .map(|e| json!({ "at": time(e.at_unix_ms), "operator": e.operator, "action": e.action, "run_id": e.run_id, "node": e.node, "step": e.step, "detail": e.detail }))
                .collect();
            println!("{}", Value::Array(items));
        }
        Output::Text => {
            for e in &entries {
                let target = [e.node.as_deref(), e.step.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" ");
                println!(
                    "{}  {:<12} {:<8} {} {target} {}",
                    time(e.at_unix_ms),
                    e.operator,
                    e.action,
                    e.run_id,
                    e.detail
                );
            }
        }
    }
    Ok(())
}

/// Whether a control that failed with `code` may have been lost on the way (or its answer was): the
/// request id makes asking again safe.
fn worth_asking_again(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown
    )
}

fn workflow(w: pb::Workflow) -> &'static str {
    match w {
        pb::Workflow::Migrate => "migrate",
        pb::Workflow::Upgrade | pb::Workflow::Unspecified => "upgrade",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal is final; only a control that may not have arrived, or whose answer did not, is sent
    /// again (with its request id, so that it is applied once).
    #[test]
    fn only_a_lost_control_is_asked_again() {
        for code in [
            tonic::Code::Unavailable,
            tonic::Code::DeadlineExceeded,
            tonic::Code::Cancelled,
            tonic::Code::Unknown,
        ] {
            assert!(worth_asking_again(code), "{code:?}");
        }
        for code in [
            tonic::Code::InvalidArgument,
            tonic::Code::FailedPrecondition,
            tonic::Code::NotFound,
            tonic::Code::PermissionDenied,
            tonic::Code::Internal,
        ] {
            assert!(!worth_asking_again(code), "{code:?}");
        }
    }

    #[test]
    fn a_log_line_names_the_node_only_when_every_node_is_shown() {
        let event = pb::RunEvent {
            node: Some("m1".into()),
            step: "backup-secret".into(),
            kind: Some(pb::run_event::Kind::Log(pb::StepLog {
                line: "done".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(
            log_line(&event, true),
            Some(("m1 backup-secret".into(), "done".into()))
        );
        assert_eq!(
            log_line(&event, false),
            Some(("backup-secret".into(), "done".into()))
        );
    }
}
