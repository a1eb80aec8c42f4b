//! rustls configurations for ssofleet's mutual TLS (SPEC §3), built from PEM files.
//!
//! Every process holds a CA bundle, its own certificate and its private key. [`TlsMaterial::load`]
//! reads and checks all three once, with errors that name the file and the problem; the server and
//! client configurations are then built from it. The trust domain is the one named by the process's own
//! certificate, so no separate setting can disagree with it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};

use crate::identity::{IdentityError, PeerIdentity, Role};

mod words;
pub use words::{explain, explain_to_client};

/// The three PEM files of one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// The conventional names in a TLS directory (SPEC §7, §8): `ca.pem`, `<stem>.pem`, `<stem>-key.pem`.
    pub fn in_dir(dir: &Path, stem: &str) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}-key.pem")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: file not found", path.display())]
    Missing { path: PathBuf },
    #[error("{}: cannot read: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a PEM file ({detail})", path.display())]
    NotPem { path: PathBuf, detail: String },
    #[error("{}: holds no PEM CERTIFICATE block", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: holds no private key (a PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block)", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: unusable private key: {detail}", path.display())]
    BadKey { path: PathBuf, detail: String },
    #[error("{}: the private key does not match the certificate {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: unusable CA certificate: {detail}", path.display())]
    BadCa { path: PathBuf, detail: String },
    #[error("{}: {source}", path.display())]
    Identity {
        path: PathBuf,
        source: IdentityError,
    },
    #[error("{}: the certificate names {found}, but this process needs a {expected} certificate", path.display())]
    WrongRole {
        path: PathBuf,
        found: String,
        expected: Role,
    },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// CA roots, own certificate chain and key, and the identity the certificate names; all checked.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    roots: Arc<RootCertStore>,
    key: Arc<CertifiedKey>,
    identity: PeerIdentity,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => TlsError::Missing {
            path: path.to_path_buf(),
        },
        _ => TlsError::Unreadable {
            path: path.to_path_buf(),
            source,
        },
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::NotPem {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(if looks_like_pem(&pem) {
            TlsError::NoCertificate {
                path: path.to_path_buf(),
            }
        } else {
            TlsError::NotPem {
                path: path.to_path_buf(),
                detail: "no -----BEGIN line".into(),
            }
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    if !looks_like_pem(&pem) {
        return Err(TlsError::NotPem {
            path: path.to_path_buf(),
            detail: "no -----BEGIN line".into(),
        });
    }
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_path_buf(),
        },
        other => TlsError::NotPem {
            path: path.to_path_buf(),
            detail: other.to_string(),
        },
    })
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

impl TlsMaterial {
    /// Reads and checks the three files; `role` is the role this process's certificate must name.
    pub fn load(files: &TlsFiles, role: Role) -> Result<Self, TlsError> {
        let material = Self::load_any_role(files)?;
        if material.identity.role() != role {
            return Err(TlsError::WrongRole {
                path: files.cert.clone(),
                found: material.identity.uri(),
                expected: role,
            });
        }
        Ok(material)
    }

    /// Reads and checks the three files, whatever role the certificate names. For clients whose server
    /// is the authority on who may call what (fleetctl: the coordinator refuses a wrong role, exit 3).
    pub fn load_any_role(files: &TlsFiles) -> Result<Self, TlsError> {
        let ca_certs = read_certs(&files.ca)?;
        let mut roots = RootCertStore::empty();
        for cert in ca_certs {
            roots.add(cert).map_err(|e| TlsError::BadCa {
                path: files.ca.clone(),
                detail: e.to_string(),
            })?;
        }
        let chain = read_certs(&files.cert)?;
        let key_der = read_key(&files.key)?;
        let key =
            CertifiedKey::from_der(chain.clone(), key_der, &provider()).map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                    cert: files.cert.clone(),
                    key: files.key.clone(),
                },
                other => TlsError::BadKey {
                    path: files.key.clone(),
                    detail: other.to_string(),
                },
            })?;
        let identity =
            PeerIdentity::from_certificate_der(&chain[0]).map_err(|source| TlsError::Identity {
                path: files.cert.clone(),
                source,
            })?;
        Ok(Self {
            roots: Arc::new(roots),
            key: Arc::new(key),
            identity,
        })
    }

    /// The identity this process's own certificate names.
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }

    /// The coordinator's server configuration: TLS 1.2+, HTTP/2, a client certificate issued by the
    /// fleet CA required. Which roles may use which service is decided per request, from the identity.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
                self.key.clone(),
            )));
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// A client configuration that presents this process's certificate and accepts only a server that
    /// chains to the fleet CA, matches the host name dialled, and names `expected` in its URI SAN.
    pub fn client_config(&self, expected: PeerIdentity) -> Result<Arc<ClientConfig>, TlsError> {
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            self.roots.clone(),
            provider(),
        )
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
        let verifier = Arc::new(ExpectedPeerVerifier { inner, expected });
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
                self.key.clone(),
            )));
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// The coordinator identity in this process's trust domain.
    pub fn coordinator_identity(&self) -> PeerIdentity {
        // The trust domain was validated when the own identity was parsed.
        PeerIdentity::coordinator(self.identity.trust_domain())
            .unwrap_or_else(|_| self.identity.clone())
    }
}

