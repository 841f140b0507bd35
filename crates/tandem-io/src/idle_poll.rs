//! Idle polling: before the event loop's thread blocks, it watches for work for a short window
//! itself, so that the next message finds it running instead of asleep.
//!
//! On a virtual machine whose kernel halts an idle vCPU at once (cpuidle-haltpoll with
//! `guest_halt_poll_ns` 0, as on the development VM), every hop of a sync commit that finds
//! its receiver asleep costs a wake-up through the hypervisor: about 50 µs a hop there. Even
//! with the receiver's vCPU kept busy by other work, waking a blocked thread on another CPU
//! takes an inter-processor interrupt, which on that VM costs about 25 µs. A thread that is
//! still *running* when its message arrives needs neither.
//!
//! So with idle polling on (the daemon's `cluster.idle_poll_us`, which units get as
//! `TANDEM_IDLE_POLL_US` and the SDK's `tandem::runtime` applies), the tokio runtime's park
//! hook (which runs just before the thread would block in `epoll_wait`) asks the runtime's
//! own epoll instance, with a zero-timeout `poll`, whether anything is ready, again and again
//! until something is or the window is over; then it returns and the runtime's `epoll_wait`
//! finds the event at once. An epoll descriptor reads as ready when its ready list is not
//! empty, and nothing sleeps on it meanwhile, so the sender's kernel wakes no one. tokio does
//! not expose that instance: [`runtime`] finds it as the one epoll instance that building the
//! runtime added to the process (tokio holds two descriptors of it; any other outcome turns
//! polling off and says why, [`Polling::Unavailable`]).
//!
//! The cost is CPU time, and a little timer lateness: after each burst of work the loop's
//! thread stays on its CPU for up to the window (it yields the CPU between polls to anything
//! else runnable), and a timer that falls due during the window fires when the window ends
//! (a window is at most [`IDLE_POLL_US_MAX`]; the daemon's timers are milliseconds).

use std::collections::BTreeSet;
use std::os::fd::RawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest accepted window (10 ms): past that the loop is busy-waiting, not polling.
pub const IDLE_POLL_US_MAX: u64 = 10_000;

/// Serializes runtime construction in this process: the epoll descriptor is found by what
/// one build adds.
static BUILDING: Mutex<()> = Mutex::new(());

/// Whether a runtime [`runtime`] built polls before it parks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Polling {
    /// The window was zero.
    Off,
    /// It polls for the window.
    On,
    /// It was asked to but cannot: the runtime's epoll instance was not found (the reason).
    Unavailable(String),
}

/// Builds a current-thread tokio runtime (all drivers on); with a window greater than zero
/// its park hook polls for that long before the thread blocks (see the module's text).
pub fn runtime(window: Duration) -> std::io::Result<(tokio::runtime::Runtime, Polling)> {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    let _building = BUILDING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if window.is_zero() {
        return Ok((builder.build()?, Polling::Off));
    }
    let before = eventpoll_fds()?;
    // The hook is installed before the descriptor is known, so it reads it from a cell that
    // is filled once the runtime exists (and before the runtime first parks: nothing runs on
    // it until `block_on`).
    let epfd = std::sync::Arc::new(std::sync::OnceLock::<RawFd>::new());
    let hook_fd = epfd.clone();
    builder.on_thread_park(move || {
        if let Some(&fd) = hook_fd.get() {
            poll_until_ready(fd, window);
        }
    });
    let runtime = builder.build()?;
    let added: Vec<RawFd> = eventpoll_fds()?.difference(&before).copied().collect();
    match one_instance(&added) {
        Some(fd) => {
            let _ = epfd.set(fd);
            Ok((runtime, Polling::On))
        }
        None => Ok((
            runtime,
            Polling::Unavailable(format!(
                "building the runtime added epoll descriptors {added:?}, not one instance"
            )),
        )),
    }
}

/// The descriptor of the one epoll instance `fds` refer to, if they all refer to one: tokio
/// duplicates its instance's descriptor (a registry clone), so a build adds two descriptors
/// of one instance. Two descriptors are taken to be one instance when the kernel reports the
/// same registrations for both (`/proc/self/fdinfo`: inode and every watched descriptor).
fn one_instance(fds: &[RawFd]) -> Option<RawFd> {
    let registrations = |fd: RawFd| -> Option<String> {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
        // The first line is the file position, which is per descriptor.
        Some(
            info.lines()
                .filter(|line| !line.starts_with("pos:"))
                .collect(),
        )
    };
    let (&first, rest) = fds.split_first()?;
    let expected = registrations(first)?;
    rest.iter()
        .all(|&fd| registrations(fd).as_ref() == Some(&expected))
        .then_some(first)
}

/// The process's open epoll descriptors (`/proc/self/fd` entries that link to
/// `anon_inode:[eventpoll]`).
fn eventpoll_fds() -> std::io::Result<BTreeSet<RawFd>> {
    let mut fds = BTreeSet::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        // A descriptor closed since the listing (the listing's own, say) has no link.
        if std::fs::read_link(entry.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:[eventpoll]")
        {
            fds.insert(fd);
        }
    }
    Ok(fds)
}

/// Polls `epfd` with a zero timeout until it is readable (the runtime's epoll instance has
/// events) or `window` has passed, yielding the CPU between polls.
fn poll_until_ready(epfd: RawFd, window: Duration) {
    let start = Instant::now();
    loop {
        if is_ready(epfd) || start.elapsed() >= window {
            return;
        }
        // Anything else runnable on this CPU (a unit, a disk thread) goes first; with nothing
        // else, this returns at once and the thread polls again.
        std::thread::yield_now();
    }
}

fn is_ready(fd: RawFd) -> bool {
    let mut entry = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, a zero timeout; `poll` only writes `revents`.
    let result = unsafe { libc::poll(&mut entry, 1, 0) };
    // An error (EINTR, say) counts as ready: the runtime's own `epoll_wait` then decides.
    result != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_of_zero_builds_a_plain_runtime() {
        let (runtime, polling) = runtime(Duration::ZERO).unwrap();
        assert_eq!(polling, Polling::Off);
        assert_eq!(runtime.block_on(async { 7 }), 7);
    }

    #[test]
    fn an_idle_descriptor_polls_for_the_window_and_a_ready_one_returns_at_once() {
        // Not while another test builds a runtime: it would see this instance appear.
        let _building = BUILDING
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // SAFETY: plain epoll_create1 / eventfd calls; the descriptors are closed below.
        let (epfd, event) = unsafe {
            (
                libc::epoll_create1(libc::EPOLL_CLOEXEC),
                libc::eventfd(0, libc::EFD_CLOEXEC),
            )
        };
        assert!(epfd >= 0 && event >= 0);
        assert!(!is_ready(epfd), "an empty epoll instance is not ready");
        let window = Duration::from_millis(3);
        let start = Instant::now();
        poll_until_ready(epfd, window);
        assert!(start.elapsed() >= window, "it polled for the whole window");
        let mut interest = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 0,
        };
        let one: u64 = 1;
        // SAFETY: registers the eventfd and makes it readable with one 8-byte write.
        unsafe {
            assert_eq!(
                libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, event, &mut interest),
                0
            );
            assert_eq!(libc::write(event, (&one as *const u64).cast(), 8), 8);
        }
        assert!(is_ready(epfd), "an epoll instance with an event is ready");
        // A window no test could wait out: it returns because the descriptor is ready.
        poll_until_ready(epfd, Duration::from_secs(3600));
        // SAFETY: closes the two descriptors opened above.
        unsafe {
            libc::close(event);
            libc::close(epfd);
        }
    }
}
