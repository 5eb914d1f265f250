//! A handle's whole state: the current region, regions kept alive for direct binaries, the
//! file descriptor, the shared file position, and the rules for when memory may be released.
//!
//! Lifetimes, in one paragraph: readers find the current region through an atomic pointer.
//! With `lock` (the default) every data operation also holds the read side of an `RwLock`
//! and `close`/`resize` hold the write side, so they may unmap at once. With `nolock` data
//! operations take no lock at all, so `close`/`resize` never unmap: replaced regions are
//! kept until the handle is dropped. In `direct` mode, once a binary pointing into the
//! mapping has been handed out, no region is unmapped before the handle is dropped either;
//! the VM drops the handle only after the last such binary is gone.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::atomics::{self, Op};
use crate::bounds;
use crate::error::{Error, Result};
use crate::file_users::{self, FileId, FileUse};
use crate::options::Options;
use crate::readers::{ReadGuard, Readers};
use crate::region::{page_size, MapSpec, Placement, Region};

/// Base for `file:position/2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whence {
    Bof,
    Cur,
    Eof,
}

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

/// Opens the file to map. Nothing that cannot be mapped may make this wait: a FIFO opened
/// for reading waits for a writer (and holds a dirty scheduler meanwhile), a device's open
/// may wait too. So anything that is not a regular file (or a directory, which gets its
/// own error) is refused before it is opened, and the open is non-blocking, so that a
/// FIFO put in its place meanwhile cannot block either; `map_file` then checks what was
/// opened. `O_NONBLOCK` is cleared again once the file is known to be a regular one.
fn open_file(path: &Path, opts: &Options) -> Result<(File, bool)> {
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
        return Err(Error::Einval);
    }
    let rw = opts.write || opts.truncate || opts.fit;
    let mut o = OpenOptions::new();
    o.read(true).write(rw).custom_flags(libc::O_NONBLOCK);
    match o.open(path) {
        Ok(f) => Ok((f, false)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) && opts.create => {
            let mut c = OpenOptions::new();
            c.read(true)
                .write(true)
                .create_new(true)
                .mode(opts.chmod)
                .custom_flags(libc::O_NONBLOCK);
            match c.open(path) {
                Ok(f) => Ok((f, true)),
                // Someone else created it in between: open theirs.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok((o.open(path)?, false)),
                Err(e) => Err(e.into()),
            }
        }
        // A socket (swapped in after the check above) cannot be opened at all.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Err(Error::Einval),
        Err(e) => Err(e.into()),
    }
}

