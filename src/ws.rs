//! WebSocket framing (RFC 6455), server side, for the session's own reader
//! and writer.
//!
//! The broker frames what it sends itself so that a push is encoded once
//! into a complete frame (header and payload in one `Bytes`) and that very
//! buffer is what every recipient's socket is handed: no per-recipient copy
//! into a library's write buffer, and a publisher can write it straight to
//! an idle socket. Server frames are never masked and never fragmented.
//!
//! Reading is the mirror image: [`FrameReader`] cuts client frames out of
//! whatever bytes the socket gave, unmasks them, joins fragments and checks
//! the limits. It keeps a buffer only while a frame is incomplete, so an idle
//! session carries none.

use bytes::{Bytes, BytesMut};

pub(crate) const CONTINUATION: u8 = 0x0;
pub(crate) const TEXT: u8 = 0x1;
pub(crate) const BINARY: u8 = 0x2;
pub(crate) const CLOSE: u8 = 0x8;
pub(crate) const PING: u8 = 0x9;
pub(crate) const PONG: u8 = 0xA;

/// Room an encoder leaves in front of a payload for its frame header (the
/// longest server header: 2 bytes and a 64-bit length).
pub(crate) const HEADER_ROOM: usize = 10;

/// Writes a final, unmasked frame header for `len` payload bytes at the end
/// of `out`, returning where it starts.
fn header(opcode: u8, len: usize, out: &mut [u8; HEADER_ROOM]) -> usize {
    let first = 0x80 | opcode;
    if len < 126 {
        out[8] = first;
        out[9] = len as u8;
        8
    } else if len <= u16::MAX as usize {
        out[6] = first;
        out[7] = 126;
        out[8..10].copy_from_slice(&(len as u16).to_be_bytes());
        6
    } else {
        out[0] = first;
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        0
    }
}

/// A buffer for an encoder: [`HEADER_ROOM`] bytes of room, then the payload
/// is written after them, then [`finish`] puts the header in.
pub(crate) fn payload_buffer(capacity: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_ROOM + capacity);
    buf.resize(HEADER_ROOM, 0);
    buf
}

/// Turns a [`payload_buffer`] holding a payload into a complete frame,
/// without copying the payload.
pub(crate) fn finish(opcode: u8, mut buf: Vec<u8>) -> Bytes {
    debug_assert!(buf.len() >= HEADER_ROOM);
    let mut head = [0u8; HEADER_ROOM];
    let start = header(opcode, buf.len() - HEADER_ROOM, &mut head);
    buf[start..HEADER_ROOM].copy_from_slice(&head[start..]);
    Bytes::from(buf).slice(start..)
}

/// A complete frame around a copy of `payload`.
pub(crate) fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut buf = payload_buffer(payload.len());
    buf.extend_from_slice(payload);
    finish(opcode, buf)
}

/// A close frame with a code and a reason.
pub(crate) fn close(code: u16, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    frame(CLOSE, &payload)
}

/// The payload of a frame this module built (for tests and tools).
pub(crate) fn payload_of(frame: &Bytes) -> Bytes {
    let start = match frame.get(1).map(|b| b & 0x7F) {
        Some(126) => 4,
        Some(127) => 10,
        Some(_) => 2,
        None => return Bytes::new(),
    };
    frame.slice(start.min(frame.len())..)
}

/// Whether a frame this module built is a text frame.
pub(crate) fn is_text(frame: &Bytes) -> bool {
    frame.first().map(|b| b & 0x0F) == Some(TEXT)
}

/// What a client sent: a whole message (fragments joined) or a control frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    /// A close frame, with its code if it carried one.
    Close(Option<u16>),
}

/// Why the client's bytes cannot be read further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ReadError {
    /// 1002: the client broke the framing rules.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A frame or message over `max_frame_bytes`.
    #[error("frame too large")]
    TooLarge,
    /// 1007: a text message that is not UTF-8.
    #[error("text message is not UTF-8")]
    InvalidUtf8,
}

/// Cuts client frames out of the bytes a socket gives.
#[derive(Default)]
pub(crate) struct FrameReader {
    /// Bytes of an incomplete frame (empty, with no allocation, between
    /// frames).
    partial: BytesMut,
    /// A fragmented message being joined: its opcode and the data so far.
    fragments: Option<Box<(u8, BytesMut)>>,
    max_bytes: usize,
}

/// A frame header read off the wire.
struct Head {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    header_len: usize,
    payload_len: usize,
}

impl FrameReader {
    pub(crate) fn new(max_bytes: usize) -> Self {
        FrameReader {
            partial: BytesMut::new(),
            fragments: None,
            max_bytes,
        }
    }

