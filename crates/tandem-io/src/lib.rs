//! Socket streams for tokio that are registered with the reactor for readability only.
//!
//! tokio's `TcpStream` and `UnixStream` register every socket for readable *and* writable
//! events. With edge-triggered epoll, the writable edge fires whenever the peer (or, on TCP, an
//! acknowledgement) frees room in the send buffer: on a request/answer exchange every message
//! then wakes its *sender* once more, right when it waits for the answer. On a virtual machine
//! that wake-up is what costs: measured on a 2-vCPU guest, a Unix socket ping-pong took 70 µs
//! per round trip with the writable registration and 3.8 µs without (p50; the same program,
//! only the registration differs). A checkpoint commit makes four such hops.
//!
//! [`QuietStream`] registers the socket for readability only and writes with a plain
//! non-blocking `send`. Only when the send buffer is full does a write register for
//! writability, through a duplicate of the descriptor that lives until that write went out;
//! the usual exchange of small messages never does.
//!
//! It also holds the one reading of the machine's monotonic clock that the daemon and the SDK
//! share, [`monotonic_ns`].
//!
//! Architecture invariant: no knowledge of tandem's protocols; only sockets and the clock.

#![deny(missing_docs)]

pub mod idle_poll;

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// CLOCK_MONOTONIC now, in nanoseconds: the clock `tandemd` expresses lease deadlines on for
/// its units, the same for every process of the machine (what `std::time::Instant` counts on
/// Linux). Units can timestamp what they do with it so that events of several processes can be
/// ordered.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// A connected stream socket (TCP or Unix) registered for readability only; split it into
/// halves for a reader and a writer task.
#[derive(Debug)]
pub struct QuietStream<S: AsRawFd> {
    fd: Arc<AsyncFd<S>>,
}

impl<S: AsRawFd + Into<OwnedFd>> QuietStream<S> {
    /// Takes over a connected socket that owns its descriptor (`std::net::TcpStream`,
    /// `std::os::unix::net::UnixStream`), made non-blocking here. Must be called within a
    /// tokio runtime with I/O enabled.
    pub fn new(socket: S) -> io::Result<Self> {
        set_nonblocking(socket.as_raw_fd())?;
        Ok(Self {
            fd: Arc::new(register(socket, Interest::READABLE)?),
        })
    }

    /// A reading half and a writing half, usable from different tasks. The socket closes once
    /// both are dropped.
    pub fn into_split(self) -> (ReadHalf<S>, WriteHalf<S>) {
        (
            ReadHalf {
                fd: self.fd.clone(),
            },
            WriteHalf {
                fd: self.fd,
                writable: None,
            },
        )
    }
}

/// The reading half of a [`QuietStream`].
#[derive(Debug)]
pub struct ReadHalf<S: AsRawFd> {
    fd: Arc<AsyncFd<S>>,
}

/// The writing half of a [`QuietStream`].
#[derive(Debug)]
pub struct WriteHalf<S: AsRawFd> {
    fd: Arc<AsyncFd<S>>,
    /// A duplicate of the descriptor registered for writability while a write waits for room.
    writable: Option<AsyncFd<OwnedFd>>,
}

impl<S: AsRawFd> AsyncRead for ReadHalf<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            // SAFETY: recv writes only initialised bytes, and we mark only what it wrote.
            let unfilled = unsafe { buf.unfilled_mut() };
            let room = unfilled.len();
            match guard.try_io(|fd| recv(fd.as_raw_fd(), unfilled)) {
                Ok(Ok(read)) => {
                    // A stream socket that filled less than the room it was given had no more
                    // queued: forget the readiness now rather than learn it from one more
                    // `recv` that fails with EAGAIN (on a request/answer exchange, that is one
                    // syscall per message saved). Data that arrives after this `recv` makes a
                    // new edge, which sets readiness again (tokio's readiness carries a tick,
                    // so a newer event is never cleared by this); tokio's own streams do the
                    // same on epoll.
                    if read > 0 && read < room {
                        guard.clear_ready();
                    }
                    // SAFETY: recv initialised the first `read` bytes of the unfilled part.
                    unsafe { buf.assume_init(read) };
                    buf.advance(read);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(error)) => return Poll::Ready(Err(error)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl<S: AsRawFd> WriteHalf<S> {
    /// One `send` (of `bufs[0]`) or `sendmsg` (of every buffer), waiting for room while the
    /// socket's send buffer is full.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let fd = self.fd.get_ref().as_raw_fd();
        let send = |fd: RawFd| match bufs {
            [one] => send(fd, one),
            _ => send_vectored(fd, bufs),
        };
        loop {
            let Some(writable) = &self.writable else {
                match send(fd) {
                    Ok(sent) => return Poll::Ready(Ok(sent)),
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        // The send buffer is full: wait for room, on a registration of our own
                        // (epoll reports a descriptor that is already writable at once).
                        let duplicate = duplicate(fd)?;
                        self.writable = Some(register(duplicate, Interest::WRITABLE)?);
                        continue;
                    }
                    Err(error) => return Poll::Ready(Err(error)),
                }
            };
            let mut guard = ready!(writable.poll_write_ready(cx))?;
            match guard.try_io(|_| send(fd)) {
                Ok(result) => {
                    drop(guard);
                    // Room again: back to no writable registration.
                    self.writable = None;
                    return Poll::Ready(result);
                }
                Err(_would_block) => continue,
            }
        }
    }
}

