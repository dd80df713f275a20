//! Splitting a byte stream into frames: lines, or length-prefixed messages. Sans-I/O:
//! bytes go in as they arrive (in any chunking), frames come out.

use std::collections::VecDeque;

/// How a stream's bytes are cut into messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Lines ending in `\n` (a `\r` before it is removed too); a last line without `\n`
    /// is a message when the peer closes. Longer lines than `max` bytes are an error.
    Lines {
        /// The longest line accepted, in bytes.
        max: usize,
    },
    /// A 4-byte big-endian length, then that many bytes. Longer frames than `max` are
    /// an error; so is a stream that ends inside a frame.
    LengthPrefixed {
        /// The longest payload accepted, in bytes.
        max: usize,
    },
}

impl Framing {
    /// Lines of at most 64 KiB.
    pub const LINES: Framing = Framing::Lines { max: 64 * 1024 };
    /// Length-prefixed frames of at most 1 MiB.
    pub const LENGTH_PREFIXED: Framing = Framing::LengthPrefixed { max: 1 << 20 };
}

/// Why a connection's byte stream could not be framed (the connection is closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame is longer than the framing's `max`.
    #[error("a frame of {len}+ bytes exceeds the limit of {max}: raise the framing's `max` or fix the sender")]
    TooLong {
        /// Bytes seen (or announced) for the frame.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The peer closed the stream inside a length-prefixed frame.
    #[error(
        "the stream ended inside a frame ({have} of {want} bytes): the sender closed too early"
    )]
    Truncated {
        /// Bytes of the frame received (with the prefix).
        have: usize,
        /// Bytes the frame needed (with the prefix).
        want: usize,
    },
}

/// Cuts bytes into frames; feed with [`push`](Framer::push), end with
/// [`finish`](Framer::finish).
#[derive(Debug)]
pub(crate) struct Framer {
    framing: Framing,
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for `\n` (lines).
    scanned: usize,
}

impl Framer {
    pub(crate) fn new(framing: Framing) -> Self {
        Self {
            framing,
            buf: Vec::new(),
            scanned: 0,
        }
    }

    /// Adds bytes and appends every complete frame to `frames`; an error means the
    /// stream cannot be framed any further.
    pub(crate) fn push(
        &mut self,
        bytes: &[u8],
        frames: &mut VecDeque<Vec<u8>>,
    ) -> Result<(), FrameError> {
        self.buf.extend_from_slice(bytes);
        let mut start = 0;
        let result = loop {
            match self.framing {
                Framing::Lines { max } => {
                    let from = self.scanned.max(start);
                    match self.buf[from..].iter().position(|&b| b == b'\n') {
                        Some(at) => {
                            let end = from + at;
                            if end - start > max {
                                break Err(FrameError::TooLong {
                                    len: end - start,
                                    max,
                                });
                            }
                            frames.push_back(line(&self.buf[start..end]));
                            start = end + 1;
                        }
                        None => {
                            self.scanned = self.buf.len();
                            if self.buf.len() - start > max {
                                break Err(FrameError::TooLong {
                                    len: self.buf.len() - start,
                                    max,
                                });
                            }
                            break Ok(());
                        }
                    }
                }
                Framing::LengthPrefixed { max } => {
                    let have = self.buf.len() - start;
                    if have < 4 {
                        break Ok(());
                    }
                    let len =
                        u32::from_be_bytes(self.buf[start..start + 4].try_into().expect("4 bytes"))
                            as usize;
                    if len > max {
                        break Err(FrameError::TooLong { len, max });
                    }
                    if have < 4 + len {
                        break Ok(());
                    }
                    frames.push_back(self.buf[start + 4..start + 4 + len].to_vec());
                    start += 4 + len;
                }
            }
        };
        self.buf.drain(..start);
        self.scanned = self.scanned.saturating_sub(start);
        result
    }

