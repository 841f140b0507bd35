//! Frame codec: `[payload length: u32 BE][crc32 of payload: u32 BE][payload]`.
//!
//! Used for every stream socket (peer and admin) and for every record on disk. The decoder
//! is incremental: feed it bytes as they arrive and take whole frames out. A frame whose
//! declared length exceeds the limit is refused before any of its payload is buffered, and a
//! frame whose crc does not match is refused, never returned. After either error the byte
//! stream cannot be trusted any more, so the caller drops the connection.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes in a frame header: length then crc32.
pub const HEADER_LEN: usize = 8;

/// Default largest payload accepted on a peer or admin connection (4 MiB).
pub const DEFAULT_FRAME_LEN_MAX: usize = 4 * 1024 * 1024;

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header declares a payload larger than the configured limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Declared payload length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The payload's crc32 does not match the header.
    #[error("frame crc mismatch: header says {expected:#010x}, payload has {actual:#010x}")]
    BadCrc {
        /// crc32 from the header.
        expected: u32,
        /// crc32 computed over the payload.
        actual: u32,
    },
}

/// Appends one frame holding `payload` to `out`.
///
/// # Panics
/// If `payload` is longer than `u32::MAX`; callers bound their payloads far below that.
pub fn encode_frame(payload: &[u8], out: &mut BytesMut) {
    let len = u32::try_from(payload.len()).expect("frame payload fits in u32");
    out.reserve(HEADER_LEN + payload.len());
    out.put_u32(len);
    out.put_u32(crc32fast::hash(payload));
    out.put_slice(payload);
}

/// Bytes a writer coalesces from its queue into one write before it writes.
pub const COALESCE_BYTES_MAX: usize = 256 * 1024;

/// Appends one frame holding `message` to `out` (a writer coalescing queued messages into
/// one write calls this for each, up to [`COALESCE_BYTES_MAX`]).
///
/// The message is encoded straight into `out` (no payload buffer in between): for 64 KiB
/// checkpoint values, every copy saved counts.
///
/// # Panics
/// If the encoded message is longer than `u32::MAX`; callers bound their messages far below.
pub fn encode_message_frame(message: &impl prost::Message, out: &mut BytesMut) {
    let len = message.encoded_len();
    let len32 = u32::try_from(len).expect("frame payload fits in u32");
    out.reserve(HEADER_LEN + len);
    let start = out.len();
    out.put_u32(len32);
    out.put_u32(0);
    message
        .encode(out)
        .expect("a BytesMut grows to take any message");
    let crc = crc32fast::hash(&out[start + HEADER_LEN..]);
    out[start + 4..start + HEADER_LEN].copy_from_slice(&crc.to_be_bytes());
}

/// Returns one frame holding `message` as a fresh buffer (see [`encode_message_frame`]).
pub fn message_frame(message: &impl prost::Message) -> BytesMut {
    let mut out = BytesMut::new();
    encode_message_frame(message, &mut out);
    out
}

/// Values at least this long are shared by [`message_frame_parts`], not copied.
pub const SHARE_MIN: usize = 4096;

/// One frame as buffers to write in order, for a writer that can gather them (`pwritev`):
/// the first holds the header; the message's `bytes` fields of at least [`SHARE_MIN`] bytes
/// are their own parts, shared with the message rather than copied (large checkpoint values
/// are written straight from the buffers they arrived in).
#[derive(Debug, Clone, Default)]
pub struct FrameParts {
    parts: Vec<Bytes>,
    len: usize,
}

impl FrameParts {
    /// The buffers, in order.
    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// Bytes of the whole frame.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the frame has no bytes (never true: a frame has a header).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The frame as one buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        for part in &self.parts {
            out.extend_from_slice(part);
        }
        out
    }
}

/// Bytes of each buffer [`message_frame_parts`] copies small fields into.
const GATHER_CHUNK: usize = 64 * 1024;

/// Encodes into a list of buffers: small fields are copied into the current one, a `bytes`
/// field of at least [`SHARE_MIN`] bytes becomes a part of its own without a copy (prost puts
/// a `Bytes` field with `BufMut::put`, and `Bytes::copy_to_bytes` only counts a reference).
struct GatherBuf {
    parts: Vec<Bytes>,
    current: BytesMut,
    len: usize,
}

// SAFETY: every method delegates to `current`, a `BytesMut`, whose `chunk_mut` and
// `advance_mut` uphold the trait's contract; `len` only counts.
unsafe impl BufMut for GatherBuf {
    fn remaining_mut(&self) -> usize {
        usize::MAX - self.len
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller initialised `cnt` bytes of `current`'s chunk.
        unsafe { self.current.advance_mut(cnt) };
        self.len += cnt;
    }

