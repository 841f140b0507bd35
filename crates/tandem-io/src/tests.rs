use std::os::unix::net::UnixStream;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn pair() -> (QuietStream<UnixStream>, QuietStream<UnixStream>) {
    let (a, b) = UnixStream::pair().expect("socket pair");
    (
        QuietStream::new(a).expect("register a"),
        QuietStream::new(b).expect("register b"),
    )
}

#[tokio::test(flavor = "current_thread")]
async fn a_write_larger_than_the_socket_buffer_waits_for_room_and_arrives_whole() {
    let (a, b) = pair();
    let (_a_read, mut a_write) = a.into_split();
    let (mut b_read, _b_write) = b.into_split();
    // Far more than a Unix socket buffers: the writer must wait for the reader.
    let sent: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let expected = sent.clone();
    let writer = tokio::spawn(async move {
        a_write.write_all(&sent).await.expect("write");
        a_write.shutdown().await.expect("shutdown");
        // The writable registration is gone once the write went out.
        a_write.writable.is_none()
    });
    let mut received = Vec::new();
    let mut chunk = vec![0u8; 1000];
    loop {
        let read = b_read.read(&mut chunk).await.expect("read");
        if read == 0 {
            break;
        }
        received.extend_from_slice(&chunk[..read]);
        // A slow reader: the writer finds the buffer full again and again.
        tokio::task::yield_now().await;
    }
    assert!(writer.await.expect("writer task"));
    assert_eq!(received.len(), expected.len());
    assert!(received == expected, "bytes differ");
}

#[tokio::test(flavor = "current_thread")]
async fn messages_go_both_ways_between_halves_in_different_tasks() {
    let (a, b) = pair();
    let (mut a_read, mut a_write) = a.into_split();
    let (mut b_read, mut b_write) = b.into_split();
    let echo = tokio::spawn(async move {
        let mut buf = [0u8; 8];
        for _ in 0..1000 {
            b_read.read_exact(&mut buf).await.expect("echo read");
            b_write.write_all(&buf).await.expect("echo write");
        }
    });
    for round in 0..1000u64 {
        a_write
            .write_all(&round.to_le_bytes())
            .await
            .expect("write");
        let mut buf = [0u8; 8];
        a_read.read_exact(&mut buf).await.expect("read");
        assert_eq!(u64::from_le_bytes(buf), round);
    }
    echo.await.expect("echo task");
}

#[tokio::test(flavor = "current_thread")]
async fn a_closed_peer_reads_as_end_of_stream_and_a_write_to_it_fails_without_a_signal() {
    let (a, b) = pair();
    let (mut a_read, mut a_write) = a.into_split();
    drop(b);
    let mut buf = [0u8; 16];
    assert_eq!(a_read.read(&mut buf).await.expect("read"), 0);
    let error = a_write
        .write_all(b"to nobody")
        .await
        .expect_err("the peer is gone");
    assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
}

#[tokio::test(flavor = "current_thread")]
async fn dropping_the_writing_half_ends_the_stream_for_the_peer() {
    let (a, b) = pair();
    let (_a_read, a_write) = a.into_split();
    let (mut b_read, _b_write) = b.into_split();
    drop(a_write);
    let mut buf = [0u8; 4];
    assert_eq!(b_read.read(&mut buf).await.expect("read"), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn parts_written_together_arrive_whole_and_in_order() {
    let (a, b) = pair();
    let (_a_read, mut a_write) = a.into_split();
    let (mut b_read, _b_write) = b.into_split();
    // More parts than one sendmsg takes, of varied sizes (some empty), far more bytes than
    // the socket buffers: partial sends must resume at the right byte.
    let parts: Vec<Vec<u8>> = (0..3000u32)
        .map(|index| {
            let len = (index as usize * 7919) % 9000;
            (0..len).map(|byte| (byte as u32 ^ index) as u8).collect()
        })
        .collect();
    let expected: Vec<u8> = parts.concat();
    let writer = tokio::spawn(async move {
        write_all_parts(&mut a_write, &parts).await.expect("write");
        a_write.shutdown().await.expect("shutdown");
    });
    let mut received = Vec::new();
    b_read
        .read_to_end(&mut received)
        .await
        .expect("read to the end");
    writer.await.expect("writer task");
    assert_eq!(received.len(), expected.len());
    assert!(received == expected, "bytes differ");
}

/// Reads into a buffer far larger than each message, so nearly every read is short and clears
/// the readiness it used: data written from another thread just after such a read must still
/// wake the reader (a lost edge would leave it waiting until the deadline). Then, with the
/// reader idle, a tail twice the buffer's size is written and nothing after it: the read that
/// fills the buffer must keep the readiness, or the rest would wait for an edge that never
/// comes.
async fn short_reads_miss_nothing<S: AsRawFd + Into<OwnedFd>>(
    reader: S,
    mut writer: impl std::io::Write + Send + 'static,
) {
    const MESSAGES: u32 = 20_000;
    const BUFFER: usize = 16 * 1024;
    static TAIL: [u8; 2 * BUFFER] = [0xab; 2 * BUFFER];
    let stream = QuietStream::new(reader).expect("register the reader");
    let (mut read, _write) = stream.into_split();
    let (tail_go, tail_wait) = std::sync::mpsc::channel::<()>();
    let (tail_sent, tail_written) = tokio::sync::oneshot::channel::<()>();
    let sender = std::thread::spawn(move || {
        for message in 0..MESSAGES {
            writer.write_all(&message.to_le_bytes()).expect("write");
            if message % 7 == 0 {
                std::thread::yield_now();
            }
        }
        tail_wait.recv().expect("the reader asks for the tail");
        writer.write_all(&TAIL).expect("write the tail");
        tail_sent.send(()).expect("the reader waits");
        writer
    });
    let deadline = std::time::Duration::from_secs(60);
    let mut buffer = vec![0u8; BUFFER];
    let mut received = Vec::new();
    let mut read_until = async |received: &mut Vec<u8>, length: usize| {
        while received.len() < length {
            let got = tokio::time::timeout(deadline, read.read(&mut buffer))
                .await
                .expect("the reader was woken for every byte")
                .expect("read");
            assert!(got > 0, "end of stream before every byte arrived");
            received.extend_from_slice(&buffer[..got]);
        }
    };
    read_until(&mut received, MESSAGES as usize * 4).await;
    let messages: Vec<u32> = received
        .chunks_exact(4)
        .map(|chunk| u32::from_le_bytes(chunk.try_into().expect("4 bytes")))
        .collect();
    assert!(
        messages.iter().copied().eq(0..MESSAGES),
        "bytes lost or out of order"
    );
    tail_go.send(()).expect("the writer waits");
    // Every edge of the tail comes while the reader waits here.
    tail_written.await.expect("the tail written");
    let mut tail = Vec::new();
    read_until(&mut tail, TAIL.len()).await;
    assert!(tail == TAIL, "the tail differs");
    drop(sender.join().expect("writer thread"));
}

#[tokio::test(flavor = "current_thread")]
async fn on_a_unix_socket_a_write_right_after_a_short_read_still_wakes_the_reader() {
    let (reader, writer) = UnixStream::pair().expect("socket pair");
    short_reads_miss_nothing(reader, writer).await;
}

#[tokio::test(flavor = "current_thread")]
async fn on_tcp_a_write_right_after_a_short_read_still_wakes_the_reader() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let writer =
        std::net::TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
    writer.set_nodelay(true).expect("nodelay");
    let (reader, _) = listener.accept().expect("accept");
    short_reads_miss_nothing(reader, writer).await;
}
