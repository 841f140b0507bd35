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