    /// Whether part of a frame is waiting for more bytes.
    #[cfg(test)]
    fn is_mid_frame(&self) -> bool {
        !self.partial.is_empty() || self.fragments.is_some()
    }

    /// Reads every complete frame out of `data` (bytes just received) into
    /// `out`, keeping an incomplete tail for the next call.
    pub(crate) fn feed(&mut self, data: &[u8], out: &mut Vec<Inbound>) -> Result<(), ReadError> {
        if self.partial.is_empty() {
            let used = self.parse(data, out)?;
            if used < data.len() {
                self.partial.extend_from_slice(&data[used..]);
            }
        } else {
            self.partial.extend_from_slice(data);
            let partial = std::mem::take(&mut self.partial);
            let used = self.parse(&partial, out)?;
            if used < partial.len() {
                let mut rest = partial;
                let _ = rest.split_to(used);
                self.partial = rest;
            }
            // Otherwise the buffer goes: an idle session keeps none.
        }
        Ok(())
    }

    /// Parses complete frames from the front of `data`; returns how many
    /// bytes they took.
    fn parse(&mut self, data: &[u8], out: &mut Vec<Inbound>) -> Result<usize, ReadError> {
        let mut at = 0;
        while let Some(head) = self.head(&data[at..])? {
            let end = at + head.header_len + head.payload_len;
            if end > data.len() {
                break;
            }
            let mut payload = BytesMut::from(&data[at + head.header_len..end]);
            unmask(&mut payload, head.mask);
            at = end;
            self.frame(head, payload, out)?;
        }
        Ok(at)
    }

    /// Reads a frame header, if all of it is there, checking what can be
    /// checked before the payload arrives (so an oversized frame is refused
    /// without buffering it).
    fn head(&self, data: &[u8]) -> Result<Option<Head>, ReadError> {
        if data.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (data[0], data[1]);
        if b0 & 0x70 != 0 {
            return Err(ReadError::Protocol("reserved bits set"));
        }
        if b1 & 0x80 == 0 {
            return Err(ReadError::Protocol("client frame not masked"));
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        let (len, mut header_len) = match b1 & 0x7F {
            126 => {
                if data.len() < 4 {
                    return Ok(None);
                }
                (u16::from_be_bytes([data[2], data[3]]) as u64, 4)
            }
            127 => {
                if data.len() < 10 {
                    return Ok(None);
                }
                let mut len = [0u8; 8];
                len.copy_from_slice(&data[2..10]);
                (u64::from_be_bytes(len), 10)
            }
            n => (n as u64, 2),
        };
        match opcode {
            CLOSE | PING | PONG => {
                if !fin || len > 125 {
                    return Err(ReadError::Protocol("bad control frame"));
                }
            }
            TEXT | BINARY => {
                if self.fragments.is_some() {
                    return Err(ReadError::Protocol("new message inside a fragmented one"));
                }
            }
            CONTINUATION => {
                if self.fragments.is_none() {
                    return Err(ReadError::Protocol("continuation without a message"));
                }
            }
            _ => return Err(ReadError::Protocol("unknown opcode")),
        }
        let so_far = self.fragments.as_ref().map_or(0, |f| f.1.len() as u64);
        if len + so_far > self.max_bytes as u64 {
            return Err(ReadError::TooLarge);
        }
        if data.len() < header_len + 4 {
            return Ok(None);
        }
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&data[header_len..header_len + 4]);
        header_len += 4;
        Ok(Some(Head {
            fin,
            opcode,
            mask,
            header_len,
            payload_len: len as usize,
        }))
    }

    fn frame(
        &mut self,
        head: Head,
        payload: BytesMut,
        out: &mut Vec<Inbound>,
    ) -> Result<(), ReadError> {
        let (opcode, payload) = match head.opcode {
            PING => {
                out.push(Inbound::Ping(payload.freeze()));
                return Ok(());
            }
            PONG => {
                out.push(Inbound::Pong);
                return Ok(());
            }
            CLOSE => {
                let code = match payload.len() {
                    0 => None,
                    1 => return Err(ReadError::Protocol("close payload of one byte")),
                    _ => Some(u16::from_be_bytes([payload[0], payload[1]])),
                };
                out.push(Inbound::Close(code));
                return Ok(());
            }
            CONTINUATION => {
                let joined = self.fragments.as_mut().expect("checked in head");
                joined.1.extend_from_slice(&payload);
                if !head.fin {
                    return Ok(());
                }
                let (opcode, data) = *self.fragments.take().expect("checked in head");
                (opcode, data)
            }
            opcode if !head.fin => {
                self.fragments = Some(Box::new((opcode, payload)));
                return Ok(());
            }
            opcode => (opcode, payload),
        };
        let data = payload.freeze();
        if opcode == TEXT {
            if std::str::from_utf8(&data).is_err() {
                return Err(ReadError::InvalidUtf8);
            }
            out.push(Inbound::Text(data));
        } else {
            out.push(Inbound::Binary(data));
        }
        Ok(())
    }
}

