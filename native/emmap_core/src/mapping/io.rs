//! The data path: reads and writes at a position or at the shared file position, lines,
//! the position itself, and 64-bit atomics. Each call pins the region with
//! [`Mapping::access`] and takes no other lock; one that touches mapped bytes checks them
//! (`Access::check`/`probe`) before answering and explains an error once unpinned.

use std::ptr;
use std::sync::atomic::{AtomicI64, Ordering};

use super::{Access, Mapping};
use crate::atomics::{self, Op};
use crate::bounds;
use crate::error::Result;

/// Base for `file:position/2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whence {
    Bof,
    Cur,
    Eof,
}

impl Mapping {
    /// Copies (or, in direct mode, exposes) up to `len` bytes at `pos`. `f` receives the
    /// bytes; `Ok(None)` is end of file.
    #[inline]
    pub fn pread<T>(&self, pos: u64, len: u64, f: impl FnOnce(&[u8]) -> T) -> Result<Option<T>> {
        self.answer(self.pread_in(pos, len, f))
    }

    #[inline(always)]
    fn pread_in<T>(&self, pos: u64, len: u64, f: impl FnOnce(&[u8]) -> T) -> Result<Option<T>> {
        let a = self.access_direct_read()?;
        let Some((s, e)) = bounds::read_range(pos, len, a.len()) else {
            return Ok(None);
        };
        let t = f(self.bytes(&a, s, e));
        a.probe(s, e)?;
        Ok(Some(t))
    }

    /// The bytes `[s, e)` of the pinned region, marking the mapping exported in direct mode.
    #[inline(always)]
    fn bytes<'a>(&self, a: &'a Access<'_>, s: usize, e: usize) -> &'a [u8] {
        if self.opts.direct {
            // Read first: a store on every read would bounce this cache line between cores.
            if !self.exported.load(Ordering::Relaxed) {
                self.exported.store(true, Ordering::Release);
            }
        }
        self.bytes_unexported(a, s, e)
    }

    /// The range `[s, e)` of the mapping that `pread(pos, len)` would read now, or
    /// `None` at end of file: for a copy made in pieces ([`Mapping::copy_at`]).
    pub fn read_range(&self, pos: u64, len: u64) -> Result<Option<(usize, usize)>> {
        let a = self.access()?;
        Ok(bounds::read_range(pos, len, a.len()))
    }

    /// One piece of a copy made in pieces: copies the bytes at `[s, s + dst.len())` into
    /// `dst` and returns how many there were, fewer if the mapping now ends before
    /// `s + dst.len()` (0 if it ends at or before `s`), and the mapping's length now.
    /// Errors as for `pread`: `Closed`, and `Truncated` (explained) for bytes someone
    /// else cut from the file.
    pub fn copy_at(&self, s: usize, dst: &mut [u8]) -> Result<(usize, usize)> {
        self.answer(self.copy_at_in(s, dst))
    }

    fn copy_at_in(&self, s: usize, dst: &mut [u8]) -> Result<(usize, usize)> {
        let a = self.access()?;
        let e = s.saturating_add(dst.len()).min(a.len());
        if e <= s {
            return Ok((0, a.len()));
        }
        let n = e - s;
        dst[..n].copy_from_slice(self.bytes_unexported(&a, s, e));
        a.check(s, e)?;
        Ok((n, a.len()))
    }

    /// Like `pread`, for direct mode: the slice stays valid until this mapping is dropped.
    /// The caller must tie the slice's lifetime to the handle (a resource binary does).
    #[inline]
    pub fn pread_direct(&self, pos: u64, len: u64) -> Result<Option<(*const u8, usize)>> {
        debug_assert!(self.opts.direct);
        self.answer(self.pread_direct_in(pos, len))
    }

    /// `pread_in` with `access_direct_read` and `bytes` folded together for a mapping
    /// known to be direct: the exported flag is read once, and marked (if it was not)
    /// while the guard that reading it without being exported required is held.
    #[inline(always)]
    fn pread_direct_in(&self, pos: u64, len: u64) -> Result<Option<(*const u8, usize)>> {
        let exported = self.exported.load(Ordering::Acquire);
        let a = self.access_as(self.opts.lock() && !exported)?;
        let Some((s, e)) = bounds::read_range(pos, len, a.len()) else {
            return Ok(None);
        };
        if !exported {
            self.exported.store(true, Ordering::Release);
        }
        let b = self.bytes_unexported(&a, s, e);
        a.probe(s, e)?;
        Ok(Some((b.as_ptr(), b.len())))
    }

    /// Reads from the current position and advances it by what was read.
    pub fn read<T>(&self, len: u64, f: impl FnOnce(&[u8]) -> T) -> Result<Option<T>> {
        self.answer(self.read_in(len, f))
    }

    #[inline(always)]
    fn read_in<T>(&self, len: u64, f: impl FnOnce(&[u8]) -> T) -> Result<Option<T>> {
        let a = self.access_direct_read()?;
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
    /// advances the position past it. `f` gets the line bytes (including `\r\n` / `\n`)
    /// and whether they end in `\r\n`. A line that runs to the end of the mapping is a
    /// line too; one with no newline in its first `limit` bytes and more bytes after them
    /// is [`Line::TooLong`], and the position stays where it was: the search is bounded,
    /// and a caller that wants longer lines asks again with a larger `limit`.
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
    #[inline(always)]
    fn bytes_unexported<'a>(&self, a: &'a Access<'_>, s: usize, e: usize) -> &'a [u8] {
        // SAFETY: `s <= e <= len` (checked by the caller's bounds helper) and the region is
        // pinned by `a`. Other writers may change these bytes concurrently (that is what
        // shared memory is for); the slice is only ever scanned, copied or handed to the
        // VM as the contents of a resource binary, never used to make decisions in Rust.
        unsafe { std::slice::from_raw_parts(a.ptr().add(s), e - s) }
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
    #[inline(always)]
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
}

/// Outcome of [`Mapping::read_line`].
#[derive(Debug, PartialEq, Eq)]
pub enum Line<T> {
    /// Position at or past the end.
    Eof,
    /// The line, as `f` turned it into a value.
    Found(T),
    /// No newline within `limit` bytes, and the mapping goes on past them: nothing was
    /// read, the position is unchanged.
    TooLong,
}
