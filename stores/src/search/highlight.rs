//! Highlighted snippets, computed from the stored text with the rules of [`super::text`].
//!
//! Both stores highlight here rather than with their engine's highlighter, because the
//! engines do not see which words a fuzzy or prefix query matched the same way (tantivy's
//! `SnippetGenerator` only marks exact terms), and one implementation gives both stores
//! the same answer.

use super::text::{QueryWord, tokens};

/// Longest description snippet, in characters (roughly).
pub const DESCRIPTION_WINDOW: usize = 160;

/// The whole `text`, HTML-escaped, matched words wrapped in `<mark>…</mark>`.
pub fn highlight_all(text: &str, query: &[QueryWord]) -> String {
    let marks = matched_ranges(text, query);
    render(text, 0, text.len(), &marks)
}

/// A window of about [`DESCRIPTION_WINDOW`] characters of `text` around its first match
/// (or its start), HTML-escaped with matches marked, `…` where cut.
pub fn snippet(text: &str, query: &[QueryWord]) -> String {
    let marks = matched_ranges(text, query);
    let anchor = marks.first().map_or(0, |(from, _)| *from);
    // Start a little before the first match, on a char boundary and after a space.
    let mut start = back_chars(text, anchor, DESCRIPTION_WINDOW / 4);
    if start > 0
        && let Some(space) = text[start..anchor].find(' ')
    {
        start += space + 1;
    }
    let mut end = forward_chars(text, start, DESCRIPTION_WINDOW);
    if end < text.len()
        && let Some(space) = text[start..end].rfind(' ')
        && start + space > anchor
    {
        end = start + space;
    }
    let mut out = String::new();
    if start > 0 {
        out.push('…');
    }
    out.push_str(&render(text, start, end, &marks));
    if end < text.len() {
        out.push('…');
    }
    out
}

fn matched_ranges(text: &str, query: &[QueryWord]) -> Vec<(usize, usize)> {
    if query.is_empty() {
        return Vec::new();
    }
    tokens(text)
        .into_iter()
        .filter(|w| query.iter().any(|q| q.matches(&w.text)))
        .map(|w| (w.from, w.to))
        .collect()
}

fn render(text: &str, start: usize, end: usize, marks: &[(usize, usize)]) -> String {
    let mut out = String::with_capacity(end - start + 16);
    let mut at = start;
    for &(from, to) in marks {
        if to <= start || from >= end {
            continue;
        }
        let (from, to) = (from.max(start), to.min(end));
        escape_into(&mut out, &text[at..from]);
        out.push_str("<mark>");
        escape_into(&mut out, &text[from..to]);
        out.push_str("</mark>");
        at = to;
    }
    escape_into(&mut out, &text[at..end]);
    out
}

fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// The byte offset `n` characters before `at` (or 0).
fn back_chars(text: &str, at: usize, n: usize) -> usize {
    text[..at].char_indices().rev().nth(n.saturating_sub(1)).map_or(0, |(i, _)| i)
}

/// The byte offset `n` characters after `at` (or the end).
fn forward_chars(text: &str, at: usize, n: usize) -> usize {
    text[at..].char_indices().nth(n).map_or(text.len(), |(i, _)| at + i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::text::query_words;

    #[test]
    fn marks_fuzzy_and_prefix_matches_and_escapes_the_rest() {
        let q = query_words("ketlte stain");
        assert_eq!(
            highlight_all("Kettle <b>& Stainless", &q),
            "<mark>Kettle</mark> &lt;b&gt;&amp; <mark>Stainless</mark>"
        );
    }

    #[test]
    fn long_descriptions_are_cut_around_the_first_match() {
        let text = format!("{} teapot {}", "word ".repeat(100), "tail ".repeat(100));
        let s = snippet(&text, &query_words("teapot"));
        assert!(s.starts_with('…') && s.ends_with('…'), "{s}");
        assert!(s.contains("<mark>teapot</mark>"), "{s}");
    }
}
