//! ssofleet's pure core: what the coordinator decides, without I/O runtime, network or database (no
//! tokio, tonic, rusqlite or tiberius among its dependencies), so that `fleetctl` and the agent can
//! use it without linking the server.
//!
//! # Layout
//! - [`domain`]: newtypes (`NodeName`, `EnvName`, `Role`).
//! - [`inventory`]: `fleet.toml`, validated once into typed structs.
//! - [`plan`]: inventory + facts → the ordered steps of a run, and the plan's hash.
//! - [`engine`]: the rollout engine, a pure state machine over one run.
//! - [`fitness`]: the preflight fitness checks the agents report, and what a failed one means.
//! - [`config`]: TOML configuration read with line and key positions for every problem.
//! - [`version`]: ESSO versions, compared as numbers.
//! - [`install`]: which ESSO installs may run unattended (the planner's and the agent's one rule).
//! - [`names`]: the characters of a name, server names as ESSO records them, the text of a secret file.
//! - [`text`]: how an error message quotes text it did not write.
#![forbid(unsafe_code)]

pub mod config;
pub mod domain;
pub mod engine;
pub mod fitness;
pub mod install;
pub mod inventory;
pub mod names;
pub mod plan;
pub mod text;
pub mod version;