    /// The stream ended: a last line without `\n` is a frame; a partial
    /// length-prefixed frame is an error.
    pub(crate) fn finish(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let rest = std::mem::take(&mut self.buf);
        self.scanned = 0;
        if rest.is_empty() {
            return Ok(None);
        }
        match self.framing {
            Framing::Lines { .. } => Ok(Some(line(&rest))),
            Framing::LengthPrefixed { .. } => {
                let want = if rest.len() >= 4 {
                    4 + u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize
                } else {
                    4
                };
                Err(FrameError::Truncated {
                    have: rest.len(),
                    want,
                })
            }
        }
    }
}

/// A line's bytes without a trailing `\r`.
fn line(bytes: &[u8]) -> Vec<u8> {
    bytes.strip_suffix(b"\r").unwrap_or(bytes).to_vec()
}

/// Encodes `payload` as one length-prefixed frame (for senders and tests).
pub fn length_prefixed(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame_all(
        framing: Framing,
        stream: &[u8],
        cuts: &[usize],
    ) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut framer = Framer::new(framing);
        let mut frames = VecDeque::new();
        let mut at = 0;
        for &cut in cuts {
            let cut = cut.min(stream.len()).max(at);
            framer.push(&stream[at..cut], &mut frames)?;
            at = cut;
        }
        framer.push(&stream[at..], &mut frames)?;
        frames.extend(framer.finish()?);
        Ok(frames.into())
    }

    proptest! {
        /// However the bytes are chunked, length-prefixed frames come out whole and in order.
        #[test]
        fn length_prefixed_frames_survive_any_chunking(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..20),
            mut cuts in proptest::collection::vec(0usize..1000, 0..30),
        ) {
            let stream: Vec<u8> = payloads.iter().flat_map(|p| length_prefixed(p)).collect();
            cuts.sort_unstable();
            let frames = frame_all(Framing::LengthPrefixed { max: 64 }, &stream, &cuts).unwrap();
            prop_assert_eq!(frames, payloads);
        }

        /// However the bytes are chunked, lines come out whole and in order.
        #[test]
        fn lines_survive_any_chunking(
            lines in proptest::collection::vec("[a-z ]{0,30}", 0..20),
            crlf in any::<bool>(),
            last_terminated in any::<bool>(),
            mut cuts in proptest::collection::vec(0usize..1000, 0..30),
        ) {
            let ending = if crlf { "\r\n" } else { "\n" };
            let mut stream = lines.join(ending);
            if last_terminated && !lines.is_empty() {
                stream.push_str(ending);
            }
            cuts.sort_unstable();
            let frames = frame_all(Framing::Lines { max: 64 }, stream.as_bytes(), &cuts).unwrap();
            let mut expected: Vec<Vec<u8>> = lines.iter().map(|l| l.as_bytes().to_vec()).collect();
            // An empty last line without its ending is no line at all.
            if !last_terminated && expected.last().is_some_and(|l| l.is_empty()) {
                expected.pop();
            }
            prop_assert_eq!(frames, expected);
        }
    }

    #[test]
    fn oversized_and_truncated_frames_are_typed_errors() {
        let mut frames = VecDeque::new();
        let mut framer = Framer::new(Framing::LengthPrefixed { max: 8 });
        assert_eq!(
            framer.push(&length_prefixed(&[0; 9]), &mut frames),
            Err(FrameError::TooLong { len: 9, max: 8 })
        );
        let mut framer = Framer::new(Framing::LengthPrefixed { max: 8 });
        framer
            .push(&length_prefixed(&[1, 2, 3])[..5], &mut frames)
            .unwrap();
        assert_eq!(
            framer.finish(),
            Err(FrameError::Truncated { have: 5, want: 7 })
        );
        let mut framer = Framer::new(Framing::Lines { max: 4 });
        assert_eq!(
            framer.push(b"abcdef", &mut frames),
            Err(FrameError::TooLong { len: 6, max: 4 })
        );
        assert!(frames.is_empty());
    }
}
