//! The handle: a mapping's whole state (the current region, regions kept alive for direct
//! binaries, the file descriptor, the shared file position) and the rules for when memory
//! may be released. Here are the handle itself, [`Access`] (the pin every touch of mapped
//! memory holds), `close`, `info`, `sync`, `advise` and the error explanation
//! ([`Mapping::explain`]); its other operations live beside it, one concern a file:
//! `mapping/open.rs` (what `open` maps), `mapping/io.rs` (the data path) and
//! `mapping/size.rs` (growing and shrinking).
//!
//! Lifetimes, in one paragraph: data operations find the current region through an atomic
//! pointer and never lock the state. With `lock` (the default) each of them is a reader of
//! the handle's [`Readers`] (`readers.rs`: one plain store to enter, no atomic
//! read-modify-write) and `close`, `resize`, `truncate` and a growing `allocate` are its
//! writer, so they may unmap at once. With `nolock` data operations take nothing at all,
//! so replaced regions are kept until the handle is dropped. In `direct` mode, once a
//! binary pointing into the mapping has been handed out, no region is unmapped before the
//! handle is dropped either; the VM drops the handle only after the last such binary is
//! gone. The state (`RwLock<State>`) is locked by what changes or reports it: open, close,
//! size changes, `sync`, `stat`, `info`, and the explanation of a lost range.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::bounds;
use crate::error::{Error, Result};
use crate::file_users::{FileId, FileUse};
use crate::options::Options;
use crate::readers::{ReadGuard, Readers};
use crate::region::Region;

mod io;
mod open;
mod size;

pub use io::{Line, Whence};

/// What `info/1` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub size: usize,
    pub exist: bool,
    pub path: Option<PathBuf>,
    pub offset: u64,
    pub direct: bool,
    pub shared: bool,
    pub writable: bool,
    pub lock: bool,
    pub anon: bool,
    pub fixed_size: bool,
    pub max_inc_size: u64,
    pub closed: bool,
    pub address: usize,
    /// Offset of the first byte the SIGBUS handler had to replace with zeros (the file was
    /// cut by someone else), if any: from there on the mapping no longer reaches the file.
    pub lost_from: Option<usize>,
}

/// Removes a file this handle created, at final release, if the path still names it.
#[derive(Debug)]
struct UnlinkOnDrop {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for UnlinkOnDrop {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if m.dev() == self.dev && m.ino() == self.ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

#[derive(Debug)]
struct State {
    /// This handle's claim on the mapped file. Declared first, so it is released before
    /// the regions are unmapped: once they are, the kernel may give the file's inode
    /// number to a new file, which must not look mapped by us. (Releasing it early is
    /// safe: when the state is dropped, nothing can reach the regions any more.)
    file_use: Option<FileUse>,
    /// The mapped file's identity, to claim it again after a cut to zero dropped the claim.
    file_id: Option<FileId>,
    current: Option<Arc<Region>>,
    /// Regions replaced by `resize` or closed, kept mapped until drop.
    retired: Vec<Arc<Region>>,
    file: Option<File>,
    unlink: Option<UnlinkOnDrop>,
}

#[derive(Debug)]
pub struct Mapping {
    opts: Options,
    path: Option<PathBuf>,
    offset: u64,
    exist: bool,
    state: RwLock<State>,
    /// With `lock`: data operations are readers, close/resize the writer.
    readers: Readers,
    /// The current region (owned by `state.current` or `state.retired`), for lock-free reads.
    cur: AtomicPtr<Region>,
    closed: AtomicBool,
    /// The shared file position, on a cache line of its own: `read`/`write` update it,
    /// and `pread`/`pwrite` on other cores should not pay for that.
    pos: Padded<AtomicU64>,
    /// Set once a binary pointing into the mapping may exist.
    exported: AtomicBool,
}

#[repr(align(128))]
#[derive(Debug)]
struct Padded<T>(T);

/// A guard that keeps the current region usable for the duration of one operation.
///
/// Code that touches the region's memory (reads, writes, atomics, scans) must call
/// [`Access::check`] afterwards, before answering success: when someone else has cut the
/// mapped file, the access did not fault the VM to death (the SIGBUS handler put zero
/// pages there, see `sigbus.rs`), but it did not reach the file either, and `check` is
/// how the call finds out. [`Access::probe`] does the same for bytes the call only points
/// at (a `direct` binary) or is about to overwrite. Once the `Access` is dropped, the
/// public entry point passes its error through [`Mapping::explain`].
pub struct Access<'a> {
    _guard: Option<ReadGuard<'a>>,
    region: &'a Region,
}

impl Access<'_> {
    pub fn len(&self) -> usize {
        self.region.len()
    }
    pub fn is_empty(&self) -> bool {
        self.region.is_empty()
    }
    pub fn ptr(&self) -> *mut u8 {
        self.region.ptr()
    }