/// File systems whose regular files are not data that can be mapped: `/proc`, `/sys`.
fn pseudo_file_system(f: &File) -> bool {
    const PROC_SUPER_MAGIC: libc::c_long = 0x9fa0;
    const SYSFS_MAGIC: libc::c_long = 0x6265_6572;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: fstatfs fills the buffer it is given (of the right type) for an open fd.
    if unsafe { libc::fstatfs(f.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: initialised by the successful call above.
    let kind = unsafe { st.assume_init() }.f_type;
    matches!(kind as libc::c_long, PROC_SUPER_MAGIC | SYSFS_MAGIC)
}

/// Clears the `O_NONBLOCK` that `open_file` opened with (it has no use on a regular file).
fn clear_nonblock(f: &File) {
    // SAFETY: F_GETFL and F_SETFL only read and set the status flags of an fd we own.
    unsafe {
        let flags = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
}

fn set_len(f: &File, len: u64) -> Result<()> {
    f.set_len(len).map_err(Error::from)
}

/// Makes a shared file at least `end` bytes long (what growing a mapping asks of it).
fn extend_to(f: &File, end: u64) -> Result<()> {
    if f.metadata()?.len() < end {
        set_len(f, end)?;
    }
    Ok(())
}

/// Reserves disk blocks for bytes `[off, off + len)` of a mapping that starts at byte
/// `base` of the file (`fallocate`, which also extends the file to the end of the range).
fn reserve_blocks(f: &File, base: u64, off: u64, len: u64) -> Result<()> {
    let start = base.checked_add(off).ok_or(Error::Einval)?;
    let (start, len) = match (libc::off_t::try_from(start), libc::off_t::try_from(len)) {
        (Ok(s), Ok(l)) => (s, l),
        _ => return Err(Error::Einval),
    };
    // SAFETY: `f` is an open file descriptor owned by the handle, kept open by the state
    // lock the caller holds; fallocate only changes the file's block allocation and, past
    // its end, its size.
    match unsafe { libc::fallocate(f.as_raw_fd(), 0, start, len) } {
        0 => Ok(()),
        _ => match Error::last_os() {
            // The file system cannot reserve blocks ahead: nothing more to do.
            Error::Os(libc::EOPNOTSUPP) => Ok(()),
            e => Err(e),
        },
    }
}

impl Mapping {
    /// Maps `len` bytes of `path` starting at `offset` (or anonymous memory with `anon`).
    /// `len == 0` means: the `{size, N}` option, else the rest of the existing file.
    pub fn open(path: Option<&Path>, offset: u64, len: u64, opts: Options) -> Result<Mapping> {
        opts.validate()?;
        let len = match (len, opts.size) {
            (0, Some(s)) => s,
            (l, Some(s)) if l != s => return Err(Error::Einval),
            (l, _) => l,
        };
        let place = match opts.address {
            None => Placement::Any,
            Some(a) => {
                let a = usize::try_from(a).map_err(|_| Error::Einval)?;
                Placement::Exact(a / page_size() * page_size())
            }
        };
        let spec = MapSpec {
            prot: opts.prot(),
            flags: opts.map_flags(),
            fd: None,
            offset,
        };
        if opts.anon {
            if offset != 0 || len == 0 {
                return Err(Error::Einval);
            }
            let len = usize::try_from(len).map_err(|_| Error::Einval)?;
            let region = Region::map(&spec, len, place)?;
            return Ok(Mapping::new(opts, None, offset, false, region, None, None));
        }
        let path = path.ok_or(Error::Einval)?;
        let (file, created) = open_file(path, &opts)?;
        match Self::map_file(path, file, created, offset, len, place, spec, opts) {
            Err(e) if created => {
                let _ = std::fs::remove_file(path);
                Err(e)
            }
            r => r,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn map_file(
        path: &Path,
        file: File,
        created: bool,
        offset: u64,
        len: u64,
        place: Placement,
        mut spec: MapSpec,
        opts: Options,
    ) -> Result<Mapping> {
        let meta = file.metadata()?;
        if meta.is_dir() {
            return Err(Error::Os(libc::EISDIR));
        }
        if !meta.is_file() || pseudo_file_system(&file) {
            return Err(Error::Einval);
        }
        clear_nonblock(&file);
        // Decide everything first, change the file last: an open that fails leaves an
        // existing file as it was (a created one is removed by the caller).
        let truncate = opts.truncate && !created;
        let file_id = (meta.dev(), meta.ino());
        let file_use = FileUse::new(file_id);
        if truncate && file_use.shared_with_others() {
            // Emptying a file that another handle maps would make that one fault.
            return Err(Error::Os(libc::EBUSY));
        }
        let fsize = if truncate { 0 } else { meta.len() };
        let fresh = created || fsize == 0 && (opts.create || opts.truncate);
        let len = if len == 0 {
            fsize
                .checked_sub(offset)
                .filter(|&l| l > 0)
                .ok_or(Error::Einval)?
        } else {
            len
        };
        let end = offset.checked_add(len).ok_or(Error::Einval)?;
        let (len, new_size) = if end > fsize {
            if !(fresh || opts.fit) {
                return Err(Error::Einval);
            }
            if !(opts.write || created) {
                return Err(Error::Eacces);
            }
            (len, Some(end))
        } else if end < fsize && opts.fit {
            (fsize - offset, None)
        } else if end < fsize && offset == 0 {
            // A length other than the file's is a mistake unless `fit` says otherwise;
            // windows into a file start at a non-zero offset.
            return Err(Error::Einval);
        } else {
            (len, None)
        };
        let new_size = if truncate { Some(end) } else { new_size };
        let len = usize::try_from(len).map_err(|_| Error::Einval)?;
        spec.fd = Some(file.as_raw_fd());
        if new_size.is_some() {
            // Pages past the current end cannot be prefaulted yet.
            spec.flags &= !libc::MAP_POPULATE;
        }
        // Mapping past the end of the file is allowed; nothing touches those pages until
        // the file has been sized below.
        let region = Region::map(&spec, len, place)?;
        if let Some(size) = new_size {
            if truncate {
                set_len(&file, 0)?;
            }
            set_len(&file, size)?;
            if opts.populate {
                let _ = region.advise(0, 0, libc::MADV_WILLNEED);
            }
        }
        let unlink = (opts.auto_unlink && created).then(|| UnlinkOnDrop {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        });
        let mut m = Mapping::new(
            opts,
            Some(path.to_path_buf()),
            offset,
            !created,
            region,
            Some(file),
            unlink,
        );
        let st = m.state.get_mut();
        st.file_use = Some(file_use);
        st.file_id = Some(file_id);
        Ok(m)
    }

    fn new(
        opts: Options,
        path: Option<PathBuf>,
        offset: u64,
        exist: bool,
        region: Region,
        file: Option<File>,
        unlink: Option<UnlinkOnDrop>,
    ) -> Mapping {
        let region = Arc::new(region);
        let cur = AtomicPtr::new(Arc::as_ptr(&region) as *mut Region);
        Mapping {
            opts,
            path,
            offset,
            exist,
            state: RwLock::new(State {
                file_use: None,
                file_id: None,
                current: Some(region),
                retired: Vec::new(),
                file,
                unlink,
            }),
            readers: Readers::default(),
            cur,
            closed: AtomicBool::new(false),
            pos: Padded(AtomicU64::new(0)),
            exported: AtomicBool::new(false),
        }
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// Pins the current region for one operation, or reports `Closed`.
    #[inline]
    pub fn access(&self) -> Result<Access<'_>> {
        let guard = if self.opts.lock {
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
        // `state.retired`. With `lock`, we hold a read guard, and regions are freed only
        // while `readers.write()` excludes every reader. Without `lock`, regions are never freed before `Drop`
        // (see `may_release_early`), and `Drop` cannot run while `&self` is borrowed.
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
        self.opts.lock && !(self.opts.direct && self.exported.load(Ordering::Acquire))
    }

    /// Current size in bytes.
    pub fn size(&self) -> Result<usize> {
        Ok(self.access()?.len())
    }

    /// Copies (or, in direct mode, exposes) up to `len` bytes at `pos`. `f` receives the
    /// bytes; `Ok(None)` is end of file.
    #[inline]
    pub fn pread<T>(&self, pos: u64, len: u64, f: impl FnOnce(&[u8]) -> T) -> Result<Option<T>> {
        self.answer(self.pread_in(pos, len, f))
    }

    #[inline(always)]
    fn pread_in<T>(&self, pos: u64, len: u64, f: impl FnOnce(&[u8]) -> T) -> Result<Option<T>> {
        let a = self.access()?;
        let Some((s, e)) = bounds::read_range(pos, len, a.len()) else {
            return Ok(None);
        };
        let t = f(self.bytes(&a, s, e));
        a.probe(s, e)?;
        Ok(Some(t))
    }

    /// The bytes `[s, e)` of the pinned region, marking the mapping exported in direct mode.
    fn bytes<'a>(&self, a: &'a Access<'_>, s: usize, e: usize) -> &'a [u8] {
        if self.opts.direct {
            // Read first: a store on every read would bounce this cache line between cores.
            if !self.exported.load(Ordering::Relaxed) {
                self.exported.store(true, Ordering::Release);
            }
        }
        self.bytes_unexported(a, s, e)
    }

    /// Like `pread`, for direct mode: the slice stays valid until this mapping is dropped.
    /// The caller must tie the slice's lifetime to the handle (a resource binary does).
    pub fn pread_direct(&self, pos: u64, len: u64) -> Result<Option<(*const u8, usize)>> {
        debug_assert!(self.opts.direct);
        self.pread(pos, len, |b| (b.as_ptr(), b.len()))
    }

    /// Reads from the current position and advances it by what was read.
    pub fn read<T>(&self, len: u64, f: impl FnOnce(&[u8]) -> T) -> Result<Option<T>> {
        self.answer(self.read_in(len, f))
    }

    #[inline(always)]
    fn read_in<T>(&self, len: u64, f: impl FnOnce(&[u8]) -> T) -> Result<Option<T>> {
        let a = self.access()?;
        loop {
            let p = self.pos.0.load(Ordering::Acquire);
            let Some((s, e)) = bounds::read_range(p, len, a.len()) else {
                return Ok(None);
            };
            if self
                .pos
                .0
                .compare_exchange(p, e as u64, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let t = f(self.bytes(&a, s, e));
                self.touched_at(&a, s, e, p)?;
                return Ok(Some(t));
            }
        }
    }

    /// Finds the line at the current position, looking at most `limit` bytes ahead, and
    /// advances the position past it. `f` gets the line bytes (including `\r\n` / `\n`).
    pub fn read_line<T>(&self, limit: usize, f: impl FnOnce(&[u8], bool) -> T) -> Result<Line<T>> {
        self.answer(self.read_line_in(limit, f))
    }

    #[inline(always)]
    fn read_line_in<T>(&self, limit: usize, f: impl FnOnce(&[u8], bool) -> T) -> Result<Line<T>> {
        let a = self.access()?;
        loop {
            let p = self.pos.0.load(Ordering::Acquire);
            let Some((s, e)) = bounds::read_range(p, u64::MAX, a.len()) else {
                return Ok(Line::Eof);
            };
            let window = self.bytes_unexported(&a, s, e);
            let scan = &window[..window.len().min(limit)];
            let end = match scan.iter().position(|&c| c == b'\n') {
                Some(i) => s + i + 1,
                None if scan.len() == window.len() => e,
                None => {
                    a.check(s, s + scan.len())?;
                    return Ok(Line::TooLong);
                }
            };
            if self
                .pos
                .0
                .compare_exchange(p, end as u64, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let line = self.bytes(&a, s, end);
                let crlf = line.ends_with(b"\r\n");
                let t = f(line, crlf);
                self.touched_at(&a, s, end, p)?;
                return Ok(Line::Found(t));
            }
        }
    }

    /// After `read`/`read_line` moved the position from `p` to `e` over the bytes `[s, e)`:
    /// checks them, and on error puts the position back (if no one moved it since).
    fn touched_at(&self, a: &Access<'_>, s: usize, e: usize, p: u64) -> Result<()> {
        a.probe(s, e).inspect_err(|_| {
            let _ = self
                .pos
                .0
                .compare_exchange(e as u64, p, Ordering::AcqRel, Ordering::Relaxed);
        })
    }

    /// The bytes `[s, e)` of the pinned region, without marking the mapping exported:
    /// for slices that do not leave the call (`bytes` marks it first for those that may).
    fn bytes_unexported<'a>(&self, a: &'a Access<'_>, s: usize, e: usize) -> &'a [u8] {
        // SAFETY: `s <= e <= len` (checked by the caller's bounds helper) and the region is
        // pinned by `a`. Other writers may change these bytes concurrently (that is what
        // shared memory is for); the slice is only ever scanned, copied or handed to the
        // VM as the contents of a resource binary, never used to make decisions in Rust.
        unsafe { std::slice::from_raw_parts(a.ptr().add(s), e - s) }
    }

    fn check_writable(&self) -> Result<()> {
        if self.opts.write {
            Ok(())
        } else {
            Err(Error::Eacces)
        }
    }

    /// Writes all of `data` at `pos`, or nothing. An empty write needs no room: it is
    /// accepted at every file position, past the end too (as raw files do).
    #[inline]
    pub fn pwrite(&self, pos: u64, data: &[u8]) -> Result<()> {
        self.answer(self.pwrite_in(pos, data))
    }

    #[inline(always)]
    fn pwrite_in(&self, pos: u64, data: &[u8]) -> Result<()> {
        let a = self.access()?;
        self.check_writable()?;
        if data.is_empty() {
            return bounds::empty_write_ok(pos);
        }
        let (s, _) = bounds::write_range(pos, data.len(), a.len())?;
        self.store(&a, s, data)
    }

    /// Copies `data` to byte `s` of the pinned region; the caller has checked that
    /// `[s, s + data.len())` lies inside it and that the mapping is writable. A range the
    /// file no longer has is refused before anything is written.
    fn store(&self, a: &Access<'_>, s: usize, data: &[u8]) -> Result<()> {
        debug_assert!(s + data.len() <= a.len());
        let e = s + data.len();
        a.probe(s, e)?;
        // SAFETY: [s, s + data.len()) lies inside the pinned, writable region; `data` is a
        // VM binary or a Rust buffer, never part of a writable mapping region... except a
        // direct binary of this same mapping, which `ptr::copy` (memmove) handles.
        unsafe { ptr::copy(data.as_ptr(), a.ptr().add(s), data.len()) };
        a.check(s, e)
    }

    /// Writes at the current position and advances it. The range is reserved first, by a
    /// compare-and-swap of the position (as `read` does), so concurrent writers on one
    /// handle each get their own bytes and no advance is lost. A write that does not fit
    /// changes nothing, the position included. An empty write is `ok` wherever the
    /// position is (it is always a valid file position, see `position`).
    pub fn write(&self, data: &[u8]) -> Result<()> {
        self.answer(self.write_in(data))
    }

    fn write_in(&self, data: &[u8]) -> Result<()> {
        let a = self.access()?;
        self.check_writable()?;
        if data.is_empty() {
            return Ok(());
        }
        loop {
            let p = self.pos.0.load(Ordering::Acquire);
            let (s, e) = bounds::write_range(p, data.len(), a.len())?;
            // Only the thread whose swap succeeds writes [s, e): the ranges never overlap.
            if self
                .pos
                .0
                .compare_exchange(p, e as u64, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return self.store(&a, s, data);
            }
        }
    }

    /// Moves the shared position; positions past the end are allowed (reads give eof), up
    /// to 2^63 - 1 (no file offset is larger: raw files answer `einval` beyond it).
    pub fn position(&self, whence: Whence, delta: i64) -> Result<u64> {
        let a = self.access()?;
        let base = match whence {
            Whence::Bof => 0,
            Whence::Cur => self.pos.0.load(Ordering::Acquire),
            Whence::Eof => a.len() as u64,
        };
        let p = bounds::seek(base, delta)?;
        self.pos.0.store(p, Ordering::Release);
        Ok(p)
    }

    /// The 8-byte slot at `pos` and its offset.
    fn slot<'a>(&self, a: &'a Access<'_>, pos: u64) -> Result<(&'a AtomicI64, usize)> {
        let s = bounds::atomic_slot(a.ptr() as usize, pos, a.len())?;
        // SAFETY: `atomic_slot` checked that the 8 bytes at `s` are inside the pinned region
        // and 8-aligned in memory, which is all `AtomicI64` needs.
        Ok((unsafe { &*(a.ptr().add(s) as *const AtomicI64) }, s))
    }

    /// `patomic/4`: applies `op` and returns the old value.
    #[inline]
    pub fn atomic(&self, pos: u64, op: Op, v: i64) -> Result<i64> {
        self.answer(self.atomic_in(pos, op, v))
    }

    #[inline(always)]
    fn atomic_in(&self, pos: u64, op: Op, v: i64) -> Result<i64> {
        let a = self.access()?;
        self.check_writable()?;
        let (slot, s) = self.slot(&a, pos)?;
        // As for writes: a slot the file no longer has is refused before it is changed.
        a.probe(s, s + 8)?;
        let old = op.apply(slot, v);
        a.check(s, s + 8)?;
        Ok(old)
    }

    /// Compare-and-swap; `Ok(Ok(old))` on success, `Ok(Err(current))` otherwise.
    #[inline]
    pub fn cas(&self, pos: u64, expected: i64, new: i64) -> Result<std::result::Result<i64, i64>> {
        self.answer(self.cas_in(pos, expected, new))
    }

    #[inline(always)]
    fn cas_in(&self, pos: u64, expected: i64, new: i64) -> Result<std::result::Result<i64, i64>> {
        let a = self.access()?;
        self.check_writable()?;
        let (slot, s) = self.slot(&a, pos)?;
        a.probe(s, s + 8)?;
        let r = atomics::cas(slot, expected, new);
        a.check(s, s + 8)?;
        Ok(r)
    }

    #[inline]
    pub fn atomic_load(&self, pos: u64) -> Result<i64> {
        self.answer(self.atomic_load_in(pos))
    }

    #[inline(always)]
    fn atomic_load_in(&self, pos: u64) -> Result<i64> {
        let a = self.access()?;
        let (slot, s) = self.slot(&a, pos)?;
        let v = slot.load(Ordering::SeqCst);
        a.check(s, s + 8)?;
        Ok(v)
    }

    #[inline]
    pub fn atomic_store(&self, pos: u64, v: i64) -> Result<()> {
        self.answer(self.atomic_store_in(pos, v))
    }

    #[inline(always)]
    fn atomic_store_in(&self, pos: u64, v: i64) -> Result<()> {
        let a = self.access()?;
        self.check_writable()?;
        let (slot, s) = self.slot(&a, pos)?;
        a.probe(s, s + 8)?;
        slot.store(v, Ordering::SeqCst);
        a.check(s, s + 8)
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

    /// Grows the mapping to `new_size` bytes (0: double below `max_inc_size`, else grow by
    /// it). Never shrinks; never moves memory a direct binary may point into.
    pub fn resize(&self, new_size: u64) -> Result<usize> {
        if self.opts.fixed_size {
            return Err(Error::FixedSize);
        }
        let mut st = self.state.write();
        let _excl = self.opts.lock.then(|| self.readers.write());
        let old_len = Self::current(&st, &self.closed)?.len();
        let target = if new_size == 0 {
            let step = old_len
                .max(page_size())
                .min(usize::try_from(self.opts.max_inc_size).unwrap_or(usize::MAX));
            old_len.checked_add(step).ok_or(Error::Einval)?
        } else {
            usize::try_from(new_size).map_err(|_| Error::Einval)?
        };
        if target < old_len {
            return Err(Error::Einval);
        }
        self.grow_locked(&mut st, target, extend_to)
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

    /// Grows to `target >= len` bytes; the caller holds the state lock and, with `lock`,
    /// excludes readers. A shared file must be extended too: the new mapping is made
    /// first (mapping past the end of a file is allowed, and nothing touches those pages
    /// before it is installed), then `extend` sizes the file, then the mapping is
    /// installed. So a request that fails changes nothing: not the mapping, not the file
    /// (a failed `extend` has its size put back).
    fn grow_locked(
        &self,
        st: &mut State,
        target: usize,
        extend: impl FnOnce(&File, u64) -> Result<()>,
    ) -> Result<usize> {
        let old = Self::current(st, &self.closed)?;
        let old_len = old.len();
        if target == old_len {
            return Ok(old_len);
        }
        // Growing needs write access: to extend the file, and to copy into new memory.
        self.check_writable()?;
        let file_backed = st.file.is_some() && self.opts.is_shared();
        // The file's end the new mapping needs, and its size now.
        let file_end = if file_backed {
            let end = self
                .offset
                .checked_add(target as u64)
                .ok_or(Error::Einval)?;
            let f = st.file.as_ref().expect("file_backed");
            Some((end, f.metadata()?.len()))
        } else {
            None
        };
        let must_extend = file_end.is_some_and(|(end, len)| len < end);
        // About to map file pages again after a cut to zero (see `truncate`): claim the
        // file first, so no other handle cuts it meanwhile; given back if this fails.
        let claimed = file_backed && st.file_use.is_none();
        if claimed {
            st.file_use = st.file_id.map(FileUse::new);
        }
        let result = self.grow_new(st, &old, target, file_end, must_extend, extend);
        if claimed && result.is_err() {
            st.file_use = None;
        }
        result
    }

    /// The part of [`Mapping::grow_locked`] after the checks.
    fn grow_new(
        &self,
        st: &mut State,
        old: &Arc<Region>,
        target: usize,
        file_end: Option<(u64, u64)>,
        must_extend: bool,
        extend: impl FnOnce(&File, u64) -> Result<()>,
    ) -> Result<usize> {
        let old_len = old.len();
        let file_backed = file_end.is_some();
        // A private file mapping cannot grow in place (pages past the file's end would
        // fault), nor can anonymous shared memory (its backing object keeps its size:
        // the new pages would fault with SIGBUS). Both get new memory and a copy.
        let private_file = st.file.is_some() && !file_backed;
        let anon_shared = self.opts.anon && self.opts.is_shared();
        let grown = if private_file || anon_shared {
            None
        } else {
            old.grow_in_place(target)
        };
        let in_place = grown.is_some();
        let new = match grown {
            Some(r) => r,
            None if self.opts.address.is_some() => return Err(Error::Os(libc::ENOMEM)),
            None if file_backed => {
                let mut flags = self.opts.map_flags();
                if must_extend {
                    // Pages past the current end cannot be prefaulted yet.
                    flags &= !libc::MAP_POPULATE;
                }
                let spec = MapSpec {
                    prot: self.opts.prot(),
                    flags,
                    fd: st.file.as_ref().map(|f| f.as_raw_fd()),
                    offset: self.offset,
                };
                Region::map(&spec, target, Placement::Any)?
            }
            None => {
                // Private or anonymous: the old contents live only in memory; copy them.
                let share = if anon_shared {
                    libc::MAP_SHARED
                } else {
                    libc::MAP_PRIVATE
                };
                let kind = libc::MAP_SHARED | libc::MAP_PRIVATE | libc::MAP_SHARED_VALIDATE;
                let flags =
                    (self.opts.map_flags() & !kind & !libc::MAP_SYNC) | share | libc::MAP_ANONYMOUS;
                let spec = MapSpec {
                    prot: self.opts.prot(),
                    flags,
                    fd: None,
                    offset: 0,
                };
                let r = Region::map(&spec, target, Placement::Any)?;
                r.copy_from(old);
                // Bytes the old memory had lost were copied as zeros: still lost.
                if let Some(v) = old.vanished() {
                    r.record_damage(v);
                }
                r
            }
        };
        if let (Some((end, len)), Some(f)) = (file_end, st.file.as_ref()) {
            if let Err(e) = extend(f, end) {
                // Put back what changed: the file's size, and the mapping (a new one is
                // unmapped when `new` is dropped; one grown in place shrinks back).
                if f.metadata().map_or(true, |m| m.len() != len) {
                    let _ = set_len(f, len);
                }
                if in_place {
                    if let Err(kept) = old.undo_grow(new) {
                        // Cannot happen (shrinking in place always works); if it did, the
                        // memory stays mapped, used only up to the old length.
                        if let Some(r) = kept.shrunk(old_len) {
                            self.install(st, r);
                        }
                    }
                }
                return Err(e);
            }
            if must_extend && self.opts.populate {
                let _ = new.advise(0, 0, libc::MADV_WILLNEED);
            }
        }
        self.install(st, new);
        Ok(target)
    }

    /// `truncate/1`: makes the mapping end at `new_len` bytes. Growing is `resize`.
    /// Shrinking keeps the memory mapped (binaries may point past the new end) and, for a
    /// shared file mapping, cuts the file at the same place: first the pages past the new
    /// end are detached from the file in every region of this handle, so nothing can fault.
    /// Refused with `ebusy` while another handle of this process maps the file, and with
    /// `einval` when the file goes on past the mapping (a window into a larger file).
    /// A `fixed_size` mapping answers `fixed_size` unless nothing would change.
    pub fn truncate(&self, new_len: u64) -> Result<usize> {
        let mut st = self.state.write();
        let _excl = self.opts.lock.then(|| self.readers.write());
        let old = Self::current(&st, &self.closed)?;
        let old_len = old.len();
        if new_len == old_len as u64 {
            return Ok(old_len);
        }
        if self.opts.fixed_size {
            return Err(Error::FixedSize);
        }
        self.check_writable()?;
        let shared_file = st.file.is_some() && self.opts.is_shared();
        if shared_file {
            // A window into a larger file: the bytes after it are not ours to drop, and
            // growing would show them instead of zeros.
            let f = st.file.as_ref().ok_or(Error::Closed)?;
            let end = self
                .offset
                .checked_add(old_len as u64)
                .ok_or(Error::Einval)?;
            if f.metadata()?.len() > end {
                return Err(Error::Einval);
            }
        }
        let Some(new_len) = usize::try_from(new_len).ok().filter(|&n| n < old_len) else {
            let target = usize::try_from(new_len).map_err(|_| Error::Einval)?;
            return self.grow_locked(&mut st, target, extend_to);
        };
        if !old.owns() {
            return Err(Error::Einval); // the current region always owns its memory
        }
        if shared_file {
            self.cut_file(&st, new_len)?;
            if new_len == 0 && self.offset.is_multiple_of(page_size() as u64) {
                // No page of the file is mapped any more, and once the handle is closed
                // nothing keeps its inode: the claim must go, or a new file that gets the
                // same inode number would look mapped by us.
                st.file_use = None;
            }
        }
        let new = old.shrunk(new_len).ok_or(Error::Einval)?;
        self.install(&mut st, new);
        Ok(new_len)
    }

    /// Cuts a shared file at `offset + new_len`, detaching the pages past that point from
    /// every region of this handle first. Changes nothing if it fails.
    fn cut_file(&self, st: &State, new_len: usize) -> Result<()> {
        let f = st.file.as_ref().ok_or(Error::Closed)?;
        let end = self
            .offset
            .checked_add(new_len as u64)
            .ok_or(Error::Einval)?;
        // Other handles' claims: all of them, less our own if we hold one.
        let others = st.file_id.map_or(0, |id| {
            file_users::users(id).saturating_sub(usize::from(st.file_use.is_some()))
        });
        if others > 0 {
            return Err(Error::Os(libc::EBUSY));
        }
        let owners: Vec<&Arc<Region>> = st
            .current
            .iter()
            .chain(st.retired.iter())
            .filter(|r| r.owns())
            .collect();
        let undo = |done: &[&Arc<Region>]| {
            for r in done {
                // Best effort: the mapping stays safe either way (zero pages cannot fault).
                let _ = r.reattach_tail(new_len, f.as_raw_fd());
            }
        };
        for (i, r) in owners.iter().enumerate() {
            if let Err(e) = r.detach_tail(new_len) {
                undo(&owners[..i]);
                return Err(e);
            }
        }
        if let Err(e) = set_len(f, end) {
            undo(&owners);
            return Err(e);
        }
        Ok(())
    }

    /// `allocate/3`: makes sure `[off, off + len)` is inside the mapping (growing it like
    /// `resize` if needed) and, for a shared file, has disk blocks reserved, so writing
    /// there later cannot run out of space. `len == 0` is `einval`, as for files.
    pub fn allocate(&self, off: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Err(Error::Einval);
        }
        let end = off.checked_add(len).ok_or(Error::Einval)?;
        {
            let st = self.state.read();
            let cur_len = Self::current(&st, &self.closed)?.len();
            self.check_writable()?;
            if end <= cur_len as u64 {
                // Inside the mapping: readers and writers carry on meanwhile.
                return self.reserve(&st, off, len);
            }
        }
        if self.opts.fixed_size {
            return Err(Error::FixedSize);
        }
        let mut st = self.state.write();
        let _excl = self.opts.lock.then(|| self.readers.write());
        let cur_len = Self::current(&st, &self.closed)?.len();
        if end <= cur_len as u64 {
            return self.reserve(&st, off, len); // grown meanwhile
        }
        let target = usize::try_from(end).map_err(|_| Error::Einval)?;
        // The disk blocks are reserved (which also extends the file) once the new mapping
        // exists and before it is installed: with no space, or no memory, nothing changes.
        let offset = self.offset;
        self.grow_locked(&mut st, target, |f, end| {
            reserve_blocks(f, offset, off, len)?;
            extend_to(f, end) // when the file system cannot reserve blocks ahead
        })?;
        Ok(())
    }

    /// Reserves disk blocks for `[off, off + len)` of a shared file (`fallocate`, which also
    /// extends the file to the end of the range); nothing to do for memory.
    fn reserve(&self, st: &State, off: u64, len: u64) -> Result<()> {
        let (Some(f), true) = (&st.file, self.opts.is_shared()) else {
            return Ok(());
        };
        reserve_blocks(f, self.offset, off, len)
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
        let _excl = self.opts.lock.then(|| self.readers.write());
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
            lock: self.opts.lock,
            anon: self.opts.anon,
            fixed_size: self.opts.fixed_size,
            max_inc_size: self.opts.max_inc_size,
            closed,
            address,
            lost_from,
        }
    }
}

/// Outcome of [`Mapping::read_line`].
#[derive(Debug, PartialEq, Eq)]
pub enum Line<T> {
    /// Position at or past the end.
    Eof,
    /// The line, as `f` turned it into a value.
    Found(T),
    /// No newline within the scan limit: retry with a larger limit on a dirty scheduler.
    TooLong,
}
