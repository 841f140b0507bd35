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
//! So with idle polling on (the daemon's `cluster.idle_poll_us`; for units, the node's
//! `cluster.unit_idle_poll_us`, which they get as `TANDEM_IDLE_POLL_US` and the SDK's
//! `tandem::runtime` applies), the tokio runtime's park
//! hook (which runs just before the thread would block in `epoll_wait`) asks the runtime's
//! own epoll instance, with a zero-timeout `poll`, whether anything is ready, again and again
//! until something is or the window is over; then it returns and the runtime's `epoll_wait`
//! finds the event at once. An epoll descriptor reads as ready when its ready list is not
//! empty, and nothing sleeps on it meanwhile, so the sender's kernel wakes no one. tokio does
//! not expose that instance: [`runtime`] finds it as the one epoll instance that building the
//! runtime added to the process (tokio holds two descriptors of it; any other outcome turns
//! polling off and says why, [`Polling::Unavailable`]).
//!
//! The window adapts as the kernel's haltpoll governor adapts its own (see `Adaptive`): it
//! doubles, up to the configured one, when work came just after a poll gave up, and halves to
//! nothing when the thread then slept long. So a loop under traffic polls for the whole
//! window and an idle one hardly at all.
//!
//! The cost is CPU time, and a little timer lateness: after each burst of work the loop's
//! thread stays on its CPU for up to the window (it yields the CPU between polls to anything
//! else runnable), and a timer that falls due during the window fires when the window ends
//! (a window is at most [`IDLE_POLL_US_MAX`]; the daemon's timers are milliseconds).

use std::collections::BTreeSet;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
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
/// its park hook polls for up to that long before the thread blocks (see the module's text).
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
    let adaptive = std::sync::Arc::new(Adaptive::new(window));
    let (hook_fd, park_state, unpark_state) = (epfd.clone(), adaptive.clone(), adaptive);
    builder.on_thread_park(move || {
        if let Some(&fd) = hook_fd.get() {
            park_state.park(fd);
        }
    });
    builder.on_thread_unpark(move || unpark_state.unparked());
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

/// The window a runtime polls for, adapted to how long it then sleeps, as the kernel's
/// haltpoll governor adapts its own: a window that ended just before the event came (the
/// sleep after it was shorter than the longest window) doubles, up to the configured one; a
/// window followed by a long sleep (longer than the configured window: the loop is idle)
/// halves, and below [`GROW_START`] it is off until a short sleep opens it again. An idle
/// daemon thus stops polling after a few of its timer wake-ups, and one under traffic polls
/// for the whole window. Only the runtime's own thread touches it; atomics because the hooks
/// must be `Sync`.
struct Adaptive {
    max_ns: u64,
    /// The current window.
    window_ns: AtomicU64,
    /// When the last poll gave up and the thread went to sleep, as nanoseconds since
    /// `origin` (0: it did not, the poll found work).
    slept_at_ns: AtomicU64,
    origin: Instant,
}

/// The smallest window an adapting runtime polls for, and where it starts again after it
/// stopped: 20 µs.
pub const GROW_START: Duration = Duration::from_micros(20);

impl Adaptive {
    fn new(max: Duration) -> Self {
        let max_ns = nanos(max);
        Adaptive {
            max_ns,
            window_ns: AtomicU64::new(max_ns),
            slept_at_ns: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }

    fn now_ns(&self) -> u64 {
        nanos(self.origin.elapsed()).max(1)
    }

    /// Before the thread parks: poll for the current window; note when it gave up.
    fn park(&self, epfd: RawFd) {
        let window = Duration::from_nanos(self.window_ns.load(Ordering::Relaxed));
        let ready = !window.is_zero() && poll_until_ready(epfd, window);
        let slept_at = if ready { 0 } else { self.now_ns() };
        self.slept_at_ns.store(slept_at, Ordering::Relaxed);
    }

    /// After the thread woke: adapt the window to how long it slept.
    fn unparked(&self) {
        let slept_at = self.slept_at_ns.swap(0, Ordering::Relaxed);
        if slept_at == 0 {
            return;
        }
        let slept = self.now_ns().saturating_sub(slept_at);
        let window = self.window_ns.load(Ordering::Relaxed);
        self.window_ns
            .store(adapt(window, slept, self.max_ns), Ordering::Relaxed);
    }
}

/// The next window after one of `window_ns` that found nothing and a sleep of `slept_ns`.
fn adapt(window_ns: u64, slept_ns: u64, max_ns: u64) -> u64 {
    let start = nanos(GROW_START).min(max_ns);
    if slept_ns <= max_ns {
        // Work came soon after the window ended: a longer one would have caught it.
        window_ns.saturating_mul(2).clamp(start, max_ns)
    } else {
        let halved = window_ns / 2;
        if halved < start {
            0
        } else {
            halved
        }
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Polls `epfd` with a zero timeout until it is readable (the runtime's epoll instance has
/// events: returns true) or `window` has passed (false), yielding the CPU between polls.
fn poll_until_ready(epfd: RawFd, window: Duration) -> bool {
    let start = Instant::now();
    loop {
        if is_ready(epfd) {
            return true;
        }
        if start.elapsed() >= window {
            return false;
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
    fn the_window_grows_after_short_sleeps_and_closes_after_long_ones() {
        let max = 200_000;
        let us = |n: u64| n * 1000;
        // Short sleeps (work came within the longest window after the poll gave up) double
        // it, from GROW_START when it was off, up to the configured window.
        assert_eq!(adapt(0, us(50), max), us(20));
        assert_eq!(adapt(us(20), us(50), max), us(40));
        assert_eq!(adapt(us(160), us(1), max), max);
        assert_eq!(adapt(max, us(200), max), max);
        // Long sleeps (an idle loop) halve it, and below GROW_START it is off.
        assert_eq!(adapt(max, us(201), max), us(100));
        assert_eq!(adapt(us(25), us(10_000), max), 0);
        assert_eq!(adapt(0, us(10_000), max), 0);
        // A configured window below GROW_START still opens to exactly itself.
        assert_eq!(adapt(0, us(5), us(10)), us(10));
        // From idle (off) to traffic: a few short sleeps open the whole window again.
        let mut window = 0;
        for _ in 0..5 {
            window = adapt(window, us(80), max);
        }
        assert_eq!(window, max);
        // And from traffic to idle: timer wake-ups 10 ms apart close it within a few.
        for _ in 0..4 {
            window = adapt(window, us(10_000), max);
        }
        assert_eq!(window, 0);
    }

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
        assert!(!poll_until_ready(epfd, window), "nothing came");
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
        assert!(poll_until_ready(epfd, Duration::from_secs(3600)));
        // SAFETY: closes the two descriptors opened above.
        unsafe {
            libc::close(event);
            libc::close(epfd);
        }
    }
}
