//! The file-system surface the Raft storage needs: one flat directory of named files.
//!
//! Keeping it this small lets the same storage code run on a real directory (with fsync) and
//! on [`MemDisk`], which models what a crash does to a real disk: bytes appended but not
//! synced may be lost, and the last unsynced write may survive only in part (torn).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// A flat directory of files.
pub trait Disk {
    /// A file open for appending.
    type File: DiskFile;

    /// Names of the files in the directory, in no particular order.
    fn list(&self) -> io::Result<Vec<String>>;
    /// The whole content of a file.
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    /// Opens a file for appending, creating it (durably, directory entry included) if missing.
    fn open_append(&self, name: &str) -> io::Result<Self::File>;
    /// Cuts a file to `len` bytes and makes the cut durable.
    fn truncate(&self, name: &str, len: u64) -> io::Result<()>;
    /// Removes a file; the removal need not be durable at once.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Replaces (or creates) a file with `data` atomically and durably: after a crash the file
    /// holds either its old content or all of `data`.
    fn write_atomic(&self, name: &str, data: &[u8]) -> io::Result<()>;
}

/// A file open for appending.
pub trait DiskFile {
    /// A handle that makes the file's appended bytes durable, usable apart from the file (on
    /// another thread, for a real file).
    type Syncer: FileSyncer;

    /// Appends bytes; they are durable only after [`DiskFile::sync`].
    fn append(&mut self, data: &[u8]) -> io::Result<()>;
    /// Makes everything appended so far durable.
    fn sync(&mut self) -> io::Result<()>;
    /// A handle whose [`FileSyncer::sync`] makes durable everything appended before it runs.
    fn syncer(&self) -> io::Result<Self::Syncer>;
}

/// Makes a file's appended bytes durable; see [`DiskFile::syncer`].
pub trait FileSyncer {
    /// Makes everything appended to the file so far durable.
    fn sync(&self) -> io::Result<()>;
}

/// A real directory. `sync` is `fdatasync`; atomic writes go through a temp file, fsync,
/// rename and a directory fsync.
#[derive(Debug, Clone)]
pub struct FsDisk {
    /// The directory.
    dir: PathBuf,
}

impl FsDisk {
    /// Uses `dir`, creating it if needed.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

/// An open file of an [`FsDisk`].
#[derive(Debug)]
pub struct FsFile {
    /// The open handle, in append mode.
    file: File,
}

/// Syncs an [`FsFile`] from any thread (a duplicate of its descriptor).
#[derive(Debug)]
pub struct FsSyncer {
    file: File,
}

impl FileSyncer for FsSyncer {
    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

impl DiskFile for FsFile {
    type Syncer = FsSyncer;

    fn syncer(&self) -> io::Result<FsSyncer> {
        Ok(FsSyncer {
            file: self.file.try_clone()?,
        })
    }

    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

impl Disk for FsDisk {
    type File = FsFile;

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        fs::read(self.dir.join(name))
    }

    fn open_append(&self, name: &str) -> io::Result<FsFile> {
        let path = self.dir.join(name);
        let existed = path.exists();
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        if !existed {
            // The new directory entry must survive a crash, or a synced segment could vanish.
            self.sync_dir()?;
        }
        Ok(FsFile { file })
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(self.dir.join(name))?;
        file.set_len(len)?;
        file.sync_all()
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.dir.join(name))
    }

    fn write_atomic(&self, name: &str, data: &[u8]) -> io::Result<()> {
        let temp = self.dir.join(format!("{name}.tmp"));
        {
            let mut file = File::create(&temp)?;
            file.write_all(data)?;
            file.sync_all()?;
        }
        fs::rename(&temp, self.dir.join(name))?;
        self.sync_dir()
    }
}

/// One in-memory file: its bytes and how many of them are durable.
#[derive(Debug, Clone, Default)]
struct MemFileState {
    /// Everything written, durable or not.
    data: Vec<u8>,
    /// Length of the durable prefix.
    synced_len: usize,
    /// Which file of that name it is (as an inode number would tell): a file removed, or
    /// replaced by `write_atomic`, and created again under its name is another file.
    incarnation: u64,
}

/// An in-memory directory that can crash. Clones share the same files, so a test (or the
/// simulation) keeps a handle to crash the disk under a storage that owns another clone.
/// Single-threaded by design: the simulation runs in one thread.
#[derive(Debug, Clone, Default)]
pub struct MemDisk {
    /// The files by name.
    files: Rc<RefCell<BTreeMap<String, MemFileState>>>,
    /// The last file incarnation handed out.
    incarnations: Rc<std::cell::Cell<u64>>,
}

impl MemDisk {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    fn next_incarnation(&self) -> u64 {
        let next = self.incarnations.get() + 1;
        self.incarnations.set(next);
        next
    }