fn unmask(data: &mut [u8], mask: [u8; 4]) {
    // Four bytes at a time where possible: the mask repeats every four.
    let word = u32::from_ne_bytes(mask);
    let mut chunks = data.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame as a browser would send it.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn server_frames_carry_the_payload_length_in_the_shortest_form() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 200_000] {
            let payload = vec![b'x'; len];
            let f = frame(TEXT, &payload);
            assert_eq!(f[0], 0x81);
            assert_eq!(payload_of(&f).len(), len, "len {len}");
            let header = f.len() - len;
            let want = if len < 126 {
                2
            } else if len <= 65535 {
                4
            } else {
                10
            };
            assert_eq!(header, want, "len {len}");
            // tungstenite, as a client, reads it back.
            let mut cursor = std::io::Cursor::new(f.to_vec());
            let (h, n) =
                tokio_tungstenite::tungstenite::protocol::frame::FrameHeader::parse(&mut cursor)
                    .unwrap()
                    .unwrap();
            assert!(h.is_final);
            assert_eq!(n as usize, len);
        }
    }

    #[test]
    fn frames_split_anywhere_are_joined() {
        let mut wire = client_frame(true, TEXT, b"hello");
        wire.extend(client_frame(false, BINARY, &[1, 2]));
        wire.extend(client_frame(true, PING, b"p"));
        wire.extend(client_frame(true, CONTINUATION, &[3]));
        wire.extend(client_frame(true, TEXT, &vec![b'a'; 70_000]));
        // Every split in the headers and short frames, then a few in the
        // long frame (all of them would make the test quadratic).
        let splits = (0..40).chain([wire.len() / 2, wire.len() - 1]);
        for split in splits {
            let mut reader = FrameReader::new(1 << 20);
            let mut out = vec![];
            reader.feed(&wire[..split], &mut out).unwrap();
            reader.feed(&wire[split..], &mut out).unwrap();
            assert!(!reader.is_mid_frame());
            assert_eq!(out.len(), 4, "split at {split}");
            assert_eq!(out[0], Inbound::Text(Bytes::from_static(b"hello")));
            assert_eq!(out[1], Inbound::Ping(Bytes::from_static(b"p")));
            assert_eq!(out[2], Inbound::Binary(Bytes::from_static(&[1, 2, 3])));
            assert_eq!(out[3], Inbound::Text(Bytes::from(vec![b'a'; 70_000])));
        }
    }

    #[test]
    fn bad_frames_are_refused() {
        let mut unmasked = client_frame(true, TEXT, b"x");
        unmasked[1] &= 0x7F;
        let cases: Vec<(Vec<u8>, ReadError)> = vec![
            (unmasked, ReadError::Protocol("client frame not masked")),
            (
                client_frame(true, 0x3, b""),
                ReadError::Protocol("unknown opcode"),
            ),
            (
                client_frame(true, CONTINUATION, b"x"),
                ReadError::Protocol("continuation without a message"),
            ),
            (
                client_frame(false, PING, b""),
                ReadError::Protocol("bad control frame"),
            ),
            (
                client_frame(true, TEXT, &[0xff, 0xfe]),
                ReadError::InvalidUtf8,
            ),
            (client_frame(true, BINARY, &[0; 101]), ReadError::TooLarge),
            (
                [
                    client_frame(false, BINARY, &[0; 60]),
                    client_frame(true, CONTINUATION, &[0; 60]),
                ]
                .concat(),
                ReadError::TooLarge,
            ),
        ];
        for (wire, want) in cases {
            let mut reader = FrameReader::new(100);
            let mut out = vec![];
            assert_eq!(reader.feed(&wire, &mut out), Err(want));
        }
        // An oversized frame is refused from its header alone.
        let mut reader = FrameReader::new(100);
        let wire = client_frame(true, BINARY, &[0; 1000]);
        assert_eq!(
            reader.feed(&wire[..8], &mut vec![]),
            Err(ReadError::TooLarge)
        );
    }

    #[test]
    fn close_frames_carry_their_code() {
        let mut reader = FrameReader::new(100);
        let mut out = vec![];
        reader
            .feed(&client_frame(true, CLOSE, &[0x03, 0xE8, b'b']), &mut out)
            .unwrap();
        assert_eq!(out, [Inbound::Close(Some(1000))]);
        let c = close(4008, "slow consumer");
        assert_eq!(&payload_of(&c)[..2], &4008u16.to_be_bytes());
    }
}
