//! Text made safe to print.
//!
//! Everything that came over the network passes through [`clean`] before it reaches a terminal,
//! so a message cannot move the cursor, change colours, set the window title or reorder text with
//! bidirectional overrides on someone else's screen.

/// Replaces control characters (escape sequences included) and bidirectional overrides with
/// visible placeholders; ordinary text passes unchanged.
pub fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\t' => out.push(' '),
            c if c.is_control() => out.push('\u{fffd}'),
            // Bidi embeddings, overrides and isolates (Trojan Source), and line/paragraph separators.
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}' => {
                out.push('\u{fffd}')
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_never_survive() {
        let evil = "hi\x1b[2J\x1b]0;owned\x07\r\nnext\u{202e}txt";
        let shown = clean(evil);
        assert!(!shown.chars().any(|c| c.is_control()));
        assert!(!shown.contains('\u{202e}'));
        assert!(shown.starts_with("hi"));
    }

    #[test]
    fn plain_text_is_untouched() {
        assert_eq!(clean("héllo wörld — ok? 😀"), "héllo wörld — ok? 😀");
    }
}