    /// Simulates a crash: every file keeps its durable prefix plus `keep(name, unsynced_len)`
    /// bytes of its unsynced tail (0 loses the tail, anything in between tears it).
    pub fn crash(&self, mut keep: impl FnMut(&str, usize) -> usize) {
        for (name, file) in self.files.borrow_mut().iter_mut() {
            let unsynced = file.data.len() - file.synced_len;
            let kept = keep(name, unsynced).min(unsynced);
            file.data.truncate(file.synced_len + kept);
            file.synced_len = file.data.len();
        }
    }

    /// Total bytes stored, durable or not.
    pub fn total_len(&self) -> usize {
        self.files
            .borrow()
            .values()
            .map(|file| file.data.len())
            .sum()
    }

    /// Overwrites a byte of a file (to model corruption in tests).
    pub fn corrupt(&self, name: &str, offset: usize) {
        if let Some(file) = self.files.borrow_mut().get_mut(name) {
            if let Some(byte) = file.data.get_mut(offset) {
                *byte ^= 0xff;
            }
        }
    }
}

/// An open file of a [`MemDisk`] (a clone is its syncer).
#[derive(Debug, Clone)]
pub struct MemFile {
    /// The disk it lives on.
    disk: MemDisk,
    /// Its name.
    name: String,
    /// The incarnation it opened.
    incarnation: u64,
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no file {name}"))
}

impl FileSyncer for MemFile {
    /// Like an fsync of an open descriptor: a file removed (or replaced) since it was opened
    /// has nothing left to make durable, and the sync succeeds without touching whatever
    /// file has its name now. (A deferred sync of a log segment that a snapshot made
    /// obsolete and the storage deleted meanwhile does this.)
    fn sync(&self) -> io::Result<()> {
        let mut files = self.disk.files.borrow_mut();
        if let Some(file) = files
            .get_mut(&self.name)
            .filter(|file| file.incarnation == self.incarnation)
        {
            file.synced_len = file.data.len();
        }
        Ok(())
    }
}

impl DiskFile for MemFile {
    type Syncer = MemFile;

    fn syncer(&self) -> io::Result<MemFile> {
        Ok(self.clone())
    }

    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        let mut files = self.disk.files.borrow_mut();
        let file = files
            .get_mut(&self.name)
            .ok_or_else(|| not_found(&self.name))?;
        file.data.extend_from_slice(data);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        FileSyncer::sync(self)
    }
}

impl Disk for MemDisk {
    type File = MemFile;

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.files.borrow().keys().cloned().collect())
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        self.files
            .borrow()
            .get(name)
            .map(|file| file.data.clone())
            .ok_or_else(|| not_found(name))
    }

    fn open_append(&self, name: &str) -> io::Result<MemFile> {
        let incarnation = self
            .files
            .borrow_mut()
            .entry(name.to_owned())
            .or_insert_with(|| MemFileState {
                incarnation: self.next_incarnation(),
                ..MemFileState::default()
            })
            .incarnation;
        Ok(MemFile {
            disk: self.clone(),
            name: name.to_owned(),
            incarnation,
        })
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        let mut files = self.files.borrow_mut();
        let file = files.get_mut(name).ok_or_else(|| not_found(name))?;
        let len = usize::try_from(len)
            .unwrap_or(usize::MAX)
            .min(file.data.len());
        file.data.truncate(len);
        file.synced_len = len;
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.files
            .borrow_mut()
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| not_found(name))
    }

    fn write_atomic(&self, name: &str, data: &[u8]) -> io::Result<()> {
        let incarnation = self.next_incarnation();
        self.files.borrow_mut().insert(
            name.to_owned(),
            MemFileState {
                data: data.to_vec(),
                synced_len: data.len(),
                incarnation,
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syncer_of_a_removed_file_succeeds_and_leaves_a_new_file_of_its_name_alone() {
        let disk = MemDisk::new();
        let mut old = disk.open_append("seg").expect("open");
        old.append(b"old").expect("append");
        let syncer = old.syncer().expect("syncer");
        disk.remove("seg").expect("remove");
        FileSyncer::sync(&syncer).expect("an fsync of an unlinked file succeeds");
        // A new file under the same name is another file: the old handle's sync does not
        // make its bytes durable.
        let mut new = disk.open_append("seg").expect("open again");
        new.append(b"new").expect("append");
        FileSyncer::sync(&syncer).expect("sync");
        disk.crash(|_, _| 0);
        assert_eq!(
            disk.read("seg").expect("read"),
            b"",
            "the new file was never synced"
        );
        // Its own handle does.
        new.append(b"new").expect("append");
        new.sync().expect("sync");
        disk.crash(|_, _| 0);
        assert_eq!(disk.read("seg").expect("read"), b"new");
    }
}
