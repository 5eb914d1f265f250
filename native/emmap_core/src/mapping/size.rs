//! Size changes: growing (`resize`, `allocate`, and the growth block storage and the queue
//! ask for), shrinking (`truncate`), and the file operations they need, arranged so that a
//! request that fails changes nothing.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use super::{Mapping, State};
use crate::error::{Error, Result};
use crate::file_users::{self, FileUse};
use crate::growth;
use crate::region::{page_size, MapSpec, Placement, Region};

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
    /// Grows the mapping to `new_size` bytes (0: one step of the growth rule, see
    /// [`growth::step`]: double below `max_inc_size`, else grow by it, by at least a page).
    /// Never shrinks; never moves memory a direct binary may point into.
    pub fn resize(&self, new_size: u64) -> Result<usize> {
        if self.opts.fixed_size {
            return Err(Error::FixedSize);
        }
        let mut st = self.state.write();
        let _excl = self.opts.lock().then(|| self.readers.write());
        let old_len = Self::current(&st, &self.closed)?.len();
        let target = if new_size == 0 {
            growth::step(old_len as u64, self.opts.max_inc_size, page_size() as u64)
                .ok_or(Error::Einval)?
        } else {
            new_size
        };
        let target = usize::try_from(target).map_err(|_| Error::Einval)?;
        if target < old_len {
            return Err(Error::Einval);
        }
        self.grow_locked(&mut st, target, extend_to)
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
                let spec = MapSpec {
                    prot: self.opts.prot(),
                    flags: self.opts.copy_flags(),
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
        let _excl = self.opts.lock().then(|| self.readers.write());
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
        let _excl = self.opts.lock().then(|| self.readers.write());
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
}
