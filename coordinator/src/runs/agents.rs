//! The agents' side of the run manager: what an agent's process says of the attempts it holds — its
//! acknowledgements of assignments, its reports (in its hello, in answer to a query, with a
//! duplicate), its waits, and its step events — and what the manager answers (acknowledgements, a
//! cancel). Which agent process's word counts: an attempt is sent again only when no process
//! accepted it (SPEC §9).

use super::*;
use crate::domain::AttemptId;
use crate::protocol::{
    AttemptState, Decision, Finished, LogStream, StepEvent, StepEventKind, WaitReason, Waiting,
};

impl Manager {
    pub(super) async fn agent(&mut self, node: NodeName, instance: &str, message: FromAgent) {
        match message {
            FromAgent::Event(event) => self.step_event(node, event).await,
            FromAgent::Ack(ack) => match ack.decision {
                Decision::Accepted => {
                    // Who holds it: only that process's word that it never got it sends it again.
                    if self.attempt_of(&node, ack.attempt_id.as_str()).is_some()
                        && let Err(e) =
                            off_worker(|| self.store.accepted(ack.attempt_id.as_str(), instance))
                    {
                        tracing::error!(
                            "cannot record who accepted attempt {}: {e}",
                            ack.attempt_id
                        );
                    }
                }
                Decision::Duplicate => {
                    // Redelivered: the agent answers with what its journal holds, never runs it again.
                    if let Some(report) = ack.report {
                        self.attempt_report(node, instance, report).await;
                    }
                }
                Decision::Refused(decision) => {
                    let row = self.attempt_of(&node, ack.attempt_id.as_str());
                    // A refusal after the attempt was accepted (a redelivery's answer arriving late)
                    // says nothing of the attempt that runs.
                    if let Some(by) = row.as_ref().and_then(|r| r.accepted_by.as_deref()) {
                        tracing::debug!(node = %node, attempt_id = %ack.attempt_id, ?decision, "ignored a refusal of an attempt agent instance {by} accepted");
                        return;
                    }
                    tracing::warn!(node = %node, attempt_id = %ack.attempt_id, ?decision, "assignment refused: {}", clip(&ack.reason, 2000));
                    if row.is_some()
                        && let Some((step, attempt)) = self.current_attempt(ack.attempt_id.as_str())
                    {
                        let outcome =
                            Outcome::Failed(format!("{node} refused the step: {}", ack.reason));
                        self.apply(Event::StepFinished {
                            step,
                            attempt,
                            outcome,
                        })
                        .await;
                    }
                }
            },
            FromAgent::Report(report) => self.attempt_report(node, instance, report).await,
        }
    }

    /// A node's agent attached. What its journal reported is settled, and every attempt of the
    /// active run that is out on this node is asked about: the agent answers what it knows, and an
    /// attempt it never received starts again (SPEC §9: resolved by asking, never by running it twice).
    pub(super) async fn agent_attached(
        &mut self,
        node: NodeName,
        instance: &str,
        reports: Vec<AttemptReport>,
    ) {
        if reports.is_empty() {
            // Looked at with the others that attach now: after a coordinator restart, thousands do.
            self.attachment_changed = true;
        } else if self.attached.insert(node.clone()) {
            // The run hears of this node before its reports.
            self.apply(Event::NodeAttached(node.clone())).await;
        }
        for report in reports {
            self.attempt_report(node.clone(), instance, report).await;
        }
        let Some(active) = self.active.as_ref() else {
            return;
        };
        let out: Vec<String> = active
            .node_steps
            .get(&node)
            .into_iter()
            .flatten()
            .filter(|&&step| active.run.steps()[step].state() == StepState::Running)
            .filter_map(|step| active.attempts.get(step).cloned())
            .collect();
        if out.is_empty() {
            return;
        }
        tracing::info!(node = %node, attempts = ?out, "asking {node} about {} attempt(s) it may have", out.len());
        let query = ToAgent::AttemptQuery {
            attempt_ids: out.into_iter().map(AttemptId::from).collect(),
            epoch: self.epoch,
        };
        // Not sent: the agent detached again, and is asked when it is back.
        let _ = self.fleet.send(node, query).await;
    }

