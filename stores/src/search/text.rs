//! The text rules both stores implement, and the analyzer that defines a "word".
//!
//! A word is a run of letters or digits, lowercased and folded to ASCII (`Café` →
//! `cafe`). A query word of fewer than 5 letters must match a word exactly; 5–8 letters
//! within one edit; 9 or more within two. An edit is an insertion, a deletion, a
//! substitution or a swap of two adjacent letters (optimal string alignment distance).
//! The last query word also matches any word it is a prefix of (exactly, no edits), so
//! typing `cera` finds `ceramic`. Every query word must match a word of the title or
//! of the description.

use tantivy::tokenizer::{
    AsciiFoldingFilter, LowerCaser, RemoveLongFilter, SimpleTokenizer, TextAnalyzer, TokenStream,
};

/// The analyzer name registered in the tantivy index.
pub const ANALYZER: &str = "souk_text";

/// Tokens of this many bytes or more (before folding) are not indexed, so a query word
/// that long can never match: [`has_unindexed_word`].
pub const MAX_TOKEN_BYTES: usize = 40;

/// The analyzer: simple word split, drop over-long tokens, lowercase, ASCII folding.
pub fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(MAX_TOKEN_BYTES))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build()
}

/// One analysed word with its byte offsets in the original text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub text: String,
    pub from: usize,
    pub to: usize,
}

/// The analysed words of `text`, with offsets.
pub fn tokens(text: &str) -> Vec<Word> {
    thread_local! {
        // Built once per thread: every highlighted hit analyses its title and description.
        static ANALYZER: std::cell::RefCell<TextAnalyzer> = std::cell::RefCell::new(analyzer());
    }
    ANALYZER.with_borrow_mut(|analyzer| {
        let mut stream = analyzer.token_stream(text);
        let mut out = Vec::new();
        while stream.advance() {
            let t = stream.token();
            out.push(Word { text: t.text.clone(), from: t.offset_from, to: t.offset_to });
        }
        out
    })
}

/// The analysed words of a query, in order.
pub fn words(query: &str) -> Vec<String> {
    tokens(query).into_iter().map(|w| w.text).collect()
}

/// Whether `query` has a word the analyzer drops for its length. Every query word must
/// match, and such a word is in no document (dropped there too), so the query matches
/// nothing — without this check, the word would just vanish and a query of only such
/// words would match everything, like a blank one.
pub fn has_unindexed_word(query: &str) -> bool {
    let mut split = TextAnalyzer::from(SimpleTokenizer::default());
    let mut stream = split.token_stream(query);
    while stream.advance() {
        if stream.token().text.len() >= MAX_TOKEN_BYTES {
            return true;
        }
    }
    false
}

/// Edits a query word may be away from an indexed word.
pub fn max_edits(word: &str) -> u8 {
    match word.chars().count() {
        0..=4 => 0,
        5..=8 => 1,
        _ => 2,
    }
}

/// One query word, ready to match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryWord {
    pub text: String,
    pub max_edits: u8,
    /// The last word also matches as a prefix.
    pub prefix: bool,
}

/// The query words of `query` with their rules.
pub fn query_words(query: &str) -> Vec<QueryWord> {
    let words = words(query);
    let last = words.len().saturating_sub(1);
    words
        .into_iter()
        .enumerate()
        .map(|(i, text)| QueryWord { max_edits: max_edits(&text), prefix: i == last, text })
        .collect()
}

impl QueryWord {
    /// Whether an analysed document word matches this query word.
    pub fn matches(&self, word: &str) -> bool {
        (self.prefix && word.starts_with(self.text.as_str()))
            || osa_distance(&self.text, word, self.max_edits).is_some()
    }
}

/// Optimal string alignment distance between `a` and `b` if it is at most `max`.
///
/// Called for every word of every highlighted hit against every query word, so it
/// allocates nothing for words of up to [`STACK_CHARS`] characters (every indexed word:
/// they are under [`MAX_TOKEN_BYTES`]) and answers equal words and words whose lengths
/// differ by more than `max` without the table.
pub fn osa_distance(a: &str, b: &str, max: u8) -> Option<u8> {
    if a == b {
        return Some(0);
    }
    if max == 0 {
        return None;
    }
    let (la, lb) = (a.chars().count(), b.chars().count());
    if la.abs_diff(lb) > usize::from(max) {
        return None;
    }
    if la <= STACK_CHARS && lb <= STACK_CHARS {
        let (mut ca, mut cb) = (['\0'; STACK_CHARS], ['\0'; STACK_CHARS]);
        for (slot, c) in ca.iter_mut().zip(a.chars()) {
            *slot = c;
        }
        for (slot, c) in cb.iter_mut().zip(b.chars()) {
            *slot = c;
        }
        let mut rows = [0usize; 3 * (STACK_CHARS + 1)];
        osa_table(&ca[..la], &cb[..lb], max, &mut rows)
    } else {
        let (ca, cb): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
        let mut rows = vec![0usize; 3 * (lb + 1)];
        osa_table(&ca, &cb, max, &mut rows)
    }
}

