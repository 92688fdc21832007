//! PCI-DSS: souk stores payment tokens, never card numbers. Free-text fields are
//! checked for primary account numbers (13–19 digits, optionally separated by spaces or
//! dashes, passing the Luhn check) so one pasted by mistake is refused at the door.

/// Whether `text` holds a card number.
pub fn looks_like_pan(text: &str) -> bool {
    // Digits of each run of digits joined by at most single separators.
    let mut digits = Vec::with_capacity(19);
    let mut previous_separator = false;
    for c in text.chars() {
        match c {
            '0'..='9' => {
                digits.push(c as u8 - b'0');
                previous_separator = false;
            }
            ' ' | '-' if !digits.is_empty() && !previous_separator => previous_separator = true,
            _ => {
                if contains_pan(&digits) {
                    return true;
                }
                digits.clear();
                previous_separator = false;
            }
        }
    }
    contains_pan(&digits)
}

/// A run of 13–19 digits that passes Luhn. (Windows inside longer runs are not
/// checked: one in ten of them passes Luhn by chance.)
fn contains_pan(digits: &[u8]) -> bool {
    (13..=19).contains(&digits.len()) && luhn(digits)
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
        for pan in ["4111111111111111", "4111 1111 1111 1111", "SKU-5500-0000-0000-0004", "378282246310005"] {
            assert!(looks_like_pan(pan), "{pan}");
        }
    }

    #[test]
    fn ordinary_text_and_short_or_invalid_numbers_pass() {
        for text in ["MUG-1", "4111111111111112", "123456789012", "2026-11-25", "41111111111111110000"] {
            assert!(!looks_like_pan(text), "{text}");
        }
    }
}
