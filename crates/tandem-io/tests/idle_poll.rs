//! `idle_poll::runtime` in a process of its own: it finds the runtime's epoll instance by what
//! the build adds to the process, which other tests' runtimes (built in parallel in the
//! library's test binary) would blur.

use std::io::Write as _;
use std::time::Duration;

use tandem_io::idle_poll::{self, Polling};
use tokio::io::AsyncReadExt as _;

#[test]
fn the_runtime_epoll_instance_is_found_and_io_and_timers_still_arrive() {
    let (runtime, polling) = idle_poll::runtime(Duration::from_millis(5)).unwrap();
    assert_eq!(
        polling,
        Polling::On,
        "the runtime's epoll instance was found"
    );
    // I/O from another thread and a timer both reach the runtime through its parked driver:
    // the park hook must return for them (its window ends or the instance has an event).
    let (near, mut far) = std::os::unix::net::UnixStream::pair().unwrap();
    let writer = std::thread::spawn(move || {
        for round in 0..50u8 {
            far.write_all(&[round]).unwrap();
            // Pacing, so that the runtime parks between bytes and the hook runs each time.
            std::thread::sleep(Duration::from_micros(200));
        }
    });
    let received = runtime.block_on(async move {
        near.set_nonblocking(true).unwrap();
        let mut near = tokio::net::UnixStream::from_std(near).unwrap();
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while got.len() < 50 {
            near.read_exact(&mut byte).await.unwrap();
            got.push(byte[0]);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        got
    });
    writer.join().unwrap();
    assert_eq!(received, (0..50).collect::<Vec<u8>>());
}

#[test]
fn a_second_runtime_is_told_apart_from_the_first() {
    // Two builds in one process, one after the other (both through the module's lock): each
    // finds its own instance, not the other's.
    let (first, polling) = idle_poll::runtime(Duration::from_micros(100)).unwrap();
    assert_eq!(polling, Polling::On);
    let (second, polling) = idle_poll::runtime(Duration::from_micros(100)).unwrap();
    assert_eq!(polling, Polling::On);
    assert_eq!(
        first.block_on(async { 1 }) + second.block_on(async { 2 }),
        3
    );
}