    fn chunk_mut(&mut self) -> &mut bytes::buf::UninitSlice {
        if self.current.len() == self.current.capacity() {
            // Full: a new buffer of its own rather than a grown copy of this one.
            if !self.current.is_empty() {
                self.parts.push(self.current.split().freeze());
            }
            self.current = BytesMut::with_capacity(GATHER_CHUNK);
        }
        self.current.chunk_mut()
    }

    fn put<T: Buf>(&mut self, mut src: T)
    where
        Self: Sized,
    {
        let len = src.remaining();
        if len >= SHARE_MIN {
            if !self.current.is_empty() {
                self.parts.push(self.current.split().freeze());
            }
            self.parts.push(src.copy_to_bytes(len));
            self.len += len;
        } else {
            // Through `chunk_mut`, which starts a new buffer when this one is full
            // (`BytesMut::put` would grow it by a copy).
            while src.has_remaining() {
                let chunk = src.chunk();
                let taken = chunk.len();
                self.put_slice(chunk);
                src.advance(taken);
            }
        }
    }
}

/// One frame holding `message`, as parts (see [`FrameParts`]); the same bytes as
/// [`message_frame`] gives.
///
/// # Panics
/// If the encoded message is longer than `u32::MAX`; callers bound their messages far below.
pub fn message_frame_parts(message: &impl prost::Message) -> FrameParts {
    let len = message.encoded_len();
    let len32 = u32::try_from(len).expect("frame payload fits in u32");
    let mut body = GatherBuf {
        parts: Vec::new(),
        current: BytesMut::with_capacity(len.min(GATHER_CHUNK)),
        len: 0,
    };
    message
        .encode(&mut body)
        .expect("a gathering buffer takes any message");
    if !body.current.is_empty() {
        body.parts.push(body.current.split().freeze());
    }
    let mut crc = crc32fast::Hasher::new();
    for part in &body.parts {
        crc.update(part);
    }
    let mut header = BytesMut::with_capacity(HEADER_LEN);
    header.put_u32(len32);
    header.put_u32(crc.finalize());
    let mut parts = Vec::with_capacity(body.parts.len() + 1);
    parts.push(header.freeze());
    parts.extend(body.parts);
    FrameParts {
        parts,
        len: HEADER_LEN + len,
    }
}

/// Returns one frame holding `payload` as a fresh buffer.
pub fn frame_bytes(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_LEN + payload.len());
    encode_frame(payload, &mut out);
    out.freeze()
}

/// Incremental decoder with a size limit.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    /// Largest payload this decoder accepts.
    frame_len_max: usize,
}

impl FrameDecoder {
    /// A decoder that refuses payloads longer than `frame_len_max` bytes.
    pub fn new(frame_len_max: usize) -> Self {
        Self { frame_len_max }
    }

    /// The limit in force.
    pub fn frame_len_max(&self) -> usize {
        self.frame_len_max
    }

    /// Takes the next whole frame's payload out of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` does not yet hold a whole frame (nothing is consumed).
    /// On error the offending bytes are left in `buf`; the stream is unusable.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len > self.frame_len_max {
            return Err(FrameError::TooLarge {
                len,
                max: self.frame_len_max,
            });
        }
        if buf.len() < HEADER_LEN + len {
            buf.reserve(HEADER_LEN + len - buf.len());
            return Ok(None);
        }
        let expected = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let actual = crc32fast::hash(&buf[HEADER_LEN..HEADER_LEN + len]);
        if expected != actual {
            return Err(FrameError::BadCrc { expected, actual });
        }
        buf.advance(HEADER_LEN);
        Ok(Some(buf.split_to(len).freeze()))
    }
}

/// Outcome of parsing one frame from the front of a complete byte slice (a file's contents).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SliceFrame<'a> {
    /// A whole, valid frame: its payload and the total bytes it occupies.
    Frame {
        /// The payload.
        payload: &'a [u8],
        /// Header plus payload length.
        consumed: usize,
    },
    /// The slice ends inside the header or the payload: a torn write.
    Truncated,
    /// The frame is complete but invalid.
    Invalid(FrameError),
}

