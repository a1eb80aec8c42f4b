//! The gRPC layer, the one place the wire (proto, `tonic`) meets the coordinator: the services and
//! their certificate-based authorization ([`service`]), the operator API's requests and plans
//! ([`convert`]), the agent protocol ([`agent_wire`]) and the run manager's views ([`run_wire`]).

pub mod agent_wire;
pub mod convert;
pub mod run_wire;
pub mod service;
