//! The bytes a terminal sends, turned into keys.
//!
//! A pure parser, fed whatever `read` returned: a key may arrive split across two reads (an escape
//! sequence, a UTF-8 character, the end of a bracketed paste), so the parser keeps what it could
//! not finish yet and waits for more. Only a lone `ESC` needs a clock: the reader calls
//! [`KeyParser::flush`] when nothing followed it for a moment.

/// One key, or one bracketed paste.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// A printable character.
    Char(char),
    /// Enter (`\r`, or `\n` from a program writing to the terminal).
    Enter,
    /// Tab.
    Tab,
    /// Backspace (`DEL` or `^H`).
    Backspace,
    /// The Delete key.
    Delete,
    /// Arrow left.
    Left,
    /// Arrow right.
    Right,
    /// Arrow up.
    Up,
    /// Arrow down.
    Down,
    /// Home.
    Home,
    /// End.
    End,
    /// Ctrl-Left or Alt-b.
    WordLeft,
    /// Ctrl-Right or Alt-f.
    WordRight,
    /// Alt-Backspace: delete the word before the cursor.
    DeleteWordBack,
    /// Ctrl and a letter (`'a'`..=`'z'`), other than the ones above.
    Ctrl(char),
    /// Text between the terminal's bracketed-paste markers, newlines included.
    Paste(String),
    /// An escape sequence this program has no use for; ignored.
    Unknown,
}

const PASTE_START: &[u8] = b"\x1b[200~";
const PASTE_END: &[u8] = b"\x1b[201~";
/// Longest escape sequence worth waiting for; anything longer is garbage.
const MAX_SEQUENCE: usize = 32;

/// Parses terminal input incrementally.
#[derive(Default)]
pub struct KeyParser {
    pending: Vec<u8>,
    /// Inside a bracketed paste: the bytes pasted so far.
    paste: Option<Vec<u8>>,
}

impl KeyParser {
    /// Parses `bytes` (following whatever came before) and returns the keys they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Key> {
        self.pending.extend_from_slice(bytes);
        let mut keys = Vec::new();
        loop {
            if let Some(paste) = &mut self.paste {
                match find(&self.pending, PASTE_END) {
                    Some(end) => {
                        paste.extend_from_slice(&self.pending[..end]);
                        self.pending.drain(..end + PASTE_END.len());
                        let text = String::from_utf8_lossy(paste).into_owned();
                        self.paste = None;
                        keys.push(Key::Paste(text));
                        continue;
                    }
                    None => {
                        // Keep a tail that may be the start of the end marker.
                        let keep = self.pending.len().min(PASTE_END.len() - 1);
                        let take = self.pending.len() - keep;
                        paste.extend(self.pending.drain(..take));
                        break;
                    }
                }
            }
            match parse_one(&self.pending) {
                Parsed::Key(key, used) => {
                    self.pending.drain(..used);
                    keys.push(key);
                }
                Parsed::PasteStart => {
                    self.pending.drain(..PASTE_START.len());
                    self.paste = Some(Vec::new());
                }
                Parsed::Skip(used) => {
                    self.pending.drain(..used);
                }
                Parsed::Incomplete => break,
            }
        }
        keys
    }

    /// Whether bytes are waiting for the rest of a key (outside a paste, which waits for its end).
    pub fn waiting(&self) -> bool {
        self.paste.is_none() && !self.pending.is_empty()
    }

    /// Nothing more came: an unfinished escape sequence was a lone `ESC` (ignored) and what
    /// followed it is read again as keys.
    pub fn flush(&mut self) -> Vec<Key> {
        if self.paste.is_some() || self.pending.first() != Some(&0x1b) {
            return Vec::new();
        }
        let rest = self.pending.split_off(1);
        self.pending.clear();
        let mut keys = vec![Key::Unknown];
        keys.extend(self.feed(&rest));
        keys
    }
}