    /// What an agent's journal holds of one attempt: in answer to a query, in its hello, or with a
    /// duplicate assignment. "Never received" sends the attempt again only when no agent process
    /// accepted it: one that did may run it still (two agents for one node) or lost its journal, and
    /// then the outcome is unknown and the step fails saying so — never run twice (SPEC §9).
    async fn attempt_report(&mut self, node: NodeName, instance: &str, report: AttemptReport) {
        let Some(row) = self.attempt_of(&node, report.attempt_id.as_str()) else {
            return;
        };
        match report.state {
            AttemptState::Unknown => {
                let Some((step, attempt)) = self
                    .current_attempt(report.attempt_id.as_str())
                    .filter(|(step, _)| row.step == *step)
                else {
                    return;
                };
                match row.accepted_by.as_deref() {
                    None => {
                        tracing::warn!(node = %node, attempt_id = %report.attempt_id, "{node} never received attempt {attempt}; it starts again");
                        self.apply(Event::StepNotDelivered { step, attempt }).await;
                    }
                    Some(by) => {
                        let why = if by == instance {
                            format!(
                                "the agent of {node} accepted attempt {attempt} but its journal no longer has it"
                            )
                        } else {
                            format!(
                                "attempt {attempt} was accepted by another agent process for {node} (instance {by}), and the agent attached now \
                                 (instance {instance}) does not know it: two agents run for this node, or its state directory was replaced"
                            )
                        };
                        let message = format!(
                            "{why}. Whether the step ran, or runs there still, is unknown, so it is not sent again: make sure one agent \
                             runs for {node}, look at the server, then retry or skip the step"
                        );
                        tracing::error!(node = %node, attempt_id = %report.attempt_id, "{message}");
                        self.apply(Event::StepFinished {
                            step,
                            attempt,
                            outcome: Outcome::Failed(message),
                        })
                        .await;
                    }
                }
            }
            AttemptState::Finished | AttemptState::Interrupted => match report.result {
                Some(result) => {
                    self.finish(
                        &node,
                        report.attempt_id.as_str(),
                        row,
                        result,
                        report.last_seq,
                    )
                    .await;
                }
                None => {
                    tracing::warn!(node = %node, attempt_id = %report.attempt_id, "a finished attempt reported without its result")
                }
            },
            AttemptState::Waiting => self.waiting_report(&node, &report).await,
            state => {
                tracing::debug!(node = %node, attempt_id = %report.attempt_id, ?state, "attempt still in progress on its agent");
            }
        }
    }

    /// The agent holds an attempt waiting for the operator's attended install. Where the operator has
    /// approved it already, the agent did not get the word: it is told again (or, in an aborted run,
    /// told to end the attempt). Otherwise the step waits for the operator (this also covers a waiting
    /// event stored just before a coordinator crash and not yet applied).
    async fn waiting_report(&mut self, node: &NodeName, report: &AttemptReport) {
        if let Some(waiting) = report.waiting.as_ref() {
            self.agent_waits(node, report.attempt_id.as_str(), waiting)
                .await;
        }
    }

    /// An agent holds `attempt_id` waiting (reported in an event, its hello or an answer):
    /// - for a reboot: the step's clock starts again and the master's absence is expected;
    /// - for the operator (an attended install; a restart by hand when a reboot did not come, which
    ///   the agent notices itself when the server restarts): the step waits for `approve`; where the operator approved already, the
    ///   agent did not get the word and is told again; where no run wants this wait (aborted, timed
    ///   out, retried since, another run, none), the agent is told to drop it, so that the server
    ///   is not blocked for ever. Repeating any of this changes nothing.
    async fn agent_waits(&mut self, node: &NodeName, attempt_id: &str, waiting: &Waiting) {
        // A finished run hears neither (the engine's word), and wants no wait.
        let current = self.current_attempt(attempt_id);
        if waiting.reason == WaitReason::Reboot {
            if let Some((step, attempt)) = current {
                self.apply(Event::StepRebooting {
                    step,
                    attempt,
                    message: waiting.instruction.clone(),
                })
                .await;
            }
            return;
        }
        // The operator's part: an attended install, or restarting a server whose reboot did not come.
        if !matches!(
            waiting.reason,
            WaitReason::AttendedInstall | WaitReason::RestartByHand
        ) {
            return;
        }
        if let Some((step, attempt)) = current {
            // The step waits for the operator now; or the operator approved it already, and its
            // agent, which did not get the word, is told again (the engine's `Continue`).
            self.apply(Event::StepWaiting {
                step,
                attempt,
                instruction: waiting.instruction.clone(),
            })
            .await;
            if self
                .active
                .as_ref()
                .is_some_and(|a| a.run.wants_wait(step, attempt))
            {
                return;
            }
        }
        tracing::warn!(node = %node, attempt_id, "{node} waits for the operator on an attempt no run wants: telling it to drop the attempt");
        self.cancel_attempt(
            node.clone(),
            attempt_id,
            "no run waits for this install any more (aborted, timed out or retried)".into(),
        )
        .await;
    }

