//! Opening: the policy that decides what `open` maps (which files, how long a mapping,
//! whether the file is created, truncated or extended) and builds the handle.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64};
use std::sync::Arc;

use parking_lot::RwLock;

use super::{Mapping, Padded, State, UnlinkOnDrop};
use crate::error::{Error, Result};
use crate::file_users::{FileId, FileUse};
use crate::options::Options;
use crate::readers::Readers;
use crate::region::{page_size, MapSpec, Placement, Region};

/// Opens the file to map. Nothing that cannot be mapped may make this wait: a FIFO opened
/// for reading waits for a writer (holding the calling thread meanwhile), a device's open
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

/// An `open` of a file, once the options are checked and the file is open: everything
/// [`Mapping::map_file`] decides from.
struct FileRequest<'a> {
    path: &'a Path,
    file: File,
    /// Whether this open created the file (`open` removes it again if mapping fails).
    created: bool,
    /// File offset of the mapping's byte 0.
    offset: u64,
    /// Bytes to map; 0: the rest of the file.
    len: u64,
    place: Placement,
    opts: Options,
}

/// What a handle of a file holds besides its memory.
struct Backing {
    path: PathBuf,
    /// Whether the file existed before this open.
    existed: bool,
    file: File,
    id: FileId,
    /// The handle's claim on the file (see `file_users.rs`).
    claim: FileUse,
    unlink: Option<UnlinkOnDrop>,
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
        if opts.anon {
            if offset != 0 || len == 0 {
                return Err(Error::Einval);
            }
            let len = usize::try_from(len).map_err(|_| Error::Einval)?;
            let spec = MapSpec {
                prot: opts.prot(),
                flags: opts.map_flags(),
                fd: None,
                offset,
            };
            let region = Region::map(&spec, len, place)?;
            return Ok(Mapping::new(opts, offset, region, None));
        }
        let path = path.ok_or(Error::Einval)?;
        let (file, created) = open_file(path, &opts)?;
        let req = FileRequest {
            path,
            file,
            created,
            offset,
            len,
            place,
            opts,
        };
        match Self::map_file(req) {
            Err(e) if created => {
                let _ = std::fs::remove_file(path);
                Err(e)
            }
            r => r,
        }
    }

    fn map_file(req: FileRequest<'_>) -> Result<Mapping> {
        let FileRequest {
            path,
            file,
            created,
            offset,
            len,
            place,
            opts,
        } = req;
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
        let id = (meta.dev(), meta.ino());
        let claim = FileUse::new(id);
        if truncate && claim.shared_with_others() {
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
        let mut spec = MapSpec {
            prot: opts.prot(),
            flags: opts.map_flags(),
            fd: Some(file.as_raw_fd()),
            offset,
        };
        if new_size.is_some() {
            // Pages past the current end cannot be prefaulted yet.
            spec.flags &= !libc::MAP_POPULATE;
        }
        // Mapping past the end of the file is allowed; nothing touches those pages until
        // the file has been sized below.
        let region = Region::map(&spec, len, place)?;
        if let Some(size) = new_size {
            if truncate {
                file.set_len(0)?;
            }
            file.set_len(size)?;
            if opts.populate {
                let _ = region.advise(0, 0, libc::MADV_WILLNEED);
            }
        }
        let unlink = (opts.auto_unlink && created).then(|| UnlinkOnDrop {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        });
        let backing = Backing {
            path: path.to_path_buf(),
            existed: !created,
            file,
            id,
            claim,
            unlink,
        };
        Ok(Mapping::new(opts, offset, region, Some(backing)))
    }

    /// The handle over `region`, mapped from byte `offset` of the file `backing` describes
    /// (`None`: anonymous memory).
    fn new(opts: Options, offset: u64, region: Region, backing: Option<Backing>) -> Mapping {
        let region = Arc::new(region);
        let cur = AtomicPtr::new(Arc::as_ptr(&region) as *mut Region);
        let (path, exist, file, file_id, file_use, unlink) = match backing {
            Some(b) => (
                Some(b.path),
                b.existed,
                Some(b.file),
                Some(b.id),
                Some(b.claim),
                b.unlink,
            ),
            None => (None, false, None, None, None, None),
        };
        let state = State {
            file_use,
            file_id,
            current: Some(region),
            retired: Vec::new(),
            file,
            unlink,
        };
        Mapping {
            opts,
            path,
            offset,
            exist,
            state: RwLock::new(state),
            readers: Readers::default(),
            cur,
            closed: AtomicBool::new(false),
            pos: Padded(AtomicU64::new(0)),
            exported: AtomicBool::new(false),
        }
    }
}
