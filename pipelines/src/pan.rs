//! PCI-DSS: souk stores payment tokens, never card numbers. Free-text fields are
//! checked for primary account numbers (13–19 digits passing the Luhn check, written
//! plain or in groups separated by single spaces, dashes, dots or underscores) so one
//! pasted by mistake is refused at the door.
//!
//! A number is read where it stands as a word of its own, as data-loss scanners'
//! `\b`-bounded patterns read it: digits glued to ASCII letters (`a41111111111111111f`) are part
//! of an identifier — a hex digest, a UUID without dashes, a random key — and without
//! this about one random 32-hex-digit key in five hundred "held a card number" and was
//! refused on every retry.

/// Characters that may separate the digit groups of a written card number.
fn is_separator(c: char) -> bool {
    matches!(c, ' ' | '-' | '.' | '_')
}

/// Whether the 36 bytes at the start of `bytes` are a UUID in its hyphenated form
/// (8-4-4-4-12 hex digits).
fn is_uuid(bytes: &[u8]) -> bool {
    bytes.len() >= 36
        && bytes[..36].iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Whether `text` holds a card number. A UUID is an identifier, never a card number:
/// its digit groups (8-4-4 digits can chain into 16) are not read as one — without this,
/// about one order id in a hundred "held a card number".
pub fn looks_like_pan(text: &str) -> bool {
    if text.len() >= 36 && text.bytes().any(|b| b == b'-') {
        let bytes = text.as_bytes();
        let mut masked = String::with_capacity(text.len());
        let mut i = 0;
        while i < bytes.len() {
            // A UUID standing alone (not inside a longer hex or digit run).
            let alone = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
            let ends = bytes.get(i + 36).is_none_or(|b| !b.is_ascii_alphanumeric());
            if alone && ends && is_uuid(&bytes[i..]) {
                masked.push_str("uuid");
                i += 36;
            } else {
                let c = text[i..].chars().next().unwrap_or(' ');
                masked.push(c);
                i += c.len_utf8();
            }
        }
        return scan(&without_mixed_words(&masked));
    }
    scan(&without_mixed_words(text))
}

/// `text` with each word (a run of ASCII letters and digits) that mixes both replaced
/// by one letter, so its digits are never read as a number. Only ASCII letters glue:
/// text in scripts written without spaces (`卡号4111111111111111`) keeps its numbers
/// (found in review of the first version, which read any letter as glue).
fn without_mixed_words(text: &str) -> std::borrow::Cow<'_, str> {
    let is_mixed = |word: &str| {
        word.chars().any(|c| c.is_ascii_digit()) && word.chars().any(|c| c.is_ascii_alphabetic())
    };
    if !text.split(|c: char| !c.is_ascii_alphanumeric()).any(is_mixed) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(|c: char| c.is_ascii_alphanumeric()) {
        out.push_str(&rest[..start]);
        let len = rest[start..].find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(rest.len() - start);
        let word = &rest[start..start + len];
        out.push_str(if is_mixed(word) { "w" } else { word });
        rest = &rest[start + len..];
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

fn scan(text: &str) -> bool {
    // Each run of digit groups joined by single separators, as its groups.
    let mut groups: Vec<Vec<u8>> = Vec::new();
    let mut previous_separator = false;
    for c in text.chars() {
        match c {
            '0'..='9' => {
                if previous_separator || groups.is_empty() {
                    groups.push(Vec::new());
                }
                if let Some(group) = groups.last_mut() {
                    group.push(c as u8 - b'0');
                }
                previous_separator = false;
            }
            c if is_separator(c) && !groups.is_empty() && !previous_separator => previous_separator = true,
            _ => {
                if contains_pan(&groups) {
                    return true;
                }
                groups.clear();
                previous_separator = false;
            }
        }
    }
    contains_pan(&groups)
}

/// Whether some consecutive groups of a run (the whole run, or a card number with a
/// group before or after it: `1-5500-0000-0000-0004`) make 13–19 digits passing Luhn.
/// Windows that cut through a group are not checked: inside a long plain run of digits,
/// one window in ten passes Luhn by chance.
fn contains_pan(groups: &[Vec<u8>]) -> bool {
    (0..groups.len()).any(|first| {
        let mut digits: Vec<u8> = Vec::with_capacity(19);
        for group in &groups[first..] {
            digits.extend_from_slice(group);
            if digits.len() > 19 {
                return false;
            }
            if digits.len() >= 13 && luhn(&digits) {
                return true;
            }
        }
        false
    })
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 { if d * 2 > 9 { d * 2 - 9 } else { d * 2 } } else { d }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::looks_like_pan;

    #[test]
    fn test_card_numbers_are_found_in_any_formatting() {
        for pan in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "SKU-5500-0000-0000-0004",
            "378282246310005",
            "4111.1111.1111.1111",
            "4111_1111_1111_1111",
            // A group after or before the card number does not hide it.
            "4111-1111-1111-1111-1",
            "1-5500-0000-0000-0004",
            "4111-1111-1111-1111-01",
        ] {
            assert!(looks_like_pan(pan), "{pan}");
        }
    }

    #[test]
    fn a_uuid_is_an_identifier_even_when_its_digit_groups_chain_into_a_luhn_valid_run() {
        assert!(looks_like_pan("41111111-1111-7118"), "the chain alone is a card number");
        for text in [
            "41111111-1111-7118-8111-111111111111",
            "souk-41111111-1111-7118-8111-111111111111-authorize",
            "order 41111111-1111-7118-8111-111111111111.",
        ] {
            assert!(!looks_like_pan(text), "{text}");
        }
        // A card number beside a UUID is still found.
        assert!(looks_like_pan("41111111-1111-7118-8111-111111111111 4111 1111 1111 1111"));
        // Not UUID-shaped (a digit too many): read as digits.
        assert!(looks_like_pan("41111111-1111-7118-8111-1111111111112"));
    }

    #[test]
    fn digits_glued_to_letters_are_part_of_an_identifier() {
        for text in [
            "a4111111111111111",
            "4111111111111111f",
            "bench-9e4111111111111111ab-7",
            "key_ab4111-1111-1111-1111",
        ] {
            assert!(!looks_like_pan(text), "{text}");
        }
        // Letters beside the number, but not glued to it: still a card number.
        for pan in [
            "card:4111111111111111",
            "tok_4111111111111111",
            "card 4111-1111-1111-1111 ok",
            "n°4111111111111111",
            "カード番号4111111111111111です",
            "卡号4111111111111111",
            "номер4111111111111111",
        ] {
            assert!(looks_like_pan(pan), "{pan}");
        }
    }

    /// Random hex keys, as clients make them (a UUID without dashes, a SHA-1 or SHA-256
    /// digest), are never refused as card numbers.
    #[test]
    fn random_hex_identifiers_are_never_card_numbers() {
        use std::fmt::Write;
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            // xorshift64*: a fixed sequence, so a failure repeats.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        for _ in 0..20_000 {
            for len in [32, 40, 64] {
                let mut hex = String::with_capacity(len);
                while hex.len() < len {
                    let _ = write!(hex, "{:016x}", next());
                }
                hex.truncate(len);
                assert!(!looks_like_pan(&hex), "{hex}");
                assert!(!looks_like_pan(&format!("order-{hex}-3")), "order-{hex}-3");
            }
        }
    }

    #[test]
    fn ordinary_text_and_short_or_invalid_numbers_pass() {
        for text in [
            "MUG-1",
            "4111111111111112",
            "123456789012",
            "2026-11-25",
            "41111111111111110000",
            "v1.2.3",
            "BOX_12_PACK-4",
        ] {
            assert!(!looks_like_pan(text), "{text}");
        }
    }
}