    pub(super) async fn cancel_attempt(
        &mut self,
        node: NodeName,
        attempt_id: &str,
        reason: String,
    ) {
        let message = ToAgent::Cancel {
            attempt_id: attempt_id.into(),
            reason,
            epoch: self.epoch,
        };
        let _ = self.fleet.send(node, message).await;
    }

    /// The stored attempt, if it exists and belongs to `node`.
    fn attempt_of(
        &mut self,
        node: &NodeName,
        attempt_id: &str,
    ) -> Option<crate::store::AttemptRow> {
        let row = match self.store.attempt(attempt_id) {
            Ok(Some(row)) => row,
            Ok(None) => {
                self.complain(
                    node,
                    "reported on an attempt this coordinator never dispatched",
                );
                return None;
            }
            Err(e) => {
                tracing::error!("cannot read attempt {attempt_id}: {e}");
                return None;
            }
        };
        // An agent speaks only for its own node's attempts.
        if row.node.as_deref() != Some(node.as_str()) {
            self.complain(
                node,
                &format!(
                    "reported on an attempt of {}",
                    row.node.as_deref().unwrap_or("the coordinator")
                ),
            );
            return None;
        }
        Some(row)
    }

    /// Logs that `node`'s agent sent something wrong (ignored), at most once a minute per node.
    fn complain(&mut self, node: &NodeName, what: &str) {
        if let Some(more) = self.complaints.entry(node.clone()).or_default().admit() {
            tracing::warn!(node = %node, "agent {node} {what}; ignored ({more} more ignored since the last warning)");
        }
    }

    fn current_attempt(&self, attempt_id: &str) -> Option<(usize, u32)> {
        let active = self.active.as_ref()?;
        let step = *active.attempt_steps.get(attempt_id)?;
        // An earlier attempt of a step that was tried again is not current.
        (active.attempts.get(&step).map(String::as_str) == Some(attempt_id))
            .then(|| (step, active.run.steps()[step].attempt()))
    }

    /// An attempt's result: stored once, applied to the run if it is the step's current attempt, then
    /// acknowledged as complete once every event up to `last_seq` is stored too (only then may the
    /// agent forget it). A redelivered result is applied again from the start, so a result stored just
    /// before a crash still moves the run on.
    async fn finish(
        &mut self,
        node: &NodeName,
        attempt_id: &str,
        row: crate::store::AttemptRow,
        result: Finished,
        last_seq: u64,
    ) {
        let artifacts: Vec<NewArtifact> = result
            .artifacts
            .iter()
            .map(|a| NewArtifact {
                kind: a.kind.clone(),
                path: a.path.clone(),
                size_bytes: a.size_bytes,
                sha256: a.sha256.clone(),
                note: a.note.clone(),
            })
            .collect();
        let outcome = result.outcome;
        if let Err(e) = off_worker(|| {
            self.store.finish_attempt(
                attempt_id,
                now_ms(),
                outcome,
                &result.error,
                result.exit_code,
                &artifacts,
            )
        }) {
            tracing::error!("cannot store a step result: {e}");
            return;
        }
        if outcome == AttemptOutcome::Succeeded
            && let Some(version) = result.outputs.get("version")
            && let Some(kind) = self.active.as_ref().and_then(|a| {
                a.run
                    .steps()
                    .get(row.step)
                    .filter(|_| a.id == row.run_id)
                    .map(|s| s.plan().kind)
            })
            && matches!(
                kind,
                StepKind::VerifyMaster | StepKind::VerifyMember | StepKind::VerifyMigration
            )
        {
            self.fleet.verified(node.clone(), version.clone()).await;
        }
        let outcome = match outcome {
            AttemptOutcome::Succeeded => Outcome::Succeeded,
            other => Outcome::Failed(if result.error.is_empty() {
                other.as_str().to_string()
            } else {
                result.error.clone()
            }),
        };
        let applied = match self.active.as_ref() {
            Some(active) if active.id == row.run_id => {
                let event = Event::StepFinished {
                    step: row.step,
                    attempt: row.number,
                    outcome,
                };
                self.apply(event).await
            }
            _ => true,
        };
        if applied {
            self.ack(node, attempt_id, Some(last_seq)).await;
        }
    }

