//! Text from the network made safe to print: one home for the sanitiser every host and plugin
//! uses before a name, label or server message reaches a terminal or a log line.

/// `s` with every control character (C0, DEL, C1: escapes, carriage returns, new lines) and
/// every bidirectional override shown as `\u{..}`, so it cannot move the cursor, recolour the
/// terminal or forge a line; at most `max` characters are kept (an ellipsis marks the cut).
pub fn for_terminal(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for (n, c) in s.chars().enumerate() {
        if n == max {
            out.push('…');
            break;
        }
        let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// [`for_terminal`] with the length bound used for one line of output.
pub fn line(s: &str) -> String {
    for_terminal(s, 400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_fake_lines_are_shown_not_obeyed() {
        assert_eq!(line("plain name.iso"), "plain name.iso");
        assert_eq!(line("a\x1b[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(line("x\r\ndone: fake"), "x\\u{d}\\u{a}done: fake");
        assert_eq!(line("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(line("abc\u{202e}gpj.exe"), "abc\\u{202e}gpj.exe");
        assert_eq!(for_terminal("abcdef", 3), "abc…");
        assert_eq!(line("naïve 日本"), "naïve 日本");
    }
}