/// Standard WebPKI chain and host name checks, plus: the certificate must name the expected identity.
#[derive(Debug)]
struct ExpectedPeerVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    expected: PeerIdentity,
}

/// Why a server certificate that chains to the CA was still refused.
#[derive(Debug, thiserror::Error)]
#[error("the server's certificate names {found}, expected {expected}")]
pub struct UnexpectedPeer {
    pub found: String,
    pub expected: String,
}

impl ServerCertVerifier for ExpectedPeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let found = match PeerIdentity::from_certificate_der(end_entity) {
            Ok(id) if id == self.expected => return Ok(ServerCertVerified::assertion()),
            Ok(id) => id.uri(),
            Err(e) => e.to_string(),
        };
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            rustls::OtherError(Arc::new(UnexpectedPeer {
                found,
                expected: self.expected.uri(),
            })),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pki {
        dir: tempfile::TempDir,
        ca: rcgen::Certificate,
        ca_key: rcgen::KeyPair,
        ca_params: rcgen::CertificateParams,
    }

    impl Pki {
        fn new() -> Self {
            let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let ca = ca_params.self_signed(&ca_key).unwrap();
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
            Self {
                dir,
                ca,
                ca_key,
                ca_params,
            }
        }

        fn issue(&self, stem: &str, uri: Option<&str>) -> TlsFiles {
            let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
            if let Some(uri) = uri {
                params
                    .subject_alt_names
                    .push(rcgen::SanType::URI(uri.try_into().unwrap()));
            }
            let key = rcgen::KeyPair::generate().unwrap();
            let issuer = rcgen::Issuer::from_params(&self.ca_params, &self.ca_key);
            let cert = params.signed_by(&key, &issuer).unwrap();
            let _ = &self.ca;
            std::fs::write(self.dir.path().join(format!("{stem}.pem")), cert.pem()).unwrap();
            std::fs::write(
                self.dir.path().join(format!("{stem}-key.pem")),
                key.serialize_pem(),
            )
            .unwrap();
            TlsFiles::in_dir(self.dir.path(), stem)
        }
    }

    #[test]
    fn loads_valid_material_and_reads_identity() {
        let pki = Pki::new();
        let files = pki.issue("agent", Some("spiffe://t.example/agent/n1"));
        let material = TlsMaterial::load(&files, Role::Agent).unwrap();
        assert_eq!(material.identity().node(), Some("n1"));
        assert_eq!(
            material.coordinator_identity().uri(),
            "spiffe://t.example/coordinator"
        );
        material.server_config().unwrap();
        material
            .client_config(material.coordinator_identity())
            .unwrap();
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let pki = Pki::new();
        let files = pki.issue("agent", Some("spiffe://t.example/agent/n1"));

        let missing = TlsFiles {
            cert: pki.dir.path().join("nope.pem"),
            ..files.clone()
        };
        let e = TlsMaterial::load(&missing, Role::Agent).unwrap_err();
        assert!(e.to_string().ends_with("nope.pem: file not found"), "{e}");

        let garbage = pki.dir.path().join("garbage.pem");
        std::fs::write(&garbage, "hello").unwrap();
        let e = TlsMaterial::load(
            &TlsFiles {
                cert: garbage.clone(),
                ..files.clone()
            },
            Role::Agent,
        )
        .unwrap_err();
        assert!(matches!(e, TlsError::NotPem { .. }), "{e}");
        assert!(e.to_string().contains("garbage.pem: not a PEM file"), "{e}");

        // A certificate file where the key should be.
        let e = TlsMaterial::load(
            &TlsFiles {
                key: files.cert.clone(),
                ..files.clone()
            },
            Role::Agent,
        )
        .unwrap_err();
        assert!(matches!(e, TlsError::NoKey { .. }), "{e}");

        // Another certificate's key.
        let other = pki.issue("other", Some("spiffe://t.example/agent/n2"));
        let e = TlsMaterial::load(
            &TlsFiles {
                key: other.key.clone(),
                ..files.clone()
            },
            Role::Agent,
        )
        .unwrap_err();
        assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e}");
        assert!(
            e.to_string().contains("does not match the certificate"),
            "{e}"
        );

        // No SAN identity at all.
        let plain = pki.issue("plain", None);
        let e = TlsMaterial::load(&plain, Role::Agent).unwrap_err();
        assert!(e.to_string().contains("no spiffe:// URI SAN"), "{e}");

        // The wrong role for this process.
        let e = TlsMaterial::load(&files, Role::Coordinator).unwrap_err();
        assert!(
            e.to_string()
                .contains("names spiffe://t.example/agent/n1, but this process needs a coordinator certificate"),
            "{e}"
        );
    }
}
