//! The ssofleet node agent: runs on each SSO server, dials out to the coordinator, and runs the actions
//! of its local catalogue.
//!
//! # Layout
//! - [`config`]: `agent.toml`, validated once.
//! - [`catalogue`]: the closed list of actions and the placeholders of their argument templates.
//! - [`esso`]: ESSO's rules as Microsoft documents them (silent installs, exit codes, verification,
//!   events, backups), pure.
//! - [`action`]: running one action, configured or built-in (for steps and facts alike).
//! - [`builtin`]: the built-in Windows implementations of the actions (registry, services, ISSOConfigSS,
//!   setup, configuration, events, …).
//! - [`host`]: the machine: process identity and trees, the boot.
//! - [`limits`]: how big a line, a step's log, a result and any message the agent sends may be.
//! - [`runner`]: runs a configured command with a timeout and reads its line protocol; a step's
//!   programs write into files, and one that outlives the agent runs under the step host.
//! - [`orphan`]: a step's program that outlived the agent, followed to its end by the next start.
//! - [`executor`]: runs one step attempt and reports numbered events.
//! - [`cancel`]: cancelling a running step (never an install).
//! - [`facts`]: the `facts` action.
//! - [`backoff`]: exponential backoff with jitter for re-attaching.
//! - [`journal`]: the durable record of attempts and unacknowledged events in `state_dir`.
//! - [`attach`]: the long-lived stream to the coordinator.
//! - [`attempt`]: one attempt's task: run, journaled, cancellable.
#![forbid(unsafe_code)]

pub mod action;
pub mod attach;
pub mod attempt;
pub mod backoff;
pub mod builtin;
pub mod cancel;
pub mod catalogue;
pub mod config;
pub mod esso;
pub mod executor;
pub mod facts;
pub mod hashing;
pub mod host;
pub mod journal;
pub mod limits;
pub mod orphan;
pub mod runner;
