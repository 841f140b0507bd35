//! Each simulated node's disk: a [`MemDisk`] behind a thin wrapper that can make the node crash
//! in the middle of a write, and (for the checker's own sanity test) can lie about fsync.
//!
//! A node in synchronous mode writes and syncs in one call, so a crash *between* simulation
//! events finds unsynced bytes only on a node that defers its log syncs (as tandemd does; the
//! simulation completes each deferred sync with a later event), and loses, keeps or tears them. To model a crash during a write, the simulation *arms* the disk:
//! the next mutating operation fails as if the process died there. An append still reaches the
//! disk (the page cache, in real life) but the following fsync fails, so the crash that follows
//! sees an unsynced tail it may keep, lose or tear. The error travels up through
//! `Replica::process_ready`, so nothing that write would have acknowledged is ever sent.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;

use tandem_raft::disk::{Disk, DiskFile, FileSyncer, MemDisk, MemFile};

/// Switches shared by a disk and its open files.
#[derive(Debug, Default)]
struct Control {
    /// The next mutating operation fails, as if the process died during it.
    armed: bool,
    /// An armed operation failed: the node is dead and must be crashed by the simulation.
    fired: bool,
    /// Mutation mode: `sync` returns success without making anything durable. Data becomes
    /// durable only at the simulation's periodic write-back ([`SimDisk::write_back`]).
    lying: bool,
}

/// A node's disk. Clones share files and switches.
#[derive(Debug, Clone)]
pub struct SimDisk {
    /// The files.
    inner: MemDisk,
    /// Crash arming and lying.
    control: Rc<RefCell<Control>>,
}

fn simulated_crash() -> io::Error {
    io::Error::other("simulated crash during a write")
}

impl SimDisk {
    /// An empty disk; `lying` makes `sync` a lie (see [`Control::lying`]).
    pub fn new(lying: bool) -> Self {
        Self {
            inner: MemDisk::new(),
            control: Rc::new(RefCell::new(Control {
                lying,
                ..Control::default()
            })),
        }
    }

    /// Makes the next mutating operation fail as if the process died during it.
    pub fn arm(&self) {
        self.control.borrow_mut().armed = true;
    }

    /// Whether the disk is armed and has not fired yet.
    pub fn is_armed(&self) -> bool {
        self.control.borrow().armed
    }

    /// Whether an armed operation failed since the last crash.
    pub fn fired(&self) -> bool {
        self.control.borrow().fired
    }

    /// Fires the armed failure if armed; returns whether it did.
    fn fire_if_armed(&self) -> bool {
        let mut control = self.control.borrow_mut();
        if control.armed {
            control.armed = false;
            control.fired = true;
            true
        } else {
            false
        }
    }

    /// The crash itself: every file keeps its durable prefix plus `keep(name, unsynced_len)`
    /// bytes of its unsynced tail. Disarms the disk.
    pub fn crash(&self, keep: impl FnMut(&str, usize) -> usize) {
        self.inner.crash(keep);
        let mut control = self.control.borrow_mut();
        control.armed = false;
        control.fired = false;
    }

    /// Appends `garbage` (unsynced) to the newest log segment, as if the process was writing
    /// when it died and the disk kept junk. Returns the segment's name, if there is one.
    pub fn append_garbage(&self, garbage: &[u8]) -> Option<String> {
        let names = self.inner.list().ok()?;
        // Segment names are zero-padded, so the greatest name is the newest segment.
        let newest = names
            .into_iter()
            .filter(|name| name.starts_with("wal-") && name.ends_with(".log"))
            .max()?;
        let mut file = self.inner.open_append(&newest).ok()?;
        file.append(garbage).ok()?;
        Some(newest)
    }

    /// Lying mode's periodic write-back: everything written so far becomes durable.
    pub fn write_back(&self) {
        self.inner.crash(|_, unsynced| unsynced);
    }

    /// Total bytes stored.
    pub fn total_len(&self) -> usize {
        self.inner.total_len()
    }
}

/// An open file of a [`SimDisk`] (a clone is its syncer).
#[derive(Debug, Clone)]
pub struct SimFile {
    /// The underlying in-memory file.
    inner: MemFile,
    /// The disk, for its switches.
    disk: SimDisk,
}

impl FileSyncer for SimFile {
    fn sync(&self) -> io::Result<()> {
        if self.disk.fire_if_armed() {
            return Err(simulated_crash());
        }
        if self.disk.control.borrow().lying {
            return Ok(());
        }
        FileSyncer::sync(&self.inner)
    }
}

impl DiskFile for SimFile {
    type Syncer = SimFile;

    fn syncer(&self) -> io::Result<SimFile> {
        Ok(self.clone())
    }

    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        // Even an armed disk takes the bytes: they reach the page cache, and the fsync after
        // them is what fails. The crash then decides how much of them survives.
        self.inner.append(data)
    }

    fn sync(&mut self) -> io::Result<()> {
        FileSyncer::sync(self)
    }
}

impl Disk for SimDisk {
    type File = SimFile;

    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        self.inner.read(name)
    }

    fn open_append(&self, name: &str) -> io::Result<SimFile> {
        if self.fire_if_armed() {
            return Err(simulated_crash());
        }
        Ok(SimFile {
            inner: self.inner.open_append(name)?,
            disk: self.clone(),
        })
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        if self.fire_if_armed() {
            return Err(simulated_crash());
        }
        self.inner.truncate(name, len)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        if self.fire_if_armed() {
            return Err(simulated_crash());
        }
        self.inner.remove(name)
    }

    fn write_atomic(&self, name: &str, data: &[u8]) -> io::Result<()> {
        // Atomic by contract: a crash during it leaves the old content.
        if self.fire_if_armed() {
            return Err(simulated_crash());
        }
        self.inner.write_atomic(name, data)
    }
}
