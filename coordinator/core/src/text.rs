//! How a message shows text it did not write: [`quote`], shortened, so that an error never sends a
//! large input back (the inventory's names and the operator API's refusals alike).

/// How much of an input an error message shows, in bytes of its escaped form.
const QUOTED: usize = 48;

/// `input` for an error message: in quotes with control characters escaped, and when long, its
/// first few characters and its length: `"aaaa…" (1048576 bytes)`.
pub fn quote(input: &str) -> String {
    let mut shown = String::new();
    for c in input.chars() {
        let escaped = c.escape_debug().to_string();
        if shown.len() + escaped.len() > QUOTED {
            return format!("\"{shown}…\" ({} bytes)", input.len());
        }
        shown.push_str(&escaped);
    }
    format!("\"{shown}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_input_is_quoted_short_and_a_short_one_whole() {
        assert_eq!(quote("m1"), "\"m1\"");
        assert_eq!(quote("a\nb"), "\"a\\nb\"");
        let huge = "a".repeat(1 << 20);
        let quoted = quote(&huge);
        assert_eq!(quoted, format!("\"{}…\" (1048576 bytes)", "a".repeat(48)));
        // Escapes count: a megabyte of control characters is as short.
        assert!(quote(&"\u{1}".repeat(1 << 20)).len() < 80);
        // Never cut inside a character.
        assert!(quote(&"é".repeat(100)).starts_with("\"éé"));
    }
}