/// Parses one frame at the start of `data`, for readers that hold a whole file in memory.
pub fn parse_frame(data: &[u8], frame_len_max: usize) -> SliceFrame<'_> {
    if data.len() < HEADER_LEN {
        return SliceFrame::Truncated;
    }
    let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
    if len > frame_len_max {
        return SliceFrame::Invalid(FrameError::TooLarge {
            len,
            max: frame_len_max,
        });
    }
    if data.len() < HEADER_LEN + len {
        return SliceFrame::Truncated;
    }
    let payload = &data[HEADER_LEN..HEADER_LEN + len];
    let expected = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
    let actual = crc32fast::hash(payload);
    if expected != actual {
        return SliceFrame::Invalid(FrameError::BadCrc { expected, actual });
    }
    SliceFrame::Frame {
        payload,
        consumed: HEADER_LEN + len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gathered_frame_has_the_bytes_of_a_copied_one_and_shares_large_values() {
        use crate::data as wire;
        let large = Bytes::from(vec![7u8; SHARE_MIN + 1]);
        let sections = wire::Sections {
            sections: vec![
                wire::Section {
                    key: b"small".to_vec(),
                    value: Bytes::from_static(b"tiny"),
                    version: 3,
                    priority: Some(0),
                    changes: 9,
                },
                wire::Section {
                    key: vec![b'k'; 1000],
                    value: large.clone(),
                    version: 4,
                    priority: None,
                    changes: 0,
                },
                wire::Section {
                    key: b"empty".to_vec(),
                    value: Bytes::new(),
                    version: 0,
                    priority: None,
                    changes: 1,
                },
            ],
        };
        let gathered = message_frame_parts(&sections);
        let copied = message_frame(&sections);
        assert_eq!(gathered.to_vec(), copied.to_vec());
        assert_eq!(gathered.len(), copied.len());
        // The header, the bytes before the large value, the value itself, the bytes after.
        assert_eq!(gathered.parts().len(), 4);
        assert_eq!(gathered.parts()[2].as_ptr(), large.as_ptr());
        assert!(matches!(
            parse_frame(&gathered.to_vec(), usize::MAX),
            SliceFrame::Frame { consumed, .. } if consumed == copied.len()
        ));
        // Small fields past one buffer's room go on in new buffers, not a grown copy.
        let many = wire::Sections {
            sections: (0..3000u32)
                .map(|n| wire::Section {
                    key: n.to_be_bytes().to_vec(),
                    value: Bytes::from(vec![n as u8; 100]),
                    version: u64::from(n),
                    priority: None,
                    changes: 0,
                })
                .collect(),
        };
        let gathered = message_frame_parts(&many);
        assert_eq!(gathered.to_vec(), message_frame(&many).to_vec());
        assert!(gathered.parts().len() > 4);
        assert!(gathered.parts()[1..]
            .iter()
            .all(|part| part.len() <= GATHER_CHUNK));
        let empty = message_frame_parts(&wire::Sections::default());
        assert_eq!(
            empty.to_vec(),
            message_frame(&wire::Sections::default()).to_vec()
        );
    }

    #[test]
    fn a_message_encoded_in_place_is_the_frame_of_its_bytes() {
        use prost::Message as _;
        let message = crate::sdk::Restriction {
            shard: "pair-0".into(),
            admitted_permille: Some(250),
        };
        let mut in_place = BytesMut::from(&b"before"[..]);
        encode_message_frame(&message, &mut in_place);
        let mut expected = BytesMut::from(&b"before"[..]);
        encode_frame(&message.encode_to_vec(), &mut expected);
        assert_eq!(in_place, expected);
        assert_eq!(
            message_frame(&message).freeze(),
            frame_bytes(&message.encode_to_vec())
        );
    }

    #[test]
    fn round_trip_across_split_reads() {
        let mut wire = BytesMut::new();
        encode_frame(b"hello", &mut wire);
        encode_frame(b"", &mut wire);
        encode_frame(&[7u8; 1000], &mut wire);
        let decoder = FrameDecoder::new(4096);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        // Feed one byte at a time: the decoder must never return a partial frame.
        for byte in wire.iter() {
            buf.put_u8(*byte);
            while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                out.push(frame);
            }
        }
        assert_eq!(out.len(), 3);
        assert_eq!(&out[0][..], b"hello");
        assert!(out[1].is_empty());
        assert_eq!(&out[2][..], &[7u8; 1000][..]);
        assert!(buf.is_empty());
    }

    #[test]
    fn oversize_frame_is_refused_from_its_header() {
        let mut buf = BytesMut::new();
        buf.put_u32(4097);
        buf.put_u32(0);
        let err = FrameDecoder::new(4096).decode(&mut buf).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: 4097,
                max: 4096
            }
        );
    }

    #[test]
    fn corrupted_payload_is_refused() {
        let mut buf = BytesMut::new();
        encode_frame(b"payload", &mut buf);
        let last = buf.len() - 1;
        buf[last] ^= 0x01;
        assert!(matches!(
            FrameDecoder::new(4096).decode(&mut buf),
            Err(FrameError::BadCrc { .. })
        ));
    }

    #[test]
    fn slice_parser_tells_torn_from_corrupt() {
        let framed = frame_bytes(b"abcdef");
        assert_eq!(
            parse_frame(&framed, 64),
            SliceFrame::Frame {
                payload: b"abcdef",
                consumed: framed.len()
            }
        );
        for cut in 0..framed.len() {
            assert_eq!(parse_frame(&framed[..cut], 64), SliceFrame::Truncated);
        }
        let mut bad = framed.to_vec();
        bad[HEADER_LEN] ^= 0xff;
        assert!(matches!(
            parse_frame(&bad, 64),
            SliceFrame::Invalid(FrameError::BadCrc { .. })
        ));
    }
}
