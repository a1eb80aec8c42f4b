//! End-to-end tests of the foundation: real coordinator, agent and fleetctl processes over mutual TLS
//! on 127.0.0.1, certificates made per test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agent_steps;
mod attach;
mod attended;
mod builtins;
mod controls;
mod deliveries;
mod durability;
mod fitness;
mod hostile;
mod inventory;
mod migrate;
mod migrate_builtins;
mod mssql_contract;
mod operator_api;
mod operator_contract;
mod plan;
mod refusals;
mod refusals_in_words;
mod sql;
mod tds;
mod tds_crosscheck;
mod two_agents;
mod upgrade;
mod versions;
mod windows;
mod wine;
mod wine_agent;
mod wine_builtins;
mod wine_service;

/// A two-environment inventory: dev (a1 master, a2 member) and prod (p1 master).
pub const FLEET: &str = r#"
[upgrade]
target_version = "3.0.7"
installer = '/media/BizTalk/Setup.exe'

[[environment]]
name = "dev"
master = "a1"
members = ["a2"]
backup_dir = '/backups/dev'

[[environment]]
name = "prod"
master = "p1"
backup_dir = '/backups/prod'
"#;
