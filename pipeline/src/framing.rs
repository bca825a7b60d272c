//! Newline framing with a bounded line length.
//!
//! TCP ingest and NDJSON bodies share this: input is split on `\n` (a trailing `\r` is
//! dropped), blank lines are skipped, and a line longer than the limit is not buffered: its
//! first bytes are kept for the dead-letter store and the rest is counted and discarded until
//! the next newline, so a hostile producer cannot make the server hold more than one limit's
//! worth of bytes per connection.

/// One framed line.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Line(Vec<u8>),
    /// A line longer than the limit: its first `limit` bytes and its full length.
    TooLong {
        prefix: Vec<u8>,
        len: usize,
    },
}

/// Incremental framer; feed it bytes as they arrive.
pub struct LineFramer {
    limit: usize,
    buf: Vec<u8>,
    /// Bytes of an overlong line seen so far, while discarding it.
    discarding: Option<usize>,
}

impl LineFramer {
    pub fn new(limit: usize) -> LineFramer {
        assert!(limit > 0);
        LineFramer {
            limit,
            buf: Vec::new(),
            discarding: None,
        }
    }

    /// Bytes held for an unfinished line (at most `limit`).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feeds `data`, appending every completed frame to `out`.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<Frame>) {
        while !data.is_empty() {
            let nl = data.iter().position(|&b| b == b'\n');
            let (chunk, rest, ended) = match nl {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &data[data.len()..], false),
            };
            data = rest;
            if let Some(seen) = self.discarding.as_mut() {
                *seen += chunk.len() + usize::from(ended);
                if ended {
                    let len = *seen - 1;
                    self.discarding = None;
                    out.push(Frame::TooLong {
                        prefix: std::mem::take(&mut self.buf),
                        len,
                    });
                }
                continue;
            }
            if self.buf.len() + chunk.len() > self.limit {
                let room = self.limit - self.buf.len();
                self.buf.extend_from_slice(&chunk[..room]);
                let seen = self.buf.len() + (chunk.len() - room);
                if ended {
                    out.push(Frame::TooLong {
                        prefix: std::mem::take(&mut self.buf),
                        len: seen,
                    });
                } else {
                    self.discarding = Some(seen);
                }
                continue;
            }
            self.buf.extend_from_slice(chunk);
            if ended {
                self.emit(out);
            }
        }
    }

    /// Ends the input: an unterminated last line is framed as if it had a newline.
    pub fn finish(&mut self, out: &mut Vec<Frame>) {
        if let Some(seen) = self.discarding.take() {
            out.push(Frame::TooLong {
                prefix: std::mem::take(&mut self.buf),
                len: seen,
            });
        } else {
            self.emit(out);
        }
    }

    fn emit(&mut self, out: &mut Vec<Frame>) {
        let mut line = std::mem::take(&mut self.buf);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        debug_assert!(line.len() <= self.limit);
        out.push(Frame::Line(line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame_all(limit: usize, chunks: &[&[u8]]) -> Vec<Frame> {
        let mut f = LineFramer::new(limit);
        let mut out = Vec::new();
        for c in chunks {
            f.push(c, &mut out);
        }
        f.finish(&mut out);
        out
    }

    #[test]
    fn splits_skips_blank_and_strips_cr() {
        let out = frame_all(10, &[b"ab\r\n\n  \ncd", b"e\nf"]);
        assert_eq!(
            out,
            vec![
                Frame::Line(b"ab".to_vec()),
                Frame::Line(b"cde".to_vec()),
                Frame::Line(b"f".to_vec())
            ]
        );
    }

    #[test]
    fn overlong_lines_keep_a_prefix_and_their_length() {
        let out = frame_all(4, &[b"abcdefgh", b"ij\nok\n"]);
        assert_eq!(
            out,
            vec![
                Frame::TooLong {
                    prefix: b"abcd".to_vec(),
                    len: 10
                },
                Frame::Line(b"ok".to_vec())
            ]
        );
        let exact = frame_all(4, &[b"abcd\n"]);
        assert_eq!(exact, vec![Frame::Line(b"abcd".to_vec())]);
    }

    proptest! {
        /// However the input is chunked, the frames are the same.
        #[test]
        fn chunking_does_not_matter(lines in proptest::collection::vec("[a-z]{0,12}", 0..20), cut in 1usize..7) {
            let text = lines.join("\n");
            let whole = frame_all(8, &[text.as_bytes()]);
            let pieces: Vec<&[u8]> = text.as_bytes().chunks(cut).collect();
            prop_assert_eq!(frame_all(8, &pieces), whole);
        }
    }
}
