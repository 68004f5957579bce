//! Framing for the TCP transport: newline-delimited JSON with a hard line limit.
//!
//! An oversized line is not a fatal error: the decoder skips to the end of it and reports
//! [`Frame::Oversized`], so the server can answer with an error and keep the connection, exactly
//! as it does for malformed JSON. Lines are handed out as `BytesMut` so JSON can be parsed in place
//! without first building a `String`.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use tokio_util::codec::Decoder;

/// One unit read off a TCP connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete line, without its newline (and without a trailing `\r`).
    Line(BytesMut),
    /// A line longer than the limit was skipped.
    Oversized,
}

/// Splits a byte stream into lines of at most `max` bytes.
#[derive(Debug, Clone)]
pub struct LineCodec {
    max: usize,
    /// Bytes of the current line already searched for a newline, so long lines arriving in small
    /// pieces are scanned once, not once per piece.
    scanned: usize,
    /// Inside an oversized line: drop everything up to the next newline.
    discarding: bool,
}

impl LineCodec {
    /// A codec that refuses lines longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            scanned: 0,
            discarding: false,
        }
    }
}

impl Decoder for LineCodec {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        loop {
            let newline = buf[self.scanned..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| i + self.scanned);
            match (self.discarding, newline) {
                (true, Some(i)) => {
                    let _ = buf.split_to(i + 1);
                    self.scanned = 0;
                    self.discarding = false;
                    return Ok(Some(Frame::Oversized));
                }
                (true, None) => {
                    buf.clear();
                    self.scanned = 0;
                    return Ok(None);
                }
                (false, Some(i)) if i <= self.max => {
                    let mut line = buf.split_to(i + 1);
                    line.truncate(i);
                    if line.last() == Some(&b'\r') {
                        line.truncate(i - 1);
                    }
                    self.scanned = 0;
                    return Ok(Some(Frame::Line(line)));
                }
                (false, Some(_)) => {
                    self.discarding = true;
                    continue;
                }
                (false, None) if buf.len() > self.max => {
                    self.discarding = true;
                    continue;
                }
                (false, None) => {
                    self.scanned = buf.len();
                    return Ok(None);
                }
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None => {
                // A last line without newline still counts; half a line of an oversized one does not.
                self.scanned = 0;
                if buf.is_empty() || self.discarding {
                    buf.clear();
                    Ok(None)
                } else {
                    Ok(Some(Frame::Line(buf.split())))
                }
            }
        }
    }
}

/// Encodes a message as one JSON line, ready to share between many writers.
pub fn encode_line<T: Serialize>(msg: &T) -> Bytes {
    let mut buf = BytesMut::with_capacity(128).writer();
    // Serializing our own types into memory cannot fail: no maps with non-string keys.
    serde_json::to_writer(&mut buf, msg).expect("protocol types serialize");
    let mut buf = buf.into_inner();
    buf.put_u8(b'\n');
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain(codec: &mut LineCodec, buf: &mut BytesMut) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(f) = codec.decode(buf).unwrap() {
            out.push(f);
        }
        out
    }

    fn line(s: &str) -> Frame {
        Frame::Line(BytesMut::from(s))
    }

    #[test]
    fn splits_lines_and_strips_cr() {
        let mut c = LineCodec::new(16);
        let mut buf = BytesMut::from("a\r\nbb\n\nccc");
        assert_eq!(
            drain(&mut c, &mut buf),
            vec![line("a"), line("bb"), line("")]
        );
        assert_eq!(c.decode_eof(&mut buf).unwrap(), Some(line("ccc")));
    }

    #[test]
    fn oversized_line_is_skipped_and_the_next_one_survives() {
        let mut c = LineCodec::new(4);
        let mut buf = BytesMut::from("0123456789");
        assert_eq!(drain(&mut c, &mut buf), vec![]);
        buf.extend_from_slice(b"abc\nok\n");
        assert_eq!(drain(&mut c, &mut buf), vec![Frame::Oversized, line("ok")]);
    }

    #[test]
    fn line_of_exactly_max_is_accepted() {
        let mut c = LineCodec::new(4);
        let mut buf = BytesMut::from("abcd\nabcde\n");
        assert_eq!(
            drain(&mut c, &mut buf),
            vec![line("abcd"), Frame::Oversized]
        );
    }

    #[test]
    fn pieces_arriving_one_byte_at_a_time() {
        let mut c = LineCodec::new(64);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in b"hello\nworld\n" {
            buf.put_u8(*b);
            out.extend(drain(&mut c, &mut buf));
        }
        assert_eq!(out, vec![line("hello"), line("world")]);
    }

    proptest! {
        #[test]
        fn any_bytes_in_any_pieces_never_panic_and_respect_the_limit(
            data in proptest::collection::vec(any::<u8>(), 0..512),
            cut in 1usize..64,
            max in 1usize..40,
        ) {
            let mut c = LineCodec::new(max);
            let mut buf = BytesMut::new();
            for chunk in data.chunks(cut) {
                buf.extend_from_slice(chunk);
                for f in drain(&mut c, &mut buf) {
                    if let Frame::Line(l) = f { prop_assert!(l.len() <= max); }
                }
            }
            if let Some(Frame::Line(l)) = c.decode_eof(&mut buf).unwrap() {
                prop_assert!(l.len() <= max);
            }
        }
    }
}
