//! The ssofleet coordinator: the one gRPC server of the fleet.
//!
//! # Layout
//! The pure core is the crate [`fleet_core`] (no tokio, tonic or database), re-exported here under
//! the paths the server's modules use:
//! - [`domain`]: newtypes (`NodeName`, `EnvName`, `Role`).
//! - [`plan`]: inventory + facts → the ordered steps of a run, and the plan's hash.
//! - [`engine`]: the rollout engine, a pure state machine over one run.
//! - [`inventory`]: `fleet.toml`, validated once into typed structs.
//! - [`fitness`]: the preflight fitness checks the agents report, and what a failed one means.
//!
//! The server:
//! - [`settings`]: command-line flags and `coordinator.toml`.
//! - [`epoch`]: the durable start counter that fences stale coordinators.
//! - [`protocol`]: the agent protocol in the coordinator's terms (facts, messages to and from agents).
//! - [`fleet`]: the live view of attached agents, owned by one task.
//! - [`input`]: what the operator API accepts from a caller (lengths, forms) and how errors quote it.
//! - [`runs`]: the shell around the engine: store, dispatch, agent events, controls, watchers.
//! - [`grpc`]: the wire: the gRPC services, their certificate-based authorization, and every
//!   proto ↔ domain conversion. `pb::` and `tonic::` appear only there and in the server setup below.
//!
//! [`run`] serves on an already-bound listener until `shutdown` is cancelled, so tests can start the
//! same server on `127.0.0.1:0`.
#![forbid(unsafe_code)]

pub use fleet_core::{domain, engine, fitness, inventory, plan};

pub mod complaints;
pub mod epoch;
pub mod fleet;
pub mod grpc;
pub mod input;
pub mod protocol;
pub mod runs;
pub mod settings;
pub mod sql;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::identity::Role;
use fleet_proto::pb::agent_service_server::AgentServiceServer;
use fleet_proto::pb::operator_service_server::OperatorServiceServer;
use fleet_proto::tls::{TlsFiles, TlsMaterial};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::fleet::FleetHandle;
use crate::grpc::service::{AgentService, OperatorService, Shared, require_role};
use crate::inventory::Inventory;

/// Why the coordinator could not start or stopped serving. Each is a configuration problem (exit 2)
/// except `Serve`.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Inventory(#[from] inventory::InventoryError),
    #[error("{0}")]
    Tls(#[from] fleet_proto::tls::TlsError),
    #[error("state directory {}: {detail}", path.display())]
    StateDir { path: PathBuf, detail: String },
    #[error("serving failed: {0}")]
    Serve(String),
}

/// Everything the server needs, loaded and checked.
pub struct Coordinator {
    pub inventory: Inventory,
    pub tls: TlsMaterial,
    pub state_dir: PathBuf,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
}

impl Coordinator {
    /// Loads and checks the inventory, the TLS material and the state directory.
    pub fn load(settings: &settings::Settings) -> Result<Self, StartError> {
        let inventory = Inventory::load(&settings.inventory)?;
        let tls = TlsMaterial::load(
            &TlsFiles::in_dir(&settings.tls_dir, "coordinator"),
            Role::Coordinator,
        )?;
        std::fs::create_dir_all(&settings.state_dir).map_err(|e| StartError::StateDir {
            path: settings.state_dir.clone(),
            detail: e.to_string(),
        })?;
        Ok(Self {
            inventory,
            tls,
            state_dir: settings.state_dir.clone(),
            heartbeat_interval: settings.heartbeat_interval,
            heartbeat_timeout: settings.heartbeat_timeout,
        })
    }

    /// Serves agents and operators on `listener` until `shutdown` is cancelled.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), StartError> {
        let epoch = epoch::take_next(&self.state_dir).map_err(|detail| StartError::StateDir {
            path: self.state_dir.clone(),
            detail,
        })?;
        let server_config = self.tls.server_config()?;
        let trust_domain = self.tls.identity().trust_domain().to_string();
        let fleet = FleetHandle::spawn(
            self.inventory.clone(),
            self.heartbeat_timeout,
            shutdown.clone(),
        );
        let store = store::Store::open(&self.state_dir).map_err(|e| StartError::StateDir {
            path: self.state_dir.clone(),
            detail: e.to_string(),
        })?;
        let runs = runs::RunsHandle::spawn(
            store,
            self.inventory.clone(),
            fleet.clone(),
            epoch,
            shutdown.clone(),
        );
        let shared = Arc::new(Shared::new(
            self.inventory,
            fleet,
            runs,
            epoch,
            self.heartbeat_interval,
            self.heartbeat_timeout,
            shutdown.clone(),
        ));
        let agents = AgentServiceServer::with_interceptor(
            AgentService {
                shared: shared.clone(),
            },
            require_role(Role::Agent, trust_domain.clone(), "agent"),
        );
        let operators = OperatorServiceServer::with_interceptor(
            OperatorService { shared },
            require_role(Role::Operator, trust_domain.clone(), "operator"),
        );
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Serve(e.to_string()))?;
        tracing::info!(%addr, epoch, trust_domain = %trust_domain, "listening on {addr}");
        let incoming = fleet_proto::transport::tls_incoming(listener, server_config);
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .add_service(agents)
            .add_service(operators)
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled())
            .await
            .map_err(|e| StartError::Serve(fleet_proto::transport::describe_chain(&e)))?;
        tracing::info!("coordinator stopped");
        Ok(())
    }
}
