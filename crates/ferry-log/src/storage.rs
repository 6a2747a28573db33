//! The seam between the log and the file system, so that tests can make
//! writes and syncs fail and can simulate power loss.
//!
//! [`RealStorage`] is the file system. [`Faults`] wraps it for tests: it
//! remembers how much of each file was last synced (and which new files had
//! their directory synced), can fail the n-th write or sync or report a
//! full disk to the next preallocation, and [`Faults::power_cut`] does what
//! losing power does — every file keeps its synced bytes, what was written
//! after them reads back as zeros (the file keeps its preallocated length),
//! files whose creation was never synced into their directory vanish, and
//! everything after fails. A kill -9 cannot test
//! a missing fsync (the page cache outlives the process); this can.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

/// An open segment, written sequentially from a cursor.
pub trait LogFile: Send {
    /// Writes bytes at the cursor and moves it past them.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes what was written durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes, syncs it, and puts the cursor there.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// Reserves disk blocks so that the file is at least `len` bytes long
    /// (the new bytes read as zeros), and syncs that. The cursor stays.
    fn preallocate(&mut self, len: u64) -> io::Result<()>;
}

/// How the log reaches files.
pub trait Storage: Send + Sync {
    /// The whole content of a file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Creates a new file (it must not exist), cursor at 0.
    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>>;
    /// Opens an existing file for writing, cursor at 0.
    fn open(&self, path: &Path) -> io::Result<Box<dyn LogFile>>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries durable (files created or removed).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Makes `to` (new) hold what `from` holds, durably: a hard link where
    /// the file system allows, else a copy.
    fn keep_copy(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Writes `bytes` to a new file `to`, durably.
    fn save(&self, to: &Path, bytes: &[u8]) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealStorage;

struct RealFile(File);

impl LogFile for RealFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)?;
        self.0.sync_all()?;
        self.0.seek(SeekFrom::Start(len)).map(drop)
    }

    fn preallocate(&mut self, len: u64) -> io::Result<()> {
        let have = self.0.metadata()?.len();
        if have >= len {
            return Ok(());
        }
        rustix::fs::fallocate(
            &self.0,
            rustix::fs::FallocateFlags::empty(),
            have,
            len - have,
        )?;
        self.0.sync_all()
    }
}

fn open_new(path: &Path) -> io::Result<RealFile> {
    OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(path)
        .map(RealFile)
}

fn open_existing(path: &Path) -> io::Result<RealFile> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(RealFile)
}

impl Storage for RealStorage {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        Ok(Box::new(open_new(path)?))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        Ok(Box::new(open_existing(path)?))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn keep_copy(&self, from: &Path, to: &Path) -> io::Result<()> {
        if fs::hard_link(from, to).is_ok() {
            return Ok(());
        }
        fs::copy(from, to)?;
        File::open(to)?.sync_all()
    }

    fn save(&self, to: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut f = open_new(to)?;
        f.0.write_all(bytes)?;
        f.0.sync_all()
    }
}

#[derive(Default)]
struct FaultState {
    /// Bytes of each file known to be durable.
    synced: HashMap<PathBuf, u64>,
    /// Where each file's cursor is: bytes written so far.
    written: HashMap<PathBuf, u64>,
    /// Each file's length, preallocation included.
    size: HashMap<PathBuf, u64>,
    /// Files created whose directory has not been synced since.
    unlinked: HashSet<PathBuf>,
    writes: u64,
    syncs: u64,
    fail_write_at: Option<u64>,
    fail_sync_at: Option<u64>,
    /// The next preallocation reports a full disk.
    disk_full: bool,
    /// Each fsync takes at least this long.
    slow_sync: std::time::Duration,
    dead: bool,
}

/// A [`Storage`] over the real file system that fails on command and can
/// simulate power loss. For tests.
#[derive(Clone, Default)]
pub struct Faults {
    state: Arc<Mutex<FaultState>>,
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected {what} failure"))
}

struct FaultyFile {
    inner: RealFile,
    path: PathBuf,
    state: Arc<Mutex<FaultState>>,
}

