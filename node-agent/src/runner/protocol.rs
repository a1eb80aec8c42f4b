//! The line protocol of a configured command's standard output (SPEC §6): `::progress:: <0-100>
//! <message>`, `::output:: <key>=<value>`, anything else is log output.

use super::Report;

/// Parses one line of standard output.
pub fn parse_line(line: &str) -> Report {
    if let Some(rest) = line.strip_prefix("::progress::") {
        let rest = rest.trim_start();
        let (number, message) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        if let Some(percent) = number.parse::<u32>().ok().filter(|p| *p <= 100) {
            return Report::Progress {
                percent,
                message: message.trim().to_string(),
            };
        }
    } else if let Some((key, value)) = line
        .strip_prefix("::output::")
        .and_then(|rest| rest.trim_start().split_once('='))
        .filter(|(key, _)| !key.trim().is_empty())
    {
        return Report::Output {
            key: key.trim().to_string(),
            value: value.trim_end().to_string(),
        };
    }
    Report::Stdout(line.to_string())
}
