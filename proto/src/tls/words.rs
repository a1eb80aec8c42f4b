//! Words for TLS failures: [`explain`] for the coordinator's log about a caller it refused, and
//! [`explain_to_client`] for fleetctl and the agent about the coordinator, saying what to check.
//! Never a Rust error structure (`UnexpectedPeer { .. }`, `EndEntityUsedAsCa`) in front of an operator.

use rustls::{AlertDescription as Alert, CertificateError as Cert};

use super::UnexpectedPeer;

/// Why a TLS handshake with a caller failed, for the coordinator's log ("the peer" is the caller).
pub fn explain(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(Cert::UnknownIssuer | Cert::BadSignature) => {
            "the peer's certificate was not issued by this fleet's CA".into()
        }
        rustls::Error::InvalidCertificate(cert) => {
            format!("the peer's certificate {}", certificate(cert))
        }
        rustls::Error::NoCertificatesPresented => "the peer presented no certificate".into(),
        rustls::Error::AlertReceived(Alert::UnknownCA | Alert::BadCertificate) => {
            "the peer refused our certificate (not issued by its CA)".into()
        }
        rustls::Error::AlertReceived(Alert::CertificateRequired) => {
            "the peer requires a client certificate".into()
        }
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "the peer does not speak TLS (a plain HTTP client, a port check?)".into()
        }
        other => other.to_string(),
    }
}

/// Why the TLS handshake with the coordinator failed, for an operator at fleetctl or an agent's log:
/// what was wrong and what to check.
pub fn explain_to_client(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(Cert::UnknownIssuer | Cert::BadSignature) => {
            "the coordinator's certificate was not issued by the CA in ca.pem: check that ca.pem is this fleet's CA (the one `fleetctl certs init` made) and that the URL names this fleet's coordinator".into()
        }
        rustls::Error::InvalidCertificate(Cert::Other(other))
            if other.0.downcast_ref::<UnexpectedPeer>().is_some() =>
        {
            format!("{}: check that the URL names this fleet's coordinator", other.0)
        }
        rustls::Error::InvalidCertificate(
            Cert::NotValidForName | Cert::NotValidForNameContext { .. },
        ) => "the coordinator's certificate is not valid for the host name dialled: use a name it was made for, or make it again with `fleetctl certs init --san`".into(),
        rustls::Error::InvalidCertificate(cert) => format!(
            "the coordinator's certificate {}: {}",
            certificate(cert),
            match cert {
                Cert::NotValidYet | Cert::NotValidYetContext { .. } => "check the clocks of this machine and the coordinator's",
                _ => "make the coordinator's certificate again from the fleet CA (`fleetctl certs init`), and check this machine's clock",
            }
        ),
        rustls::Error::NoCertificatesPresented => {
            "the coordinator presented no certificate: check the URL".into()
        }
        rustls::Error::AlertReceived(alert) => refused_by_coordinator(*alert),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "what answered at this address does not speak TLS as the coordinator does: check the URL's host and port".into()
        }
        rustls::Error::PeerIncompatible(_) => {
            "the coordinator and this program have no TLS version or cipher suite in common".into()
        }
        other => other.to_string(),
    }
}

/// The coordinator ended the handshake with `alert`: most often, it refused this certificate.
fn refused_by_coordinator(alert: Alert) -> String {
    let refused = "the coordinator refused this certificate";
    let issue = "issue a new one with `fleetctl certs issue` from this fleet's CA";
    match alert {
        Alert::CertificateExpired => format!(
            "{refused}: it has expired, or is not valid yet; {issue}, and check this machine's clock"
        ),
        Alert::UnknownCA | Alert::DecryptError => {
            format!("{refused}: it was not issued by the coordinator's CA; {issue}")
        }
        Alert::BadCertificate => format!("{refused}: it is malformed; {issue}"),
        Alert::CertificateRevoked => format!("{refused}: it has been revoked; {issue}"),
        Alert::UnsupportedCertificate => {
            format!("{refused}: it is not a client certificate (its extended key usage); {issue}")
        }
        Alert::CertificateRequired => {
            "the coordinator requires a client certificate, and none was sent".into()
        }
        Alert::HandshakeFailure | Alert::ProtocolVersion | Alert::InsufficientSecurity => {
            "the coordinator and this program have no TLS version or cipher suite in common".into()
        }
        Alert::NoApplicationProtocol => {
            "the server at this URL does not speak gRPC over HTTP/2: check the URL".into()
        }
        Alert::AccessDenied | Alert::CertificateUnknown => {
            format!("{refused}; the coordinator's log says why")
        }
        other => {
            format!("the coordinator ended the TLS handshake (alert {other:?}); its log says why")
        }
    }
}

