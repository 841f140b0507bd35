//! The incremental frame decoder against the slice parser, over arbitrary bytes arriving in
//! arbitrary chunks.
//!
//! Properties:
//! - every payload returned is at most the limit and re-encodes to exactly the bytes consumed;
//! - `Ok(None)` consumes nothing and leaves exactly the unconsumed stream in the buffer;
//! - at every step the decoder agrees with `parse_frame` on the same bytes (frame, truncated,
//!   or the very same error), so the chunking never changes the outcome;
//! - after an error the caller stops, as the daemon does.
#![no_main]

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use tandem_fuzz::frame_input;
use tandem_proto::frame::{encode_frame, parse_frame, FrameDecoder, SliceFrame, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let Some(input) = frame_input::parse(data) else {
        return;
    };
    let stream = input.stream;
    let decoder = FrameDecoder::new(input.limit);
    assert_eq!(decoder.frame_len_max(), input.limit);

    let mut buf = BytesMut::new();
    // Bytes of the stream taken out of `buf` as whole frames, and bytes put into `buf`.
    let mut consumed = 0usize;
    let mut fed = 0usize;
    let mut payloads = Vec::new();
    let mut error = None;
    'feed: for chunk in &input.chunks {
        buf.put_slice(chunk);
        fed += chunk.len();
        loop {
            assert_eq!(
                &buf[..],
                &stream[consumed..fed],
                "buffer lost or altered bytes"
            );
            let before = buf.len();
            let parsed = parse_frame(&stream[consumed..fed], input.limit);
            match decoder.decode(&mut buf) {
                Ok(Some(payload)) => {
                    assert!(payload.len() <= input.limit, "payload above the limit");
                    let taken = before - buf.len();
                    assert_eq!(taken, HEADER_LEN + payload.len());
                    let mut reencoded = BytesMut::new();
                    encode_frame(&payload, &mut reencoded);
                    assert_eq!(
                        &reencoded[..],
                        &stream[consumed..consumed + taken],
                        "payload does not re-encode to the bytes consumed"
                    );
                    assert_eq!(
                        parsed,
                        SliceFrame::Frame {
                            payload: &payload[..],
                            consumed: taken
                        },
                        "decoder and parse_frame disagree"
                    );
                    consumed += taken;
                    payloads.push(payload);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                    assert_eq!(
                        parsed,
                        SliceFrame::Truncated,
                        "decoder waits, parser does not"
                    );
                    break;
                }
                Err(err) => {
                    assert_eq!(buf.len(), before, "an error consumed bytes");
                    assert_eq!(parsed, SliceFrame::Invalid(err.clone()));
                    error = Some(err);
                    break 'feed;
                }
            }
        }
    }

    // The same stream parsed in one piece gives the same frames and the same ending.
    let mut offset = 0;
    for payload in &payloads {
        match parse_frame(&stream[offset..], input.limit) {
            SliceFrame::Frame {
                payload: parsed,
                consumed,
            } => {
                assert_eq!(parsed, &payload[..]);
                offset += consumed;
            }
            other => panic!("whole-stream parse found {other:?} where the decoder found a frame"),
        }
    }
    assert_eq!(offset, consumed);
    match error {
        Some(err) => assert_eq!(
            parse_frame(&stream[offset..], input.limit),
            SliceFrame::Invalid(err)
        ),
        None => {
            assert_eq!(fed, stream.len());
            assert!(
                offset == stream.len()
                    || parse_frame(&stream[offset..], input.limit) == SliceFrame::Truncated,
                "decoder left a whole frame undecoded"
            );
        }
    }
});