impl<S: AsRawFd> AsyncWrite for WriteHalf<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match bufs {
            [] => Poll::Ready(Ok(0)),
            _ => self.get_mut().poll_send(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // SAFETY: shutdown on a descriptor we hold has no memory-safety conditions.
        let done = unsafe { libc::shutdown(self.fd.get_ref().as_raw_fd(), libc::SHUT_WR) };
        Poll::Ready(if done == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        })
    }
}

/// Registers `socket` with the current runtime's reactor for `interest`. The descriptor is
/// owned by `socket` (an owned std socket or `OwnedFd`), which the `AsyncFd` owns from here on.
fn register<S: AsRawFd>(socket: S, interest: Interest) -> io::Result<AsyncFd<S>> {
    // SAFETY: `socket` owns its descriptor, which therefore stays open and the same for as
    // long as the `AsyncFd` that owns `socket` lives (every caller passes an owning type).
    Ok(unsafe { AsyncFd::register_with_interest(socket, interest) }?)
}

impl<S: AsRawFd> Drop for WriteHalf<S> {
    /// Shuts the writing direction down, as tokio's own write halves do: the peer reads the end
    /// of the stream even while this side's reading half lives on.
    fn drop(&mut self) {
        // SAFETY: shutdown on a descriptor we hold has no memory-safety conditions.
        unsafe { libc::shutdown(self.fd.get_ref().as_raw_fd(), libc::SHUT_WR) };
    }
}

/// Duplicates a descriptor (close-on-exec).
fn duplicate(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we hold returns a new descriptor we own.
    let duplicate = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if duplicate < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `duplicate` is a fresh, valid descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(duplicate) })
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we hold has no memory-safety conditions.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn recv(fd: RawFd, into: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    loop {
        // SAFETY: `into` is valid for writes of its length.
        let read = unsafe { libc::recv(fd, into.as_mut_ptr().cast(), into.len(), 0) };
        if read >= 0 {
            return Ok(read as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

fn send(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `bytes` is valid for reads of its length. MSG_NOSIGNAL: a closed peer is an
        // error, never SIGPIPE.
        let sent =
            unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) };
        if sent >= 0 {
            return Ok(sent as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Writes every buffer of `parts`, in order, gathering them into as few `sendmsg` calls as
/// the socket takes (no buffer is copied into another first).
pub async fn write_all_parts<W, B>(write: &mut W, parts: &[B]) -> io::Result<()>
where
    W: tokio::io::AsyncWrite + Unpin,
    B: AsRef<[u8]>,
{
    use tokio::io::AsyncWriteExt;
    let mut slices: Vec<io::IoSlice<'_>> = parts
        .iter()
        .map(|part| io::IoSlice::new(part.as_ref()))
        .filter(|slice| !slice.is_empty())
        .collect();
    let mut left: &mut [io::IoSlice<'_>] = &mut slices;
    while !left.is_empty() {
        let sent = write.write_vectored(left).await?;
        if sent == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        io::IoSlice::advance_slices(&mut left, sent);
    }
    Ok(())
}

/// Most buffers one `sendmsg` takes (the kernel's `UIO_MAXIOV`); the rest go in the next.
const IOV_MAX: usize = 1024;

fn send_vectored(fd: RawFd, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    let bufs = &bufs[..bufs.len().min(IOV_MAX)];
    // SAFETY: an all-zero msghdr is valid (no name, no control data).
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is ABI-compatible with iovec; sendmsg only reads through it.
    header.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    header.msg_iovlen = bufs.len() as _;
    loop {
        // SAFETY: `header` points at `bufs`, valid for reads for the call. MSG_NOSIGNAL as
        // in `send`.
        let sent = unsafe { libc::sendmsg(fd, &header, libc::MSG_NOSIGNAL) };
        if sent >= 0 {
            return Ok(sent as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

#[cfg(test)]
mod tests;
