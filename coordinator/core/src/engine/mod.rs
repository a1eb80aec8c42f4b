//! The rollout engine: a pure state machine over one run. No I/O, no clock: time is an input.
//!
//! [`Run::apply`] takes an [`Event`] (a step started or finished, a node attached or detached, an
//! operator's control, a timer tick) with the current time, updates the run, and returns the
//! [`Command`]s for the shell around it: dispatch a step attempt (which the shell persists as
//! dispatched before sending), wake me at a time, and the state changes to persist and show.
//!
//! Attempts are numbered per step (1, 2, …); the shell maps them to attempt uuids. An event for any
//! attempt but a step's current one, or for a step already finished, is a duplicate and changes nothing.
//!
//! The ordering invariants of SPEC §5 hold by construction and are checked by property tests:
//! 1. no member step is dispatched before `verify-master` succeeded in that environment (and the master
//!    chain, backups included, cannot be skipped past);
//! 2. no step of environment k+1 before environment k finished and its gate passed;
//! 3. at most `max_parallel` member steps of an environment in flight;
//! 6. a step planned `already-current` or `newer` is never dispatched;
//! 7. no step is dispatched while its environment's maintenance window is closed.
//!
//! Waits for the operator: a manual gate, an attended install (its agent holds the attempt), and the
//! coordinator's own waits in the master chain ([`StepKind::awaits_operator`](crate::plan::StepKind::awaits_operator): a migration's review of
//! its export). Such a wait is dispatched like any coordinator step; the shell reports it waiting with
//! what the operator must do ([`Event::StepWaiting`]), and only [`Control::Approve`] passes it.
//!
//! A run survives a coordinator restart: the shell stores each step's [`StepRecord`] and the run's
//! [`Durable`] state with every decision, and [`Run::restore`] rebuilds the same run from them
//! ([`Event::Resumed`] then starts the clock of the steps out on agents again).
//!
//! The run is sealed: its state is the engine's own, read through accessors and changed only by
//! [`Run::apply`], so the property tests cover every change. By concern: `model` (what a run is,
//! made from its plan), `events` (the vocabulary, and `apply`), `schedule` (what starts when),
//! `outcomes` (what attempts report), `controls` and `targets` (the operator's), `status` (where the
//! run stands) and `record` (its stored form).

mod controls;
mod events;
mod model;
mod outcomes;
mod record;
mod schedule;
mod status;
mod targets;

pub use events::{Command, Control, Event, Outcome, Refused};
pub use model::{EnvRun, Run, StepRun, StepState};
pub use record::{Durable, DurableEnv, RunRecord, StepRecord};
pub use status::{EnvStatus, RunStatus};
pub use targets::Unresolved;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// How long past its step timeout a dispatched step may stay silent before the coordinator fails it
/// (the agent enforces the timeout itself; this covers an agent that never reports).
pub const RESULT_GRACE_MS: Millis = 60_000;

#[cfg(test)]
mod migrate_tests;
#[cfg(test)]
mod sealed_tests;
#[cfg(test)]
mod tests;
