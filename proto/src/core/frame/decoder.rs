//! A byte stream to frames: at most one partial frame is buffered, and a
//! header is judged before its body arrives (PROTOCOL.md §4, §8).

use super::codec::body_len;
use super::*;

/// Incremental decoder for a byte stream of frames. It holds at most one
/// partial frame ([`MAX_FRAME_LEN`] bytes), whatever the peer sends.
#[derive(Default)]
pub struct FrameDecoder {
    pub(super) buf: Vec<u8>,
}

/// Checks a frame header: a known type, within the size limit, with the
/// body length its type has.
fn check_header(kind: u8, len: u16) -> Result<(), FrameError> {
    let len = usize::from(len);
    let expected = body_len(kind).ok_or(FrameError::UnknownType(kind))?;
    if len > MAX_BODY_LEN {
        return Err(FrameError::TooLarge(len));
    }
    if len != expected {
        return Err(FrameError::WrongLength {
            kind,
            expected,
            got: len,
        });
    }
    Ok(())
}

/// The length of the whole frame at the start of `bytes`, if it is all
/// there (`None`: only part of it is); an error if its header is bad.
/// Transports that carry one frame per message (WebSocket) cut and check
/// with it too.
pub fn whole_frame_at(bytes: &[u8]) -> Result<Option<usize>, FrameError> {
    let [kind, hi, lo, ..] = *bytes else {
        return Ok(None);
    };
    let len = u16::from_be_bytes([hi, lo]);
    check_header(kind, len)?;
    let whole = HEADER_LEN + usize::from(len);
    Ok((bytes.len() >= whole).then_some(whole))
}

impl FrameDecoder {
    /// Consumes bytes from `input`, appending each complete frame to `out`.
    /// Returns how many bytes were consumed (all of them unless an error
    /// occurred). After an error the stream is unusable: close the connection.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<Frame>) -> Result<usize, FrameError> {
        let mut used = 0;
        while used < input.len() {
            if self.buf.is_empty()
                && let Some(len) = whole_frame_at(&input[used..])?
            {
                // A whole frame in the input: decoded where it lies.
                let frame = &input[used..used + len];
                out.push(Frame::decode_body(frame[0], &frame[HEADER_LEN..])?);
                used += len;
                continue;
            }
            // Part of a frame: fill the header first, then the exact body
            // length it declares.
            let want = if self.buf.len() < HEADER_LEN {
                HEADER_LEN
            } else {
                // The header was checked when it completed, so len is in range.
                HEADER_LEN + u16::from_be_bytes([self.buf[1], self.buf[2]]) as usize
            };
            let take = (want - self.buf.len()).min(input.len() - used);
            self.buf.extend_from_slice(&input[used..used + take]);
            used += take;
            if self.buf.len() == HEADER_LEN {
                check_header(self.buf[0], u16::from_be_bytes([self.buf[1], self.buf[2]]))?;
            }
            if self.buf.len() > HEADER_LEN && self.buf.len() == want {
                let frame = Frame::decode_body(self.buf[0], &self.buf[HEADER_LEN..]);
                // An idle connection keeps no buffer (PROTOCOL.md §8: memory
                // per connection is what limits how many can wait).
                self.buf = Vec::new();
                out.push(frame?);
            }
        }
        Ok(used)
    }

    /// True when no partial frame is buffered.
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty()
    }
}