/// Longest word [`osa_distance`] compares without allocating.
pub const STACK_CHARS: usize = 48;

/// The dynamic programme over three rows (two back, for transpositions) held in `rows`
/// (at least `3 × (b.len() + 1)` long).
fn osa_table(a: &[char], b: &[char], max: u8, rows: &mut [usize]) -> Option<u8> {
    let width = b.len() + 1;
    let (prev2, rest) = rows.split_at_mut(width);
    let (prev, rest) = rest.split_at_mut(width);
    let cur = &mut rest[..width];
    let (mut prev2, mut prev, mut cur) = (prev2, prev, cur);
    for (j, cell) in prev.iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(prev2[j - 2] + 1);
            }
            cur[j] = d;
        }
        std::mem::swap(&mut prev2, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    let d = prev[b.len()];
    (d <= usize::from(max)).then(|| u8::try_from(d).unwrap_or(u8::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_lowercased_and_folded() {
        assert_eq!(words("Café CRÈME, mug-350ml"), ["cafe", "creme", "mug", "350ml"]);
    }

    #[test]
    fn edit_budget_follows_word_length() {
        assert_eq!(max_edits("mugs"), 0);
        assert_eq!(max_edits("kettle"), 1);
        assert_eq!(max_edits("chocolate"), 2);
        assert_eq!(max_edits("teapots"), 1);
        assert_eq!(max_edits("stainless"), 2);
    }

    #[test]
    fn transposition_is_one_edit() {
        assert_eq!(osa_distance("ketlte", "kettle", 1), Some(1));
        assert_eq!(osa_distance("kettle", "kettle", 0), Some(0));
        assert_eq!(osa_distance("kettel", "kettle", 1), Some(1));
        assert_eq!(osa_distance("ktetel", "kettle", 1), None);
        assert_eq!(osa_distance("ktetel", "kettle", 2), Some(2));
    }

    /// The textbook table, allocating, as [`osa_distance`] was first written.
    fn reference(a: &str, b: &str, max: u8) -> Option<u8> {
        let a: Vec<char> = a.chars().collect();
        let b: Vec<char> = b.chars().collect();
        let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
        for (i, row) in d.iter_mut().enumerate() {
            row[0] = i;
        }
        for (j, cell) in d[0].iter_mut().enumerate() {
            *cell = j;
        }
        for i in 1..=a.len() {
            for j in 1..=b.len() {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                let mut v = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    v = v.min(d[i - 2][j - 2] + 1);
                }
                d[i][j] = v;
            }
        }
        let v = d[a.len()][b.len()];
        (v <= usize::from(max)).then(|| u8::try_from(v).unwrap_or(u8::MAX))
    }

    #[test]
    fn the_allocation_free_distance_agrees_with_the_textbook_table() {
        // Short words over a small alphabet (many near misses), non-ASCII letters, and
        // words too long for the stack buffers.
        let alphabet: Vec<char> = "abcdeé".chars().collect();
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut pairs: Vec<(String, String)> = Vec::new();
        for _ in 0..20_000 {
            let (la, lb) = (next(9), next(9));
            let a: String = (0..la).map(|_| alphabet[next(alphabet.len())]).collect();
            let b: String = (0..lb).map(|_| alphabet[next(alphabet.len())]).collect();
            pairs.push((a, b));
        }
        let long = "x".repeat(STACK_CHARS + 3);
        pairs.push((long.clone(), format!("{long}y")));
        pairs.push((format!("ab{long}"), format!("ba{long}")));
        pairs.push((long.clone(), "x".repeat(STACK_CHARS)));
        for (a, b) in &pairs {
            for max in 0..=3 {
                assert_eq!(osa_distance(a, b, max), reference(a, b, max), "{a:?} {b:?} {max}");
            }
        }
    }

    #[test]
    fn last_word_is_a_prefix() {
        let q = query_words("blue cera");
        assert!(!q[0].prefix && q[1].prefix);
        assert!(q[1].matches("ceramic"));
        assert!(!q[0].matches("bluest"));
    }
}