    /// Tells the agent which of an attempt's events are stored; with `result_seq` (the seq of its
    /// result, applied), that the attempt is complete, if every event up to it is stored.
    pub(super) async fn ack(&mut self, node: &NodeName, attempt_id: &str, result_seq: Option<u64>) {
        // It writes the events taken since the last flush first, if any.
        let Ok(up_to) = off_worker(|| self.store.contiguous_seq(attempt_id)) else {
            return;
        };
        let complete = result_seq.is_some_and(|last| up_to >= last);
        let ack = ToAgent::EventAck {
            attempt_id: attempt_id.into(),
            up_to_seq: up_to,
            complete,
            epoch: self.epoch,
        };
        let _ = self.fleet.send(node.clone(), ack).await;
    }

    async fn step_event(&mut self, node: NodeName, event: StepEvent) {
        use StepEventKind as Kind;
        let Some(kind) = event.kind.clone() else {
            return;
        };
        let (name, payload) = match &kind {
            Kind::Started { command } => ("started", serde_json::json!({ "command": command })),
            Kind::Progress(p) => (
                "progress",
                serde_json::json!({ "percent": p.percent, "message": p.message }),
            ),
            Kind::Output(o) => (
                "output",
                serde_json::json!({ "key": o.key, "value": o.value }),
            ),
            Kind::Log(l) => (
                "log",
                serde_json::json!({ "line": l.line, "stderr": l.stream == LogStream::Stderr }),
            ),
            Kind::Waiting(w) => (
                "waiting",
                serde_json::json!({
                    "instruction": w.instruction,
                    "reason": w.reason.as_str(),
                }),
            ),
            Kind::Finished(f) => (
                "finished",
                serde_json::json!({ "outcome": f.outcome.as_str(), "error": f.error, "exit_code": f.exit_code }),
            ),
        };
        let Some(row) = self.attempt_of(&node, event.attempt_id.as_str()) else {
            return;
        };
        if event.seq == 0 {
            self.complain(&node, "sent an event without a sequence number");
            return;
        }
        // Stored once, by (attempt, seq): a redelivery changes nothing.
        let fresh = match self.store.agent_event(
            event.attempt_id.as_str(),
            event.seq,
            event.at_unix_ms,
            name,
            &payload,
        ) {
            Ok(fresh) => fresh,
            Err(e) => {
                tracing::error!("cannot store an agent event: {e}");
                return;
            }
        };
        if let Kind::Finished(result) = kind {
            // Applied (and acknowledged complete) even when redelivered: see `finish`.
            self.finish(&node, event.attempt_id.as_str(), row, result, event.seq)
                .await;
            return;
        }
        // Acknowledged once written, with the events that arrived with it.
        self.unacked
            .insert((node.clone(), event.attempt_id.to_string()));
        if let Kind::Waiting(w) = &kind {
            // Settled even when redelivered: it may have been stored just before a crash.
            self.agent_waits(&node, event.attempt_id.as_str(), w).await;
        }
        if !fresh {
            return;
        }
        let Some(active) = self.active.as_ref().filter(|a| a.id == row.run_id) else {
            return;
        };
        let live = match kind {
            Kind::Progress(p) => RunEventKind::Progress(p),
            Kind::Output(o) => RunEventKind::Output(o),
            Kind::Log(l) => RunEventKind::Log(l),
            Kind::Waiting(w) => RunEventKind::Waiting(w),
            Kind::Started { .. } | Kind::Finished(_) => return,
        };
        active.send_live(
            row.step,
            Some(node.to_string()),
            event.attempt_id.as_str(),
            event.at_unix_ms,
            live,
        );
    }
}
