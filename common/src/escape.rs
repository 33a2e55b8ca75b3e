//! Text a peer sent (CLOSE reasons, certificate key IDs and principals, banners), made safe for a
//! log line or a terminal: every character that could end the line, move the cursor, start an
//! escape sequence or reorder what is shown is replaced by a visible escape, so a peer can
//! neither forge log lines nor write to the user's terminal. Pure; no I/O.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` must not reach a log or a terminal as is: control characters (C0, DEL, C1), the
/// Unicode line and paragraph separators, bidirectional controls (embeddings, overrides,
/// isolates, marks), zero-width characters and the byte order mark.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'                     // Arabic letter mark
                | '\u{200b}'..='\u{200f}'  // zero-width space/joiners, LRM, RLM
                | '\u{2028}'..='\u{202e}'  // line/paragraph separators, LRE, RLE, PDF, LRO, RLO
                | '\u{2060}'..='\u{206f}'  // word joiner, invisible operators, LRI, RLI, FSI, PDI
                | '\u{feff}' // byte order mark
        )
}

/// `text` for a log line or a terminal: `\` becomes `\\`, newline, carriage return and tab
/// become `\n`, `\r`, `\t`, other ASCII control characters `\xNN` (ESC is `\x1b`), and the
/// other characters of [`needs_escape`] `\u{NNNN}` (`\u{202e}`). Everything else is kept,
/// so ordinary text (also non-ASCII) reads as it was sent.
pub fn for_log(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c == '\\' || needs_escape(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => {
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

/// [`for_log`] of each item, joined with `sep` (certificate principals).
pub fn list_for_log<S: AsRef<str>>(items: &[S], sep: &str) -> String {
    items.iter().map(|s| for_log(s.as_ref())).collect::<Vec<_>>().join(sep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_text_is_kept_as_is() {
        for s in [
            "",
            "client shutting down",
            "idle for 300 s",
            "café – naïve 日本",
            "a'b\"c",
        ] {
            assert!(matches!(for_log(s), Cow::Borrowed(t) if t == s), "{s}");
        }
    }

    #[test]
    fn line_breaks_and_escape_sequences_become_visible() {
        assert_eq!(for_log("bye\n[fake] ERROR forged"), "bye\\n[fake] ERROR forged");
        assert_eq!(for_log("\x1b[2J\x1b]0;title\x07"), "\\x1b[2J\\x1b]0;title\\x07");
        assert_eq!(for_log("a\r\tb\0c\x7f"), "a\\r\\tb\\x00c\\x7f");
        assert_eq!(for_log("\u{9b}31m"), "\\u{9b}31m", "C1 CSI");
    }

    #[test]
    fn bidi_and_invisible_characters_become_visible() {
        assert_eq!(for_log("abc\u{202e}fdp.exe"), "abc\\u{202e}fdp.exe");
        assert_eq!(
            for_log("\u{2066}x\u{2069}\u{200f}\u{2028}\u{feff}\u{200b}"),
            "\\u{2066}x\\u{2069}\\u{200f}\\u{2028}\\u{feff}\\u{200b}"
        );
    }

    #[test]
    fn backslashes_are_doubled_so_escapes_cannot_be_faked() {
        // A peer sending the text `\n` is told apart from one sending a newline.
        assert_eq!(for_log("a\\nb"), "a\\\\nb");
        assert_ne!(for_log("a\\nb"), for_log("a\nb"));
    }

    #[test]
    fn the_output_has_no_character_that_needs_escaping() {
        let nasty: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let out = for_log(&nasty);
        assert!(!out.chars().any(needs_escape), "{out}");
        assert_eq!(list_for_log(&["a\nb", "c"], ","), "a\\nb,c");
    }
}
