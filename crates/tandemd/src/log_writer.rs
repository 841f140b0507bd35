//! The daemon's log writer: the event loop never waits for stderr.
//!
//! tracing's formatter hands each line to [`LogWriter`], which appends it to a shared buffer;
//! a thread of its own, asleep while the buffer is empty, writes it to stderr in large
//! writes: a line waits at most [`FLUSH_EVERY`], less once [`FLUSH_BYTES`] are waiting.
//! Writing each line with its own `write(2)` from the event loop put that cost on the loop
//! whenever thousands of shards changed at once (a start at 10,000 shards logs about 30,000
//! lines per daemon), and a stderr that blocks (a pipe to a busy journal, a full disk) would
//! have stopped the loop, and with it the node's leases. Now only the writer thread waits.
//!
//! Bounded: when the thread falls [`BUFFER_BYTES_MAX`] behind, new lines are dropped and
//! counted, and the next write starts with a line saying how many. Lines still in the buffer
//! when the process is killed (at most about [`FLUSH_EVERY`] of them) are lost; a normal exit
//! and a panic write them first ([`LogWriter::start`]'s guard and panic hook). At exit the
//! guard waits at most [`EXIT_FLUSH_MAX`] for a stalled stderr.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tracing_subscriber::fmt::MakeWriter;

/// Longest a line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(10);
/// Buffered bytes that wake the writer thread before [`FLUSH_EVERY`].
pub const FLUSH_BYTES: usize = 64 * 1024;
/// Buffered bytes past which lines are dropped.
pub const BUFFER_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Longest the guard waits at exit for the writer thread to write out the rest: a stderr that
/// stays stalled must not keep the daemon from exiting (and its supervisor from restarting it).
pub const EXIT_FLUSH_MAX: Duration = Duration::from_secs(1);

/// What the formatter writes to (see the module's text). Cloning shares the buffer.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    buffer: Vec<u8>,
    /// Lines dropped since the last write.
    dropped: u64,
    /// The guard asked the thread to write out the rest and end.
    closed: bool,
    /// The thread ended.
    finished: bool,
}

impl State {
    /// Takes what is to be written: the drop notice, then the buffer.
    fn take(&mut self) -> Vec<u8> {
        if self.dropped == 0 {
            return std::mem::take(&mut self.buffer);
        }
        let mut out = format!(
            "tandemd: {} log lines dropped: stderr fell {} MiB behind\n",
            std::mem::take(&mut self.dropped),
            BUFFER_BYTES_MAX / (1024 * 1024)
        )
        .into_bytes();
        out.append(&mut self.buffer);
        out
    }
}

/// Ends the writer thread when dropped, after it wrote everything buffered.
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock();
        state.closed = true;
        self.shared.wake.notify_all();
        let deadline = std::time::Instant::now() + EXIT_FLUSH_MAX;
        while !state.finished {
            if self
                .shared
                .wake
                .wait_until(&mut state, deadline)
                .timed_out()
            {
                // Stderr is stalled: leave the thread to it rather than hang the exit.
                return;
            }
        }
        drop(state);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl LogWriter {
    /// Starts the writer thread, and a panic hook that writes out the buffer before the
    /// panic's own message. Keep the guard until the process exits.
    pub fn start() -> std::io::Result<(Self, FlushGuard)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || write_out(&shared)
            })?;
        let hook_shared = Arc::clone(&shared);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // try_lock: a panic while the lock is held must not deadlock its own report; the
            // write happens after the lock is released, so a stalled stderr blocks only the
            // panicking thread.
            let bytes = hook_shared.state.try_lock().map(|mut state| state.take());
            if let Some(bytes) = bytes {
                let _ = std::io::stderr().write_all(&bytes);
            }
            previous(info);
        }));
        let guard = FlushGuard {
            shared: Arc::clone(&shared),
            thread: Some(thread),
        };
        Ok((Self { shared }, guard))
    }

    /// Appends one whole line (or event) to the buffer, or counts it dropped. Wakes the
    /// writer thread when the buffer was empty (it sleeps until then) and when it reaches
    /// [`FLUSH_BYTES`].
    fn append(&self, line: &[u8]) {
        let mut state = self.shared.state.lock();
        if state.closed {
            // The process is exiting and the thread may be gone: written at once.
            drop(state);
            let _ = std::io::stderr().write_all(line);
            return;
        }
        if state.buffer.len() + line.len() > BUFFER_BYTES_MAX {
            state.dropped += 1;
            return;
        }
        let before = state.buffer.len();
        state.buffer.extend_from_slice(line);
        if before == 0 || (before < FLUSH_BYTES && state.buffer.len() >= FLUSH_BYTES) {
            self.shared.wake.notify_all();
        }
    }
}

