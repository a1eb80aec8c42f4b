//! fleetctl's errors and their exit statuses (SPEC §7): 1 the run failed, halted or was aborted;
//! 2 bad usage or configuration; 3 the coordinator could not be reached or refused the certificate.

use std::process::ExitCode;

#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    pub(crate) fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            CliError::Failed(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Unreachable(_) => 3,
        })
    }

    /// Maps a gRPC status from the coordinator.
    pub(crate) fn from_status(status: &tonic::Status, coordinator: &str) -> Self {
        use tonic::Code;
        let message = status.message();
        match status.code() {
            Code::PermissionDenied | Code::Unauthenticated => CliError::Unreachable(format!(
                "the coordinator at {coordinator} refused this certificate: {message}"
            )),
            Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled => {
                // In TLS 1.3 the coordinator refuses a client certificate after the client has
                // finished its half of the handshake: the refusal arrives with the first call.
                if let Some(reason) =
                    std::error::Error::source(status).and_then(fleet_proto::transport::tls_refusal)
                {
                    return CliError::Unreachable(format!(
                        "the TLS handshake with {coordinator} failed: {reason}"
                    ));
                }
                let detail = std::error::Error::source(status)
                    .map(fleet_proto::transport::describe_chain)
                    .unwrap_or_else(|| message.to_string());
                CliError::Unreachable(format!(
                    "cannot reach the coordinator at {coordinator}: {detail}"
                ))
            }
            Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::Unimplemented => CliError::Usage(message.to_string()),
            _ => CliError::Failed(message.to_string()),
        }
    }
}

pub(crate) type Result<T, E = CliError> = std::result::Result<T, E>;