/// What is wrong with a certificate, after "the … certificate".
fn certificate(error: &Cert) -> String {
    match error {
        Cert::UnknownIssuer | Cert::BadSignature => "was not issued by a trusted CA".into(),
        Cert::Expired | Cert::ExpiredContext { .. } => "has expired".into(),
        Cert::NotValidYet | Cert::NotValidYetContext { .. } => "is not valid yet".into(),
        Cert::NotValidForName | Cert::NotValidForNameContext { .. } => {
            "is not valid for the host name dialled".into()
        }
        Cert::InvalidPurpose | Cert::InvalidPurposeContext { .. } => {
            "is not made for this use (its extended key usage)".into()
        }
        Cert::Revoked => "has been revoked".into(),
        Cert::BadEncoding | Cert::UnhandledCriticalExtension => {
            "is malformed, or has a critical extension this program does not know".into()
        }
        Cert::Other(other) => {
            if let Some(unexpected) = other.0.downcast_ref::<UnexpectedPeer>() {
                return format!("names {}, not {}", unexpected.found, unexpected.expected);
            }
            match other.0.downcast_ref::<webpki::Error>() {
                Some(webpki::Error::EndEntityUsedAsCa) => {
                    "was signed by a certificate that is not a CA (an end-entity certificate used as one)".into()
                }
                Some(webpki::Error::CaUsedAsEndEntity) => {
                    "is a CA's certificate, not one of its own".into()
                }
                Some(
                    webpki::Error::PathLenConstraintViolated
                    | webpki::Error::MaximumPathDepthExceeded,
                ) => "comes with a longer chain of CAs than its CA allows".into(),
                Some(webpki::Error::NameConstraintViolation) => {
                    "names what its CA may not certify (name constraints)".into()
                }
                Some(
                    webpki::Error::RequiredEkuNotFoundContext(_) | webpki::Error::EmptyEkuExtension,
                ) => "is not made for this use (its extended key usage)".into(),
                _ => format!("cannot be verified ({other})"),
            }
        }
        other => format!("is not acceptable ({other:?})"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn other(error: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
        rustls::Error::InvalidCertificate(Cert::Other(rustls::OtherError(Arc::new(error))))
    }

    #[test]
    fn refusals_are_sentences_that_say_what_to_check() {
        let cases = [
            (
                other(webpki::Error::EndEntityUsedAsCa),
                "the coordinator's certificate was signed by a certificate that is not a CA",
            ),
            (
                other(UnexpectedPeer {
                    found: "spiffe://t/operator/x".into(),
                    expected: "spiffe://t/coordinator".into(),
                }),
                "the server's certificate names spiffe://t/operator/x, expected spiffe://t/coordinator: check that the URL",
            ),
            (
                rustls::Error::InvalidCertificate(Cert::UnknownIssuer),
                "not issued by the CA in ca.pem: check that ca.pem is this fleet's CA",
            ),
            (
                rustls::Error::AlertReceived(Alert::CertificateExpired),
                "the coordinator refused this certificate: it has expired",
            ),
        ];
        for (error, expected) in cases {
            let words = explain_to_client(&error);
            assert!(words.contains(expected), "{words}");
            for raw in ["EndEntityUsedAsCa", "UnexpectedPeer", "OtherError", "Alert"] {
                assert!(!words.contains(raw), "{words}");
            }
        }
        let words = explain(&other(webpki::Error::EndEntityUsedAsCa));
        assert!(
            words
                .starts_with("the peer's certificate was signed by a certificate that is not a CA"),
            "{words}"
        );
    }
}