enum Parsed {
    Key(Key, usize),
    PasteStart,
    Skip(usize),
    Incomplete,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_one(bytes: &[u8]) -> Parsed {
    let Some(&b) = bytes.first() else {
        return Parsed::Incomplete;
    };
    let key = |k| Parsed::Key(k, 1);
    match b {
        0x1b => escape(bytes),
        b'\r' | b'\n' => key(Key::Enter),
        b'\t' => key(Key::Tab),
        0x7f | 0x08 => key(Key::Backspace),
        0x01..=0x1a => key(Key::Ctrl(char::from(b - 1 + b'a'))),
        0x00..=0x1f => Parsed::Skip(1),
        _ => utf8(bytes),
    }
}

fn utf8(bytes: &[u8]) -> Parsed {
    let len = match bytes[0] {
        0x00..=0x7f => 1,
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => return Parsed::Skip(1),
    };
    if bytes.len() < len {
        // A character split across reads, unless what follows cannot continue it.
        if bytes[1..].iter().all(|b| b & 0xc0 == 0x80) {
            return Parsed::Incomplete;
        }
        return Parsed::Skip(1);
    }
    match std::str::from_utf8(&bytes[..len]) {
        Ok(s) => Parsed::Key(Key::Char(s.chars().next().expect("one char")), len),
        Err(_) => Parsed::Skip(1),
    }
}

fn escape(bytes: &[u8]) -> Parsed {
    let Some(&kind) = bytes.get(1) else {
        return Parsed::Incomplete;
    };
    match kind {
        b'[' => csi(bytes),
        b'O' => match bytes.get(2) {
            None => Parsed::Incomplete,
            Some(&c) => Parsed::Key(
                match c {
                    b'A' => Key::Up,
                    b'B' => Key::Down,
                    b'C' => Key::Right,
                    b'D' => Key::Left,
                    b'H' => Key::Home,
                    b'F' => Key::End,
                    _ => Key::Unknown,
                },
                3,
            ),
        },
        b'b' => Parsed::Key(Key::WordLeft, 2),
        b'f' => Parsed::Key(Key::WordRight, 2),
        0x7f | 0x08 => Parsed::Key(Key::DeleteWordBack, 2),
        // ESC ESC: the first one was a lone escape.
        0x1b => Parsed::Key(Key::Unknown, 1),
        _ => Parsed::Key(Key::Unknown, 2),
    }
}

fn csi(bytes: &[u8]) -> Parsed {
    let Some(end) = bytes[2..]
        .iter()
        .position(|b| (0x40..=0x7e).contains(b))
        .map(|i| i + 2)
    else {
        if bytes.len() > MAX_SEQUENCE {
            return Parsed::Skip(bytes.len());
        }
        return Parsed::Incomplete;
    };
    let params = &bytes[2..end];
    let used = end + 1;
    if &bytes[..used] == PASTE_START {
        return Parsed::PasteStart;
    }
    // `1;5` is Ctrl, `1;3` Alt: either makes the arrows jump by words.
    let modified = params.ends_with(b";5") || params.ends_with(b";3");
    let key = match (bytes[end], params) {
        (b'A', _) => Key::Up,
        (b'B', _) => Key::Down,
        (b'C', _) if modified => Key::WordRight,
        (b'D', _) if modified => Key::WordLeft,
        (b'C', _) => Key::Right,
        (b'D', _) => Key::Left,
        (b'H', _) => Key::Home,
        (b'F', _) => Key::End,
        (b'~', b"1" | b"7") => Key::Home,
        (b'~', b"4" | b"8") => Key::End,
        (b'~', b"3") => Key::Delete,
        _ => Key::Unknown,
    };
    Parsed::Key(key, used)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(input: &[u8]) -> Vec<Key> {
        KeyParser::default().feed(input)
    }

    #[test]
    fn type_ahead_is_every_key_in_order() {
        let got = keys(b"ab\rcd\r");
        assert_eq!(
            got,
            vec![
                Key::Char('a'),
                Key::Char('b'),
                Key::Enter,
                Key::Char('c'),
                Key::Char('d'),
                Key::Enter
            ]
        );
    }

    #[test]
    fn a_bracketed_paste_is_one_key_with_its_newlines() {
        let got = keys(b"x\x1b[200~one\rtwo\nthree\x1b[201~y");
        assert_eq!(
            got,
            vec![
                Key::Char('x'),
                Key::Paste("one\rtwo\nthree".into()),
                Key::Char('y')
            ]
        );
    }

    #[test]
    fn anything_split_across_reads_is_put_back_together() {
        let input = "é\x1b[D\x1b[200~pasted €\x1b[201~ü".as_bytes();
        let whole = keys(input);
        for cut in 1..input.len() {
            let mut p = KeyParser::default();
            let mut got = p.feed(&input[..cut]);
            got.extend(p.feed(&input[cut..]));
            assert_eq!(got, whole, "cut at {cut}");
        }
        assert_eq!(whole.len(), 4);
    }

    #[test]
    fn a_lone_escape_is_dropped_after_the_pause_and_the_rest_kept() {
        let mut p = KeyParser::default();
        assert!(p.feed(b"\x1b").is_empty());
        assert!(p.waiting());
        assert_eq!(p.flush(), vec![Key::Unknown]);
        assert!(!p.waiting());
        assert_eq!(p.feed(b"a"), vec![Key::Char('a')]);
    }

    #[test]
    fn cursor_keys_in_their_common_spellings() {
        assert_eq!(keys(b"\x1b[A\x1bOB"), vec![Key::Up, Key::Down]);
        assert_eq!(keys(b"\x1b[1;5C\x1bb"), vec![Key::WordRight, Key::WordLeft]);
        assert_eq!(
            keys(b"\x1b[3~\x1b[1~\x1b[4~\x1b[H\x1b[F"),
            vec![Key::Delete, Key::Home, Key::End, Key::Home, Key::End]
        );
        assert_eq!(keys(b"\x03\x7f"), vec![Key::Ctrl('c'), Key::Backspace]);
    }

    #[test]
    fn invalid_bytes_are_skipped_not_fatal() {
        assert_eq!(keys(b"\xff\xc3a"), vec![Key::Char('a')]);
    }
}
