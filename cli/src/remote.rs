//! The operator's connection to the coordinator: mutual TLS with the operator certificate of
//! `--tls-dir`, accepting only a server whose certificate names the coordinator.

use std::path::PathBuf;
use std::time::Duration;

use fleet_proto::pb::operator_service_client::OperatorServiceClient;
use fleet_proto::tls::{TlsFiles, TlsMaterial};
use tonic::transport::Channel;

use crate::error::{CliError, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Remote {
    pub url: String,
    pub client: OperatorServiceClient<Channel>,
    tls_dir: Option<PathBuf>,
}

impl Remote {
    /// Connects again (the coordinator restarted, the link dropped).
    pub(crate) async fn reconnect(&mut self) -> Result<()> {
        *self = connect(&self.url, self.tls_dir.as_ref()).await?;
        Ok(())
    }
}

pub(crate) async fn connect(coordinator: &str, tls_dir: Option<&PathBuf>) -> Result<Remote> {
    let tls_dir = tls_dir.ok_or_else(|| {
        CliError::Usage(
            "no TLS directory: pass --tls-dir DIR or set FLEET_TLS_DIR (it holds ca.pem, operator.pem, operator-key.pem)"
                .into(),
        )
    })?;
    // The coordinator decides who may use the operator service (a wrong role is its refusal, exit 3);
    // here the files only have to be readable, PEM, and a matching key and certificate.
    let material = TlsMaterial::load_any_role(&TlsFiles::in_dir(tls_dir, "operator"))
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let config = material
        .client_config(material.coordinator_identity())
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let channel = fleet_proto::transport::connect(coordinator, config, CONNECT_TIMEOUT)
        .await
        .map_err(|e| match e {
            fleet_proto::transport::ConnectError::BadUrl { .. } => CliError::Usage(e.to_string()),
            fleet_proto::transport::ConnectError::Unreachable { .. }
            | fleet_proto::transport::ConnectError::Refused { .. } => {
                CliError::Unreachable(e.to_string())
            }
        })?;
    Ok(Remote {
        url: coordinator.to_string(),
        client: OperatorServiceClient::new(channel),
        tls_dir: Some(tls_dir.clone()),
    })
}
