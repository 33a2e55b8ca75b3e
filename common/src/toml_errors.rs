//! Positions in configuration files (TOML profiles and `sshvpnd.toml`): a byte offset (a toml
//! or serde error span, a `Spanned` value) turned into a 1-based line, and the
//! `FILE:LINE: message` form every configuration error is reported in. No TOML parsing here.

use std::path::Path;

/// The 1-based line holding byte `offset` of `text` (an offset past the end is the last line).
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The line of the start of `span`, if the error has one.
pub fn line_of_span(text: &str, span: Option<std::ops::Range<usize>>) -> Option<usize> {
    span.map(|s| line_of(text, s.start))
}

/// `FILE:LINE: message`, or `FILE: message` without a line.
pub fn located(path: &Path, line: Option<usize>, message: &str) -> String {
    match line {
        Some(l) => format!("{}:{l}: {message}", path.display()),
        None => format!("{}: {message}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_format() {
        let text = "a = 1\nb = 2\n";
        assert_eq!(line_of(text, 0), 1);
        assert_eq!(line_of(text, 6), 2);
        assert_eq!(line_of(text, 999), 3);
        assert_eq!(line_of_span(text, Some(7..8)), Some(2));
        assert_eq!(line_of_span(text, None), None);
        assert_eq!(located(Path::new("/x.toml"), Some(2), "bad"), "/x.toml:2: bad");
        assert_eq!(located(Path::new("/x.toml"), None, "bad"), "/x.toml: bad");
    }
}
