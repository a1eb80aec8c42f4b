//! One step attempt's task in the agent: runs it (a new attempt, or one that goes on after a wait)
//! under its cancellation (`runner::CANCEL`) with its programs' output in its folder
//! (`runner::OUTPUT_DIR`), journals each of its events before anything is sent (and only then
//! records how far a hosted program's output was read: `runner::files`), and records a cancelled
//! attempt that did not end within the grace.

use fleet_proto::pb;
use tokio::sync::mpsc;

use crate::cancel::Ticket;
use crate::config::AgentConfig;
use crate::executor::{self, Assignment, Journaled};
use crate::journal::Journal;
use crate::runner;

/// Runs the attempt to its result, or to a wait (`None`). `continuation`: its last seq and why it
/// goes on (an approval, a reboot).
pub async fn run(
    config: &AgentConfig,
    journal: &Journal,
    assignment: &Assignment,
    continuation: Option<(u64, String)>,
    ticket: Ticket,
) -> Option<pb::StepFinished> {
    let (tx, mut rx) = mpsc::channel::<Journaled>(256);
    // Events go into the journal, never waiting on the network: a step's timeout holds while the
    // coordinator is unreachable. A cancelled attempt's result says so.
    let journaled = async {
        // Once an event could not be journaled, the position stays before it.
        let mut all_journaled = true;
        while let Some(item) = rx.recv().await {
            match item {
                Journaled::Event(mut event) => {
                    if let Some(pb::step_event::Kind::Finished(result)) = &mut event.kind {
                        ticket.judge(result);
                    }
                    if let Err(e) = journal.record(&event) {
                        all_journaled = false;
                        tracing::error!(seq = event.seq, "cannot journal a step event: {e}");
                    }
                }
                Journaled::ReadTo(program, at) if all_journaled => {
                    if let Err(e) = program.write_pos(at) {
                        tracing::warn!("cannot record how far the output was read: {e}");
                    }
                }
                Journaled::ReadTo(..) => {}
            }
        }
    };
    // The step's programs write their output into the attempt's folder (`runner::files`).
    let output_dir = runner::files::attempt_dir(&config.state_dir, &assignment.attempt_id);
    let work = runner::OUTPUT_DIR.scope(
        output_dir,
        runner::CANCEL.scope(ticket.token(), async {
            match continuation {
                None => {
                    tracing::info!(action = %assignment.action, "step started");
                    executor::execute(config, assignment, tx).await
                }
                Some((last_seq, why)) => {
                    tracing::info!(action = %assignment.action, "{why}: verifying");
                    Some(executor::continue_after(config, assignment, last_seq, &why, tx).await)
                }
            }
        }),
    );
    // Both to their end: the work (or the grace after a cancel), and the journaling of all it sent.
    let (ended, ()) = tokio::join!(
        async {
            tokio::select! {
                result = work => Some(result),
                () = ticket.gave_up() => None,
            }
        },
        journaled
    );
    match ended {
        Some(mut result) => {
            if let Some(result) = result.as_mut() {
                ticket.judge(result);
            }
            result
        }
        // Cancelled, and not ended within the grace: its programs were ended; the agent's own work
        // for it is dropped, and the journal records it cancelled after its last event.
        None => {
            let result = ticket.abandoned();
            let last_seq = journal
                .report(&assignment.attempt_id)
                .map_or(0, |r| r.last_seq);
            if let Err(e) = journal.finish(&assignment.attempt_id, last_seq, result.clone()) {
                tracing::error!("cannot journal a step event: {e}");
            }
            Some(result)
        }
    }
}
