//! `fleetctl certs init` and `fleetctl certs issue` (SPEC §7, §8): the fleet's CA and the certificates
//! that name each process in a URI SAN. Keys are written readable by the owner only, and nothing
//! existing is overwritten unless `--force` says so.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use fleet_proto::identity::PeerIdentity;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::error::{CliError, Result};

pub(crate) const DEFAULT_TRUST_DOMAIN: &str = "ssofleet.local";
const CA_DAYS: i64 = 3650;

/// What one certificate is for.
enum Holder<'a> {
    Coordinator { sans: &'a [String] },
    Agent(&'a str),
    Operator(&'a str),
}

fn usage(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(e.to_string())
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for clocks that disagree a little.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

/// Files to write: (name, content, is a private key).
type Outputs = Vec<(&'static str, String, bool)>;

fn write_all(out: &Path, files: &Outputs, force: bool) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out)
        .map_err(|e| usage(format!("{}: cannot create: {e}", out.display())))?;
    if !force {
        let existing: Vec<String> = files
            .iter()
            .map(|(name, _, _)| out.join(name))
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            return Err(usage(format!(
                "refusing to overwrite {} (pass --force to replace them)",
                existing.join(", ")
            )));
        }
    }
    let mut written = Vec::new();
    for (name, content, secret) in files {
        let path = out.join(name);
        write_file(&path, content, *secret)
            .map_err(|e| usage(format!("{}: cannot write: {e}", path.display())))?;
        written.push(path);
    }
    Ok(written)
}

fn write_file(path: &Path, content: &str, secret: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    if secret {
        // An existing file keeps its old mode on open: tighten it.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    file.write_all(content.as_bytes())?;
    file.sync_all()
}

fn leaf(holder: &Holder<'_>, trust_domain: &str, days: i64) -> Result<CertificateParams> {
    let (identity, common_name) = match holder {
        Holder::Coordinator { .. } => (
            PeerIdentity::coordinator(trust_domain),
            "ssofleet coordinator".to_string(),
        ),
        Holder::Agent(node) => (
            PeerIdentity::agent(trust_domain, node),
            format!("ssofleet agent {node}"),
        ),
        Holder::Operator(name) => (
            PeerIdentity::operator(trust_domain, name),
            format!("ssofleet operator {name}"),
        ),
    };
    let identity = identity.map_err(usage)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(identity.uri().try_into().map_err(usage)?)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    match holder {
        Holder::Coordinator { sans } => {
            for san in *sans {
                let san = san.trim();
                params.subject_alt_names.push(match san.parse::<IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(san.try_into().map_err(|e| {
                        usage(format!(
                            "--san {san:?} is not a host name or IP address: {e}"
                        ))
                    })?),
                });
            }
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        }
        Holder::Agent(_) | Holder::Operator(_) => {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    Ok(params)
}

fn sign(params: &CertificateParams, issuer: &Issuer<'_, KeyPair>) -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(usage)?;
    let cert = params.signed_by(&key, issuer).map_err(usage)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// `certs init`: a CA, a coordinator certificate and an operator certificate.
pub(crate) fn init(
    out: &Path,
    trust_domain: &str,
    sans: &[String],
    operator: &str,
    days: i64,
    force: bool,
) -> Result<Vec<PathBuf>> {
    let td_check = PeerIdentity::coordinator(trust_domain).map_err(usage)?;
    let trust_domain = td_check.trust_domain().to_string();
    let mut ca = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    // A distinct name per CA: two fleets' CAs must not look like one another to a verifier.
    let made = time::OffsetDateTime::now_utc();
    dn.push(
        DnType::CommonName,
        format!(
            "ssofleet CA ({trust_domain}) {}-{:04x}",
            made.unix_timestamp(),
            fastrand::u16(..)
        ),
    );
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // The CA names its trust domain, so that `certs issue` needs nothing else.
    ca.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{trust_domain}")
            .try_into()
            .map_err(usage)?,
    )];
    validity(&mut ca, CA_DAYS);
    let ca_key = KeyPair::generate().map_err(usage)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(usage)?;
    let ca_pem = ca_cert.pem();
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca, ca_key);

    let default_sans = ["localhost".to_string(), "127.0.0.1".to_string()];
    let sans = if sans.is_empty() {
        &default_sans[..]
    } else {
        sans
    };
    let (coord_pem, coord_key) = sign(
        &leaf(&Holder::Coordinator { sans }, &trust_domain, days)?,
        &issuer,
    )?;
    let (op_pem, op_key) = sign(
        &leaf(&Holder::Operator(operator), &trust_domain, days)?,
        &issuer,
    )?;
    write_all(
        out,
        &vec![
            ("ca.pem", ca_pem, false),
            ("ca-key.pem", ca_key_pem, true),
            ("coordinator.pem", coord_pem, false),
            ("coordinator-key.pem", coord_key, true),
            ("operator.pem", op_pem, false),
            ("operator-key.pem", op_key, true),
        ],
        force,
    )
}

/// Whom `certs issue` makes a certificate for.
pub(crate) enum IssueFor<'a> {
    Agent(&'a str),
    Operator(&'a str),
}

/// `certs issue`: one more certificate, signed by the CA in `ca_dir`.
pub(crate) fn issue(
    out: &Path,
    ca_dir: &Path,
    who: IssueFor<'_>,
    days: i64,
    force: bool,
) -> Result<Vec<PathBuf>> {
    let ca_path = ca_dir.join("ca.pem");
    let ca_key_path = ca_dir.join("ca-key.pem");
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => usage(format!("{}: file not found", p.display())),
            _ => usage(format!("{}: cannot read: {e}", p.display())),
        })
    };
    let ca_pem = read(&ca_path)?;
    let ca_key = KeyPair::from_pem(&read(&ca_key_path)?).map_err(|e| {
        usage(format!(
            "{}: not a usable private key: {e}",
            ca_key_path.display()
        ))
    })?;
    let trust_domain =
        ca_trust_domain(&ca_pem).map_err(|e| usage(format!("{}: {e}", ca_path.display())))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| {
        usage(format!(
            "{}: not a usable CA certificate: {e}",
            ca_path.display()
        ))
    })?;
    let (holder, stem) = match who {
        IssueFor::Agent(node) => (Holder::Agent(node), "agent"),
        IssueFor::Operator(name) => (Holder::Operator(name), "operator"),
    };
    let (pem, key) = sign(&leaf(&holder, &trust_domain, days)?, &issuer)?;
    let (cert_name, key_name) = match stem {
        "agent" => ("agent.pem", "agent-key.pem"),
        _ => ("operator.pem", "operator-key.pem"),
    };
    // Copying ca.pem over an identical one is no loss; anything else needs --force.
    let same_ca =
        std::fs::read_to_string(out.join("ca.pem")).is_ok_and(|existing| existing == ca_pem);
    let mut files: Outputs = vec![(cert_name, pem, false), (key_name, key, true)];
    if !same_ca {
        files.insert(0, ("ca.pem", ca_pem, false));
    }
    write_all(out, &files, force)
}

