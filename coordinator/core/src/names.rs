//! Names shared by the coordinator and the agents: the characters a node, environment or operator
//! name may use, comparing server names as ESSO records them, and the text of a secret file.

/// Whether `name` may name a node, an environment or an operator: letters, digits, `-`, `_` and
/// `.`, starting with a letter or digit, at most 253 bytes (a DNS name's length).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Whether two names are the same server: case-insensitive, a trailing dot ignored, and a short
/// (NetBIOS) name matches the first label of an FQDN (ESSO and SQL Server may record either). An
/// address is compared whole: `10.0.0.1` is not `10`.
pub fn same_server(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.trim().trim_end_matches('.').to_ascii_lowercase();
    let (a, b) = (norm(a), norm(b));
    if a.is_empty() || b.is_empty() {
        return false;
    }
    if a == b {
        return true;
    }
    if a.parse::<std::net::IpAddr>().is_ok() || b.parse::<std::net::IpAddr>().is_ok() {
        return false;
    }
    let short = |s: &str| !s.contains('.');
    let first = |s: &str| s.split('.').next().unwrap_or_default().to_string();
    (short(&a) || short(&b)) && first(&a) == first(&b)
}

/// The secret a password file holds: without its line end, and without the byte order mark Windows
/// editors and PowerShell's UTF8 encoding put first.
pub fn secret_text(file_text: &str) -> &str {
    file_text
        .trim_start_matches('\u{feff}')
        .trim_end_matches(['\r', '\n'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_and_secret_text() {
        assert!(same_server("SSO-DEV-01", "sso-dev-01.corp.example."));
        assert!(!same_server("a.corp.example", "a.other.example"));
        assert!(!same_server("10.0.0.1", "10"));
        assert!(same_server("DSITEAMSRV", "dsiteamsrv"));
        assert!(!same_server("sso-dev-02", "sso-dev-01.corp.example"));
        assert!(!same_server("", ""));
        assert!(!same_server("", ""));
        assert_eq!(secret_text("\u{feff}pw 1\r\n"), "pw 1");
        assert_eq!(secret_text("pw\n\n"), "pw");
    }
}