    /// Call after touching user bytes `[start, end)` of the pinned region: `Ok` if they
    /// all still come from the file, else `Err(Error::Truncated)`, to be answered instead
    /// of success (after [`Mapping::explain`]). Damage is recorded from the first replaced
    /// page on, so this is one load and one compare. An empty range is always fine.
    #[inline]
    pub fn check(&self, start: usize, end: usize) -> Result<()> {
        if end <= start || self.region.intact_to(end) {
            Ok(())
        } else {
            Err(Error::Truncated)
        }
    }

    /// Touches the last byte of `[start, end)` (a cut removes a file's end, so if that
    /// byte is there, all of the range is), then [`Access::check`]s the range. For bytes a
    /// call hands out without reading them, and before writing, so that a write to a cut
    /// range changes nothing.
    #[inline]
    pub fn probe(&self, start: usize, end: usize) -> Result<()> {
        if end > start {
            self.region.probe(end);
        }
        self.check(start, end)
    }
}

impl Mapping {
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// Pins the current region for one operation, or reports `Closed`.
    #[inline(always)]
    pub fn access(&self) -> Result<Access<'_>> {
        self.access_as(self.opts.lock())
    }

    /// [`Mapping::access`] for a read that hands out its bytes as a direct binary: once
    /// the handle has exported one, it does not enter the readers. From then on no region
    /// of this handle is unmapped before the handle is dropped (`may_release_early` is
    /// false for `close`, `resize`, `truncate`, a growing `allocate` and the growth of
    /// block storage and the queue, which all install through `install` or release in
    /// `close`), and `&self` keeps the handle. What a reader without the guard may meet
    /// instead: a region replaced meanwhile (still mapped, read as it was), a handle
    /// closed meanwhile (its regions still mapped), or, racing our own `truncate`, pages
    /// past the new end already replaced by zeros, which is what the binary would show
    /// a moment later anyway (the range was valid when the read began). Damage made by
    /// others is found by `Access::probe`/`check` as for any read.
    ///
    /// The flag is set by a read that holds the guard (`bytes`), before any reader can
    /// see it, and writers read it after waiting for every guard: a writer that may still
    /// unmap cannot overlap a read that skipped the guard.
    #[inline(always)]
    pub(crate) fn access_direct_read(&self) -> Result<Access<'_>> {
        let exported = self.opts.direct && self.exported.load(Ordering::Acquire);
        self.access_as(self.opts.lock() && !exported)
    }

    #[inline(always)]
    fn access_as(&self, guarded: bool) -> Result<Access<'_>> {
        let guard = if guarded {
            Some(self.readers.read())
        } else {
            None
        };
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let p = self.cur.load(Ordering::Acquire);
        if p.is_null() {
            return Err(Error::Closed);
        }
        // SAFETY: `cur` always points at a region owned by `state.current` or
        // `state.retired`. With `guarded`, we hold a read guard, and regions are freed
        // only while `readers.write()` excludes every reader. Without it, regions are
        // never freed before `Drop` (`nolock`, or `direct` with a binary exported: see
        // `may_release_early` and `access_direct_read`), and `Drop` cannot run while
        // `&self` is borrowed.
        let region = unsafe { &*p };
        Ok(Access {
            _guard: guard,
            region,
        })
    }

    /// What a call answers for the `Error::Truncated` of [`Access::check`], once its
    /// `Access` is dropped: `truncated` if the file now ends before the first byte the
    /// mapping lost, `eio` if it covers it (the page could not be read or written, or the
    /// file was cut and grown back), `enomem` for anonymous memory (no page to give).
    /// Other errors pass unchanged. Must not be called with an `Access` of this mapping
    /// held (it takes the state lock).
    #[inline(always)]
    pub fn explain(&self, e: Error) -> Error {
        match e {
            Error::Truncated => self.lost(),
            e => e,
        }
    }

    /// [`Mapping::explain`] on a result.
    #[inline(always)]
    fn answer<T>(&self, r: Result<T>) -> Result<T> {
        r.map_err(|e| self.explain(e))
    }

    #[cold]
    #[inline(never)]
    fn lost(&self) -> Error {
        if self.opts.anon {
            return Error::Os(libc::ENOMEM);
        }
        let from = match self.access() {
            Ok(a) => a.region.vanished(),
            Err(_) => return Error::Truncated, // closed meanwhile: the access still failed
        };
        let Some(from) = from else {
            return Error::Truncated; // a region that has since been replaced
        };
        let st = self.state.read();
        let need = self.offset.saturating_add(from as u64);
        match st.file.as_ref().map(|f| f.metadata()) {
            Some(Ok(m)) if m.len() > need => Error::Os(libc::EIO),
            _ => Error::Truncated,
        }
    }

    /// Whether close/resize may unmap a region right away.
    fn may_release_early(&self) -> bool {
        self.opts.lock() && !(self.opts.direct && self.exported.load(Ordering::Acquire))
    }

    /// Current size in bytes.
    pub fn size(&self) -> Result<usize> {
        Ok(self.access()?.len())
    }

    fn check_writable(&self) -> Result<()> {
        if self.opts.write {
            Ok(())
        } else {
            Err(Error::Eacces)
        }
    }

    /// `flush/1` (`wait == false`: schedule write-back) and `sync/1`, `datasync/1`
    /// (`wait == true`: data on disk before returning; `data_only` skips metadata).
    pub fn sync(&self, wait: bool, data_only: bool) -> Result<()> {
        let st = self.state.read();
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let (Some(r), Some(f)) = (&st.current, &st.file) else {
            return Ok(()); // anonymous memory: nothing to write back
        };
        if !self.opts.is_shared() {
            return Ok(()); // private pages never reach the file
        }
        r.msync(wait)?;
        if wait {
            if data_only {
                f.sync_data()?;
            } else {
                f.sync_all()?;
            }
        }
        Ok(())
    }

    /// `advise/4`. `dont_need` on private or anonymous memory would discard data, so it is
    /// skipped there.
    pub fn advise(&self, off: u64, len: u64, advice: libc::c_int) -> Result<()> {
        let a = self.access()?;
        if advice == libc::MADV_DONTNEED && (!self.opts.is_shared() || self.opts.anon) {
            return bounds::advise_range(0, off, len, a.len(), 1).map(|_| ());
        }
        a.region.advise(off, len, advice)
    }

    /// The current region, or `Closed`.
    fn current(st: &State, closed: &AtomicBool) -> Result<Arc<Region>> {
        if closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        st.current.clone().ok_or(Error::Closed)
    }

    /// Makes `st.current` the new region, keeping the old descriptor while a reader or a
    /// binary may still use it.
    fn install(&self, st: &mut State, new: Region) {
        let new = Arc::new(new);
        self.cur
            .store(Arc::as_ptr(&new) as *mut Region, Ordering::Release);
        let prev = st.current.replace(new);
        if !self.may_release_early() {
            st.retired.extend(prev);
        }
    }

    /// The mapped file's metadata (`None` for anonymous memory).
    pub fn stat(&self) -> Result<Option<std::fs::Metadata>> {
        let st = self.state.read();
        Self::current(&st, &self.closed)?;
        match &st.file {
            Some(f) => Ok(Some(f.metadata()?)),
            None => Ok(None),
        }
    }

    /// Marks the handle closed and closes the file. Memory is released now if no reader or
    /// binary can reach it, else when the handle is dropped. Idempotent.
    pub fn close(&self) {
        let mut st = self.state.write();
        let _excl = self.opts.lock().then(|| self.readers.write());
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        st.file = None;
        if self.may_release_early() {
            self.cur.store(ptr::null_mut(), Ordering::Release);
            st.file_use = None; // first: see `State::file_use`
            st.current = None;
            st.retired.clear();
            st.unlink = None;
        }
    }

    pub fn info(&self) -> Info {
        let st = self.state.read();
        let closed = self.closed.load(Ordering::Acquire);
        let (size, address, lost_from) = match (&st.current, closed) {
            (Some(r), false) => (r.len(), r.ptr() as usize, r.vanished()),
            _ => (0, 0, None),
        };
        Info {
            size,
            exist: self.exist,
            path: self.path.clone(),
            offset: self.offset,
            direct: self.opts.direct,
            shared: self.opts.is_shared(),
            writable: self.opts.write,
            lock: self.opts.lock(),
            anon: self.opts.anon,
            fixed_size: self.opts.fixed_size,
            max_inc_size: self.opts.max_inc_size,
            closed,
            address,
            lost_from,
        }
    }
}