/// The writer thread: sleeps while nothing is buffered; once something is, gathers more for
/// up to [`FLUSH_EVERY`] (less when [`FLUSH_BYTES`] are waiting) and writes it all out in one
/// go. After the guard closed it, writes the rest and ends.
fn write_out(shared: &Shared) {
    let mut stderr = std::io::stderr();
    loop {
        let (bytes, closed) = {
            let mut state = shared.state.lock();
            while state.buffer.is_empty() && state.dropped == 0 && !state.closed {
                shared.wake.wait(&mut state);
            }
            if !state.closed && state.buffer.len() < FLUSH_BYTES {
                shared.wake.wait_for(&mut state, FLUSH_EVERY);
            }
            (state.take(), state.closed)
        };
        if !bytes.is_empty() {
            // Nowhere to report a failing stderr; the lines are lost either way.
            let _ = stderr.write_all(&bytes);
        }
        if closed {
            shared.state.lock().finished = true;
            shared.wake.notify_all();
            return;
        }
    }
}

/// One event's bytes, gathered while the formatter writes them and appended as a whole when
/// it is done, so that lines from different threads never interleave.
pub struct EventSink<'a> {
    writer: &'a LogWriter,
    bytes: Vec<u8>,
}

impl std::io::Write for EventSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventSink<'_> {
    fn drop(&mut self) {
        if !self.bytes.is_empty() {
            self.writer.append(&self.bytes);
        }
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = EventSink<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        EventSink {
            writer: self,
            bytes: Vec::with_capacity(256),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> LogWriter {
        LogWriter {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                wake: Condvar::new(),
            }),
        }
    }

    fn log(writer: &LogWriter, parts: &[&[u8]]) {
        let mut sink = writer.make_writer();
        for part in parts {
            sink.write_all(part).unwrap();
        }
    }

    #[test]
    fn an_event_is_appended_whole_when_its_sink_drops() {
        let writer = writer();
        let mut sink = writer.make_writer();
        sink.write_all(b"half ").unwrap();
        assert!(writer.shared.state.lock().buffer.is_empty());
        sink.write_all(b"line\n").unwrap();
        drop(sink);
        log(&writer, &[b"next\n"]);
        assert_eq!(writer.shared.state.lock().take(), b"half line\nnext\n");
        assert!(writer.shared.state.lock().take().is_empty());
    }

    #[test]
    fn lines_past_the_bound_are_dropped_and_said_so_once() {
        let writer = writer();
        let big = vec![b'x'; BUFFER_BYTES_MAX - 3];
        log(&writer, &[&big, b"ok\n"]);
        log(&writer, &[b"lost\n"]);
        log(&writer, &[b"also lost\n"]);
        let mut state = writer.shared.state.lock();
        assert_eq!(state.dropped, 2);
        let out = state.take();
        let notice = b"tandemd: 2 log lines dropped: stderr fell 4 MiB behind\n";
        assert!(out.starts_with(notice), "{:?}", &out[..80]);
        assert_eq!(out.len(), notice.len() + BUFFER_BYTES_MAX);
        assert!(out.ends_with(b"ok\n"));
        assert_eq!(state.dropped, 0);
        drop(state);
        log(&writer, &[b"room again\n"]);
        assert_eq!(writer.shared.state.lock().take(), b"room again\n");
    }

    #[test]
    fn the_guard_writes_out_what_is_buffered() {
        // The thread writes to the test's stderr; what is checked is that it empties the
        // buffer and ends when the guard drops, however long FLUSH_EVERY is.
        let (writer, guard) = LogWriter::start().unwrap();
        log(&writer, &[b"log_writer test line\n"]);
        drop(guard);
        let state = writer.shared.state.lock();
        assert!(state.closed && state.finished);
        assert!(state.buffer.is_empty());
    }
}
