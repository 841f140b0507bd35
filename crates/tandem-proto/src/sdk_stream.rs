//! The SDK socket's framing on a tokio stream, for both ends (the `tandem` SDK and tandemd's
//! SDK endpoint): [`read_message`] reads one framed message, [`write_message`] writes one, and
//! [`write_queued`] sends what a queue holds, coalescing a burst into one write. Only with the
//! `tokio` feature; the rest of this crate does no I/O.

use bytes::BytesMut;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::frame::{encode_frame, encode_message_frame, FrameDecoder, COALESCE_BYTES_MAX};

/// Why a framed read failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    /// A frame was bad (too large, or its checksum did not match).
    #[error(transparent)]
    Frame(#[from] crate::frame::FrameError),
    /// A whole frame held no valid message.
    #[error(transparent)]
    Decode(#[from] crate::DecodeError),
}

/// Reads one `M` (`what` names it in errors); `None` at the end of the stream. `buffer` keeps
/// what was read past the message, for the next call.
pub async fn read_message<M: Message + Default>(
    stream: &mut (impl AsyncReadExt + Unpin),
    decoder: &FrameDecoder,
    buffer: &mut BytesMut,
    what: &'static str,
) -> Result<Option<M>, StreamError> {
    loop {
        if let Some(payload) = decoder.decode(buffer)? {
            return M::decode(payload)
                .map(Some)
                .map_err(|source| crate::DecodeError { what, source }.into());
        }
        if stream.read_buf(buffer).await? == 0 {
            return Ok(None);
        }
    }
}

/// Writes one message.
pub async fn write_message(
    stream: &mut (impl AsyncWriteExt + Unpin),
    message: &impl Message,
) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    encode_frame(&message.encode_to_vec(), &mut out);
    stream.write_all(&out).await
}

/// Writes every message `queue` yields, in order, until it closes (`Ok`) or a write fails.
/// Whatever else is queued by then (up to [`COALESCE_BYTES_MAX`]) goes out in the same write:
/// one syscall for a burst.
pub async fn write_queued<M: Message>(
    queue: &mut mpsc::Receiver<M>,
    stream: &mut (impl AsyncWriteExt + Unpin),
) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    while let Some(message) = queue.recv().await {
        encode_message_frame(&message, &mut out);
        while out.len() < COALESCE_BYTES_MAX {
            match queue.try_recv() {
                Ok(message) => encode_message_frame(&message, &mut out),
                Err(_) => break,
            }
        }
        stream.write_all(&out).await?;
        out.clear();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdk::{unit_to_agent, UnitToAgent};

    fn ping(n: u32) -> UnitToAgent {
        UnitToAgent {
            kind: Some(unit_to_agent::Kind::Load(crate::sdk::ReportLoad {
                load: n,
            })),
        }
    }

    #[tokio::test]
    async fn queued_messages_arrive_whole_and_in_order_then_the_end() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let (tx, mut rx) = mpsc::channel(16);
        for n in 0..10 {
            tx.send(ping(n)).await.unwrap();
        }
        drop(tx);
        let writer = tokio::spawn(async move {
            write_queued(&mut rx, &mut a).await.unwrap();
        });
        let decoder = FrameDecoder::new(1024);
        let mut buffer = BytesMut::new();
        for n in 0..10 {
            let got: Option<UnitToAgent> = read_message(&mut b, &decoder, &mut buffer, "ping")
                .await
                .unwrap();
            assert_eq!(got, Some(ping(n)));
        }
        writer.await.unwrap();
        let end: Option<UnitToAgent> = read_message(&mut b, &decoder, &mut buffer, "ping")
            .await
            .unwrap();
        assert_eq!(end, None);
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_is_refused_before_it_is_read() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        write_message(&mut a, &ping(1)).await.unwrap();
        let decoder = FrameDecoder::new(1);
        let mut buffer = BytesMut::new();
        let error = read_message::<UnitToAgent>(&mut b, &decoder, &mut buffer, "ping")
            .await
            .unwrap_err();
        assert!(matches!(error, StreamError::Frame(_)), "{error}");
    }
}
