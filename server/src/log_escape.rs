//! Escaping of peer-supplied text (a client's close reason, its hello's software string and
//! instance tag, key IDs and principals of certificates, user names) before it reaches the
//! daemon's log or the audit log: a peer must not forge log lines (`\n`, `\r`), drive the
//! terminal of whoever reads the log (ESC, C1 controls) or reorder what is displayed (Unicode
//! bidirectional overrides and isolates).
//!
//! Every control character (C0, DEL, C1), U+202A–U+202E and U+2066–U+2069 becomes visible text:
//! `\n`, `\r`, `\t`, `\x1b` for other ASCII controls and DEL, `\u{85}` for C1
//! controls, `\u{202e}` for the bidi characters. Everything else is kept as it is.

use std::borrow::Cow;
use std::fmt::Write as _;

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with control and bidi characters made visible (see the module documentation).
pub fn for_log(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && needs_escape(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_kept_without_a_copy() {
        assert!(matches!(for_log("bye, see you (é, 日本)"), Cow::Borrowed(_)));
        assert_eq!(for_log(""), "");
    }

    #[test]
    fn line_breaks_and_terminal_controls_become_visible() {
        assert_eq!(
            for_log("bye\nFeb 30 sshvpnd: client connected"),
            "bye\\nFeb 30 sshvpnd: client connected"
        );
        assert_eq!(for_log("a\r\nb\tc"), "a\\r\\nb\\tc");
        assert_eq!(for_log("\x1b[2J\x1b]0;owned\x07"), "\\x1b[2J\\x1b]0;owned\\x07");
        assert_eq!(for_log("\0\x7f"), "\\x00\\x7f");
        assert_eq!(for_log("\u{85}\u{9b}31m"), "\\u{85}\\u{9b}31m");
    }

    #[test]
    fn bidi_overrides_and_isolates_become_visible() {
        assert_eq!(for_log("user\u{202e}gnp.exe"), "user\\u{202e}gnp.exe");
        for c in [
            '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
        ] {
            let s = c.to_string();
            assert_eq!(for_log(&s), format!("\\u{{{:x}}}", c as u32));
        }
        assert_eq!(
            for_log("\u{2029}\u{200f}"),
            "\u{2029}\u{200f}",
            "other characters are kept"
        );
    }

    #[test]
    fn the_result_is_one_line_of_printable_text() {
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let out = for_log(&all);
        assert!(!out.chars().any(needs_escape), "{out:?}");
        assert_eq!(out.lines().count(), 1);
    }
}
