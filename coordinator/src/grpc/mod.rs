//! The gRPC layer, the one place the wire (proto, `tonic`) meets the coordinator: the services and
//! their certificate-based authorization ([`service`]), the operator API's requests and plans
//! ([`convert`]), the agent protocol ([`agent_wire`]) and the run manager's views ([`run_wire`]).

pub mod agent_wire;
pub mod convert;
pub mod run_wire;
pub mod service;

/// The tests' selection: environment `dev`, the workflow given, the inventory's limits.
#[cfg(test)]
fn dev_selection(workflow: crate::plan::Workflow) -> crate::plan::Selection {
    crate::plan::Selection {
        workflow,
        environments: vec![crate::domain::EnvName::new("dev").unwrap()],
        master_only: false,
        max_parallel: None,
        max_failures: None,
    }
}
