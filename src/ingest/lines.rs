//! The lines of hand-written JSON-lines files (labels, model updates, marks).

/// The lines of a hand-written JSON-lines file (labels, model updates, marks), trimmed, with
/// their 1-based numbers; blank lines and `#` comments are left out.
pub fn data_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, line)| (i + 1, line.trim())).filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
}