// Each operation holds the fault state's lock across the real call, so that
// a power cut lands strictly before or after it — as a real one would with
// respect to what the disk acknowledged.
impl LogFile for FaultyFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut s = self.state.lock();
        s.writes += 1;
        if s.dead || s.fail_write_at.is_some_and(|n| s.writes >= n) {
            return Err(injected("write"));
        }
        self.inner.write_all(buf)?;
        let at = s.written.entry(self.path.clone()).or_default();
        *at += buf.len() as u64;
        let at = *at;
        let size = s.size.entry(self.path.clone()).or_default();
        *size = (*size).max(at);
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut s = self.state.lock();
        s.syncs += 1;
        if s.dead || s.fail_sync_at.is_some_and(|n| s.syncs >= n) {
            return Err(injected("sync"));
        }
        self.inner.sync_data()?;
        std::thread::sleep(s.slow_sync);
        let written = s.written.get(&self.path).copied().unwrap_or(0);
        s.synced.insert(self.path.clone(), written);
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        let mut s = self.state.lock();
        if s.dead {
            return Err(injected("truncate"));
        }
        self.inner.truncate(len)?;
        s.written.insert(self.path.clone(), len);
        s.synced.insert(self.path.clone(), len);
        s.size.insert(self.path.clone(), len);
        Ok(())
    }

    fn preallocate(&mut self, len: u64) -> io::Result<()> {
        let mut s = self.state.lock();
        if s.dead {
            return Err(injected("preallocate"));
        }
        if std::mem::take(&mut s.disk_full) {
            return Err(io::Error::from_raw_os_error(
                rustix::io::Errno::NOSPC.raw_os_error(),
            ));
        }
        self.inner.preallocate(len)?;
        let size = s.size.entry(self.path.clone()).or_default();
        *size = (*size).max(len);
        Ok(())
    }
}

impl Faults {
    /// A fault injector with no faults armed.
    pub fn new() -> Self {
        Faults::default()
    }

    /// Fails the `n`-th write from now on (1: the next), and every later one.
    pub fn fail_write_after(&self, n: u64) {
        let mut s = self.state.lock();
        s.fail_write_at = Some(s.writes + n);
    }

    /// Fails the `n`-th sync from now on (1: the next), and every later one.
    pub fn fail_sync_after(&self, n: u64) {
        let mut s = self.state.lock();
        s.fail_sync_at = Some(s.syncs + n);
    }

    /// Makes every fsync from now on take at least `d`, as a slow disk's.
    pub fn slow_syncs(&self, d: std::time::Duration) {
        self.state.lock().slow_sync = d;
    }

    /// Makes the next preallocation fail as a full disk does (`ENOSPC`).
    pub fn fill_disk(&self) {
        self.state.lock().disk_full = true;
    }

    /// Loses power: every file keeps only what was synced — the bytes
    /// written after that read back as zeros, and a preallocated file keeps
    /// its length — files whose creation was not synced into their
    /// directory vanish, and every later operation through this storage
    /// fails.
    pub fn power_cut(&self) -> io::Result<()> {
        let mut s = self.state.lock();
        s.dead = true;
        let unlinked: Vec<PathBuf> = s.unlinked.drain().collect();
        for path in unlinked {
            let _ = fs::remove_file(&path);
            s.synced.remove(&path);
        }
        for (path, &len) in &s.synced {
            if let Ok(f) = OpenOptions::new().write(true).open(path) {
                let size = s.size.get(path).copied().unwrap_or(len).max(len);
                f.set_len(len)?;
                f.set_len(size)?;
            }
        }
        Ok(())
    }

    fn track(&self, path: &Path, len: u64, created: bool) {
        let mut s = self.state.lock();
        s.written.insert(path.to_path_buf(), 0);
        s.size.insert(path.to_path_buf(), len);
        s.synced
            .insert(path.to_path_buf(), if created { 0 } else { len });
        if created {
            s.unlinked.insert(path.to_path_buf());
        }
    }

    fn alive(&self, what: &str) -> io::Result<()> {
        if self.state.lock().dead {
            Err(injected(what))
        } else {
            Ok(())
        }
    }
}

impl Storage for Faults {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.alive("read")?;
        RealStorage.read(path)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        self.alive("create")?;
        let inner = open_new(path)?;
        self.track(path, 0, true);
        Ok(Box::new(FaultyFile {
            inner,
            path: path.to_path_buf(),
            state: Arc::clone(&self.state),
        }))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        self.alive("open")?;
        let inner = open_existing(path)?;
        let len = inner.0.metadata()?.len();
        self.track(path, len, false);
        Ok(Box::new(FaultyFile {
            inner,
            path: path.to_path_buf(),
            state: Arc::clone(&self.state),
        }))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.alive("remove")?;
        fs::remove_file(path)?;
        let mut s = self.state.lock();
        s.synced.remove(path);
        s.written.remove(path);
        s.size.remove(path);
        s.unlinked.remove(path);
        Ok(())
    }

    fn keep_copy(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.alive("copy")?;
        RealStorage.keep_copy(from, to)
    }

    fn save(&self, to: &Path, bytes: &[u8]) -> io::Result<()> {
        self.alive("save")?;
        RealStorage.save(to, bytes)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.alive("directory sync")?;
        RealStorage.sync_dir(dir)?;
        self.state
            .lock()
            .unlinked
            .retain(|p| p.parent() != Some(dir));
        Ok(())
    }
}