/// The trust domain a CA certificate names in its `spiffe://<td>` URI SAN.
fn ca_trust_domain(ca_pem: &str) -> Result<String, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    let (_, cert) = X509Certificate::from_der(&der)
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let sans = cert.subject_alternative_name().map_err(|e| e.to_string())?;
    sans.iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .find_map(|name| match name {
            GeneralName::URI(uri) => uri.strip_prefix("spiffe://").map(|td| td.trim_end_matches('/').to_string()),
            _ => None,
        })
        .filter(|td| !td.is_empty() && !td.contains('/'))
        .ok_or_else(|| "the CA certificate names no trust domain (a spiffe://<trust-domain> URI SAN); was it made by `fleetctl certs init`?".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::identity::Role;
    use fleet_proto::tls::{TlsFiles, TlsMaterial};

    #[test]
    fn init_and_issue_make_loadable_material_with_identities() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        init(&ca_dir, "corp.example", &[], "alice", 365, false).unwrap();
        let coordinator =
            TlsMaterial::load(&TlsFiles::in_dir(&ca_dir, "coordinator"), Role::Coordinator)
                .unwrap();
        assert_eq!(
            coordinator.identity().uri(),
            "spiffe://corp.example/coordinator"
        );
        let operator =
            TlsMaterial::load(&TlsFiles::in_dir(&ca_dir, "operator"), Role::Operator).unwrap();
        assert_eq!(operator.identity().operator_name(), Some("alice"));

        let agent_dir = dir.path().join("agent");
        let written = issue(
            &agent_dir,
            &ca_dir,
            IssueFor::Agent("SSO-DEV-01"),
            30,
            false,
        )
        .unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["ca.pem", "agent.pem", "agent-key.pem"]);
        let agent = TlsMaterial::load(&TlsFiles::in_dir(&agent_dir, "agent"), Role::Agent).unwrap();
        assert_eq!(
            agent.identity().uri(),
            "spiffe://corp.example/agent/sso-dev-01"
        );

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(agent_dir.join("agent-key.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        // Nothing is overwritten without --force.
        let e = init(&ca_dir, "corp.example", &[], "alice", 365, false).unwrap_err();
        assert!(e.to_string().contains("refusing to overwrite"), "{e}");
        let e = issue(
            &agent_dir,
            &ca_dir,
            IssueFor::Agent("sso-dev-01"),
            30,
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("agent.pem"), "{e}");
        issue(&agent_dir, &ca_dir, IssueFor::Agent("sso-dev-01"), 30, true).unwrap();
    }

    #[test]
    fn bad_names_and_missing_ca_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let e = issue(dir.path(), dir.path(), IssueFor::Agent("n1"), 30, false).unwrap_err();
        assert!(e.to_string().ends_with("ca.pem: file not found"), "{e}");
        init(dir.path(), "t.example", &[], "admin", 30, false).unwrap();
        let e = issue(
            &dir.path().join("x"),
            dir.path(),
            IssueFor::Agent("bad name"),
            30,
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("node name"), "{e}");
    }
}
