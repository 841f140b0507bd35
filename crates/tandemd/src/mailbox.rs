//! A channel to a disk thread whose receiver can *linger*: wait until a deadline and take
//! everything that arrived meanwhile in one go, without being woken by each send.
//!
//! Waking a sleeping thread costs the sender a futex call and both CPUs a context switch (on
//! a virtual machine, a wake-up of an idle vCPU costs tens of µs). The replica writer and
//! sync threads were woken once per commit, twice per commit per daemon; their work does
//! not hurry (nothing a STANDBY acknowledges waits for it), so they now gather: a send wakes
//! the receiver only when it waits for anything at all (it was idle), or when the sender
//! says the work is urgent (enough bytes queued that waiting would cost throughput).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

/// How the receiver waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// It is not waiting.
    No,
    /// For anything: the next send wakes it.
    Idle,
    /// Until a deadline: only an urgent send wakes it earlier.
    Lingering,
}

struct State<T> {
    items: VecDeque<T>,
    waiting: Waiting,
    /// An urgent send arrived since the receiver last took what was queued.
    urgent: bool,
    senders: usize,
    receiver_gone: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

/// The sending side; cloneable.
pub struct Sender<T>(Arc<Shared<T>>);

/// The receiving side.
pub struct Receiver<T>(Arc<Shared<T>>);

/// A new mailbox.
pub fn mailbox<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            waiting: Waiting::No,
            urgent: false,
            senders: 1,
            receiver_gone: false,
        }),
        ready: Condvar::new(),
    });
    (Sender(shared.clone()), Receiver(shared))
}

/// The receiver is gone; the item comes back.
#[derive(PartialEq, Eq)]
pub struct Closed<T>(pub T);

impl<T> std::fmt::Debug for Closed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the receiver is gone")
    }
}

impl<T> Sender<T> {
    /// Queues `item`. The receiver wakes at once if it waits for anything, or if it lingers
    /// and `urgent` is set; otherwise it takes the item at its deadline.
    pub fn send(&self, item: T, urgent: bool) -> Result<(), Closed<T>> {
        let mut state = self.0.state.lock();
        if state.receiver_gone {
            return Err(Closed(item));
        }
        state.items.push_back(item);
        state.urgent |= urgent;
        let wake = match state.waiting {
            Waiting::No => false,
            Waiting::Idle => true,
            Waiting::Lingering => urgent,
        };
        drop(state);
        if wake {
            self.0.ready.notify_one();
        }
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.state.lock().senders += 1;
        Self(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        state.senders -= 1;
        if state.senders == 0 {
            drop(state);
            self.0.ready.notify_one();
        }
    }
}

impl<T> Receiver<T> {
    /// Waits until something is queued and takes all of it; `None` once every sender is gone
    /// and nothing is left.
    pub fn recv_all(&self) -> Option<Vec<T>> {
        let mut state = self.0.state.lock();
        loop {
            if !state.items.is_empty() {
                state.urgent = false;
                return Some(state.items.drain(..).collect());
            }
            if state.senders == 0 {
                return None;
            }
            state.waiting = Waiting::Idle;
            self.0.ready.wait(&mut state);
            state.waiting = Waiting::No;
        }
    }

    /// Waits until `until`, or until an urgent send (or one that is already queued), and
    /// takes whatever is queued then, possibly nothing; `None` once every sender is gone and
    /// nothing is left.
    pub fn linger_until(&self, until: Instant) -> Option<Vec<T>> {
        let mut state = self.0.state.lock();
        loop {
            let due = state.urgent || Instant::now() >= until;
            if due || state.senders == 0 {
                if state.items.is_empty() && state.senders == 0 {
                    return None;
                }
                state.urgent = false;
                return Some(state.items.drain(..).collect());
            }
            state.waiting = Waiting::Lingering;
            let _ = self.0.ready.wait_until(&mut state, until);
            state.waiting = Waiting::No;
        }
    }

    /// Takes what is queued without waiting.
    pub fn try_recv_all(&self) -> Vec<T> {
        let mut state = self.0.state.lock();
        state.urgent = false;
        state.items.drain(..).collect()
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        state.receiver_gone = true;
        state.items.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn an_idle_receiver_wakes_for_a_send_and_takes_all_that_is_queued() {
        let (sender, receiver) = mailbox();
        sender.send(1, false).expect("queued");
        sender.send(2, false).expect("queued");
        assert_eq!(receiver.recv_all(), Some(vec![1, 2]));
        let thread = std::thread::spawn(move || receiver.recv_all());
        sender.send(3, false).expect("queued");
        assert_eq!(thread.join().expect("joined"), Some(vec![3]));
    }

    #[test]
    fn a_lingering_receiver_waits_for_its_deadline_unless_a_send_is_urgent() {
        let (sender, receiver) = mailbox();
        let until = Instant::now() + Duration::from_millis(50);
        sender.send(1, false).expect("queued");
        sender.send(2, false).expect("queued");
        assert_eq!(receiver.linger_until(until), Some(vec![1, 2]));
        assert!(Instant::now() >= until, "not urgent: taken at the deadline");
        // An urgent send ends the wait long before a deadline that is far away.
        let far = Instant::now() + WAIT * 100;
        let thread = std::thread::spawn(move || (receiver.linger_until(far), receiver));
        sender.send(3, false).expect("queued");
        sender.send(4, true).expect("queued");
        let (taken, receiver) = thread.join().expect("joined");
        assert!(Instant::now() < far);
        assert_eq!(taken, Some(vec![3, 4]));
        // Nothing arrived: the deadline passes with nothing taken.
        assert_eq!(receiver.linger_until(Instant::now()), Some(vec![]));
    }

    #[test]
    fn the_receiver_learns_that_every_sender_is_gone_after_what_they_queued() {
        let (sender, receiver) = mailbox();
        let other = sender.clone();
        sender.send(1, false).expect("queued");
        drop(sender);
        other.send(2, false).expect("queued");
        drop(other);
        assert_eq!(receiver.recv_all(), Some(vec![1, 2]));
        assert_eq!(receiver.recv_all(), None);
        assert_eq!(receiver.linger_until(Instant::now() + WAIT * 100), None);
        // A receiver waiting when the last sender goes wakes up to learn it.
        let (sender, receiver) = mailbox::<u32>();
        let thread = std::thread::spawn(move || receiver.recv_all());
        drop(sender);
        assert_eq!(thread.join().expect("joined"), None);
    }

    #[test]
    fn a_send_to_a_receiver_that_is_gone_gives_the_item_back() {
        let (sender, receiver) = mailbox();
        drop(receiver);
        assert_eq!(sender.send(7, false), Err(Closed(7)));
    }
}
