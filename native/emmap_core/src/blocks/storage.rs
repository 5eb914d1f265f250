//! The [`Storage`] operations: open, format, store, read, free, scan and repair, on a
//! bounds-checked view of mapped memory.

use std::sync::atomic::{fence, AtomicU64, Ordering};

use super::checksum::crc_start;
use super::layout::{header_bytes, word_bytes};
use super::{BlockError, Cache, Check, Chunk, Layout, Result};
use super::{HEADER_SIZE, MAGIC};
use crate::error::Error;
use crate::mem::Mem;

/// Outcome of [`Storage::store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// The block is stored at this address.
    At(u64),
    /// The lowest free slot lies past the region: grow it to at least `need` bytes and retry.
    Grow { need: u64 },
}

/// How much one [`Storage::scan`] step may do; each limit is taken as at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Blocks returned.
    pub blocks: usize,
    /// Set bits looked at (each costs a checksum of one block).
    pub checks: u64,
    /// Bitmap words looked at.
    pub words: u64,
}

impl Budget {
    /// No limit but the end of the storage.
    pub const ALL: Budget = Budget {
        blocks: usize::MAX,
        checks: u64::MAX,
        words: u64::MAX,
    };
}

/// What a [`Storage::repair`] pass changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Repaired {
    /// Bits cleared because their slot held no valid block.
    pub dropped: u64,
    /// Blocks found intact.
    pub kept: u64,
}

/// What a validated header says: the layout and how markers are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geo {
    pub(super) lay: Layout,
    pub(super) check: Check,
}

/// Where a [`Storage`] keeps its [`Geo`]: in the handle's cache (the usual case: a
/// pointer, so that opening a storage copies nothing), or in a box of its own.
enum Held<'a> {
    Cached(&'a Geo),
    Own(Box<Geo>),
}

/// A validated block storage over a region.
pub struct Storage<'a> {
    pub(super) mem: Mem<'a>,
    held: Held<'a>,
}

/// Retries of a read whose slot changed under it, before answering "no block".
const READ_RETRIES: usize = 8;

impl<'a> Storage<'a> {
    /// Opens the storage in `mem`, validating the header.
    pub fn open(mem: Mem<'a>) -> Result<Storage<'a>> {
        let words = Storage::header_words(mem)?;
        let lay = Layout::decode(&header_bytes(&words))?;
        let geo = Geo {
            lay,
            check: Check::of(&lay),
        };
        Storage::on(mem, Held::Own(Box::new(geo)))
    }

    /// Like [`Storage::open`], with the header validated through `cache`: a header seen
    /// before (all 64 bytes equal) is not decoded again.
    #[inline]
    pub fn open_cached(mem: Mem<'a>, cache: &'a Cache) -> Result<Storage<'a>> {
        let words = Storage::header_words(mem)?;
        if let Some(geo) = cache.get(&words) {
            return Storage::on(mem, Held::Cached(geo));
        }
        let lay = Layout::decode(&header_bytes(&words))?;
        let geo = Geo {
            lay,
            check: Check::of(&lay),
        };
        match cache.put(words, geo) {
            Some(geo) => Storage::on(mem, Held::Cached(geo)),
            None => Storage::on(mem, Held::Own(Box::new(geo))),
        }
    }

    #[inline(always)]
    fn geo(&self) -> &Geo {
        match &self.held {
            Held::Cached(g) => g,
            Held::Own(g) => g,
        }
    }

    #[inline(always)]
    pub(super) fn lay(&self) -> &Layout {
        &self.geo().lay
    }

    /// How this storage's markers are computed.
    #[inline(always)]
    pub fn check(&self) -> &Check {
        &self.geo().check
    }

    /// The header's words, if the region has a header with the magic.
    #[inline]
    fn header_words(mem: Mem<'a>) -> Result<[u64; 8]> {
        if mem.len() < HEADER_SIZE {
            return Err(BlockError::NotInitialized);
        }
        let words = mem.words::<8>(0)?;
        if words[0] != u64::from_ne_bytes(MAGIC) {
            return Err(BlockError::NotInitialized);
        }
        Ok(words)
    }

    #[inline]
    fn on(mem: Mem<'a>, held: Held<'a>) -> Result<Storage<'a>> {
        let s = Storage { mem, held };
        if mem.len() < s.lay().data_off {
            return Err(BlockError::Corrupt);
        }
        Ok(s)
    }

    /// Writes a fresh, empty storage into `mem`, which must hold at least `lay.data_off`
    /// bytes. Slot bytes are left as they are: a slot counts only once its bit is set.
    /// The magic goes in last, so a concurrent `open` sees either no storage or all of it.
    pub fn format(mem: Mem<'a>, lay: Layout) -> Result<Storage<'a>> {
        if mem.len() < lay.data_off {
            return Err(BlockError::Map(Error::Einval));
        }
        let first = mem.atomic(0)?;
        first.store(0, Ordering::SeqCst);
        for w in 0..lay.words {
            let a = mem.atomic(lay.bitmap_off + 8 * w)?;
            // Only write what is not zero already: keeps a sparse new file sparse.
            if a.load(Ordering::Relaxed) != 0 {
                a.store(0, Ordering::Relaxed);
            }
        }
        for s in 0..lay.summary_words {
            mem.atomic(lay.summary_off + 8 * s)?
                .store(u64::MAX, Ordering::Relaxed);
        }
        let h = lay.encode();
        for i in 1..8u64 {
            let i8 = (i * 8) as usize;
            mem.atomic(i * 8)?
                .store(u64::from_ne_bytes(word_bytes(&h, i8)), Ordering::Relaxed);
        }
        first.store(u64::from_ne_bytes(MAGIC), Ordering::Release);
        Storage::open(mem)
    }

    pub fn layout(&self) -> &Layout {
        self.lay()
    }

    /// Slots lying whole inside the region (never more than the capacity).
    pub fn mapped_slots(&self) -> u64 {
        self.lay().slots_in(self.mem.len())
    }

    /// Whether slot `addr` exists and lies whole inside the region.
    #[inline]
    fn in_region(&self, addr: u64) -> bool {
        self.lay()
            .slot_end(addr)
            .is_some_and(|end| end <= self.mem.len())
    }

    pub(super) fn marker(&self, addr: u64) -> Result<&'a AtomicU64> {
        Ok(self
            .mem
            .atomic(self.lay().slot_off(addr).ok_or(BlockError::Corrupt)?)?)
    }

    pub(super) fn data(&self, addr: u64) -> Result<&'a [u8]> {
        let off = self.lay().slot_off(addr).ok_or(BlockError::Corrupt)?;
        Ok(self.mem.bytes(off + 8, self.lay().block_size)?)
    }

    /// Whether `marker` commits the bytes slot `addr` holds now.
    fn commits(&self, addr: u64, marker: u64) -> Result<bool> {
        Ok(self.check().tagged(marker) && self.check().marker(addr, self.data(addr)?) == marker)
    }

    /// Stores `data` in the lowest free slot. Needs a writable region.
    pub fn store(&self, data: &[u8]) -> Result<Stored> {
        if data.len() as u64 != self.lay().block_size {
            return Err(BlockError::BadSize);
        }
        loop {
            let Some(addr) = self.find_free()? else {
                return Err(BlockError::Full);
            };
            if !self.in_region(addr) {
                let need = self.lay().slot_end(addr).ok_or(BlockError::Corrupt)?;
                return Ok(Stored::Grow { need });
            }
            let (w, bit) = (addr / 64, 1u64 << (addr % 64));
            let word = self.bit_word(w)?;
            if word.fetch_or(bit, Ordering::SeqCst) & bit != 0 {
                continue; // another writer took it first
            }
            let marker = self.marker(addr)?;
            let off = self.lay().slot_off(addr).ok_or(BlockError::Corrupt)?;
            marker.store(0, Ordering::SeqCst);
            let m = self.fill(addr, off + 8, data)?;
            marker.store(m, Ordering::Release);
            return Ok(Stored::At(addr));
        }
    }

    /// Copies `data` into the slot of `addr` at `off` and returns the slot's commit marker,
    /// computed over exactly the bytes written (versions 2 and 3: while copying, in one
    /// pass).
    fn fill(&self, addr: u64, off: u64, data: &[u8]) -> Result<u64> {
        if let Some(plan) = self.check().plan() {
            let dst = self.mem.ptr_at(off, data.len() as u64)?;
            let (s, d, n) = (data.as_ptr() as usize, dst as usize, data.len());
            // `data` may be a direct binary of this mapping: overlapping (but not
            // identical) ranges need memmove, below.
            let apart = s + n <= d || d + n <= s || s == d;
            if apart && plan.len() == n {
                // SAFETY: `dst` is `n` writable bytes of the region (range-checked above;
                // store needs a writable region), `data` is `n` readable bytes, and the
                // two are apart or the same range (checked above).
                let c = unsafe { plan.copy_update(crc_start(addr), data.as_ptr(), dst) };
                return Ok(self.check().seal(addr, !c));
            }
        }
        self.mem.write(off, data)?;
        // The checksum is of what the slot holds now, i.e. exactly what readers will see.
        Ok(self.check().marker(addr, self.data(addr)?))
    }

    /// The block at `addr` copied into memory `alloc` provides: `alloc(n)` is called with
    /// the block size and returns a value and `n` bytes to copy into; the value is returned
    /// if the copy is a block (its checksum is checked on the copy itself, so what is
    /// handed out is exactly what was checked), `None` if there is no block. A block freed
    /// or replaced meanwhile is read again; `alloc` may be called more than once.
    pub fn read_copy<'d, T>(
        &self,
        addr: u64,
        mut alloc: impl FnMut(usize) -> (T, &'d mut [u8]),
    ) -> Result<Option<T>> {
        let n = self.lay().block_size;
        self.read_checked(addr, |m| {
            let off = self.lay().slot_off(addr).ok_or(BlockError::Corrupt)? + 8;
            let (v, buf) = alloc(n as usize);
            if buf.len() as u64 != n {
                return Err(BlockError::BadSize);
            }
            let got = match self.check().plan() {
                Some(plan) if plan.len() == buf.len() => {
                    let src = self.mem.ptr_at(off, n)?;
                    // SAFETY: `src` is `n` readable bytes of the region (range-checked),
                    // `buf` is `n` bytes of private memory we hold exclusively, so they
                    // do not overlap.
                    let c = unsafe { plan.copy_update(crc_start(addr), src, buf.as_mut_ptr()) };
                    self.check().seal(addr, !c)
                }
                _ => {
                    self.mem.read_into(off, buf)?;
                    self.check().marker(addr, buf)
                }
            };
            Ok((got == m).then_some(v))
        })
    }

    /// Calls `f` on the block at `addr` (its bytes in the region) and returns what `f`
    /// returned, or `None` if there is no block. A block freed or replaced while `f` ran is
    /// detected through its marker and read again; `f` may run more than once.
    pub fn read<T>(&self, addr: u64, mut f: impl FnMut(&'a [u8]) -> T) -> Result<Option<T>> {
        self.read_checked(addr, |m| {
            let data = self.data(addr)?;
            Ok((self.check().marker(addr, data) == m).then(|| f(data)))
        })
    }

    /// The read protocol of [`Storage::read`] and [`Storage::read_copy`]: while the slot's
    /// used bit is set and its marker is tagged, `attempt(m)` reads the block against
    /// marker `m` (`None`: the bytes do not match it). A mismatch with an unchanged marker
    /// is a torn or damaged slot (no block); a marker that changed meanwhile (a free or
    /// store raced the read) means read again, at most `READ_RETRIES` times.
    #[inline(always)]
    fn read_checked<T>(
        &self,
        addr: u64,
        mut attempt: impl FnMut(u64) -> Result<Option<T>>,
    ) -> Result<Option<T>> {
        if !self.in_region(addr) {
            return Ok(None);
        }
        let marker = self.marker(addr)?;
        for _ in 0..READ_RETRIES {
            if !self.bit_is_set(addr)? {
                return Ok(None);
            }
            let m = marker.load(Ordering::Acquire);
            if !self.check().tagged(m) {
                return Ok(None);
            }
            let Some(v) = attempt(m)? else {
                if marker.load(Ordering::Acquire) == m {
                    return Ok(None); // torn or damaged slot: not a block
                }
                continue;
            };
            fence(Ordering::Acquire);
            if marker.load(Ordering::Relaxed) == m {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// Whether [`Storage::free`] reads the block's bytes (versions 1 and 2) or only its
    /// marker (version 3: a free costs the same for every block size).
    pub fn free_reads_block(&self) -> bool {
        !self.check().has_seals()
    }

    /// Frees the block at `addr`: `true` if there was one. Needs a writable region.
    ///
    /// In version 3 the marker alone proves that a store into this slot completed (its
    /// tag and its own check, which covers the address): the block's bytes are not read,
    /// and a block whose bytes were damaged since is freed like any other. Older versions
    /// check the marker against the block's bytes.
    pub fn free(&self, addr: u64) -> Result<bool> {
        if !self.in_region(addr) {
            return Ok(false);
        }
        let marker = self.marker(addr)?;
        for _ in 0..READ_RETRIES {
            if !self.bit_is_set(addr)? {
                return Ok(false);
            }
            let m = marker.load(Ordering::Acquire);
            let is_block = match self.check().sealed_for(addr, m) {
                Some(sealed) => sealed,
                None => self.commits(addr, m)?,
            };
            if !is_block {
                if marker.load(Ordering::Acquire) == m {
                    return Ok(false);
                }
                continue;
            }
            if marker
                .compare_exchange(m, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                continue; // freed (or freed and stored again) meanwhile: look again
            }
            let w = addr / 64;
            self.bit_word(w)?
                .fetch_and(!(1 << (addr % 64)), Ordering::SeqCst);
            self.summary_word(w / 64)?
                .fetch_or(1 << (w % 64), Ordering::SeqCst);
            return Ok(true);
        }
        Ok(false)
    }

    /// Blocks with addresses from `start` on, in address order, within `budget`. Returns
    /// them with where to go on (`None`: the end of the mapped slots was reached). A call
    /// always makes progress: the continuation is past `start`.
    pub fn scan<T>(
        &self,
        start: u64,
        budget: Budget,
        mut make: impl FnMut(&'a [u8]) -> T,
    ) -> Result<Chunk<T>> {
        let end = self.mapped_slots();
        let mut out = Vec::new();
        if start >= end {
            return Ok((out, None));
        }
        let (mut words, mut checks) = (budget.words.max(1), budget.checks.max(1));
        let max_blocks = budget.blocks.max(1);
        let mut w = start / 64;
        let mut from = start % 64;
        while w * 64 < end {
            if words == 0 {
                return Ok((out, Some(w * 64)));
            }
            words -= 1;
            let mut bits = self.bit_word(w)?.load(Ordering::Acquire)
                & self.lay().valid_bits(w)
                & (u64::MAX << from);
            from = 0;
            while bits != 0 {
                let addr = w * 64 + u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                if addr >= end {
                    break;
                }
                if let Some(v) = self.read(addr, &mut make)? {
                    out.push((addr, v));
                }
                checks -= 1;
                if out.len() >= max_blocks || checks == 0 {
                    let next = addr + 1;
                    return Ok((out, (next < end).then_some(next)));
                }
            }
            w += 1;
        }
        Ok((out, None))
    }

    /// Makes bitmap and slots agree for the slots `[start, start + max_slots)`: a set bit
    /// whose slot holds no valid block is cleared (and its marker zeroed), and the summary
    /// bits of the words looked at are recomputed. Slots past the region are left alone
    /// (they cannot be checked). Must not run while others store or free in this storage.
    /// Returns where to go on (`None`: past the capacity) and what changed.
    pub fn repair(&self, start: u64, max_slots: u64) -> Result<(Option<u64>, Repaired)> {
        let cap = self.lay().capacity;
        let mut rep = Repaired::default();
        if start >= cap || max_slots == 0 {
            return Ok(((start < cap).then_some(start), rep));
        }
        let stop = start.saturating_add(max_slots).min(cap);
        let mapped = self.mapped_slots();
        for w in start / 64..=(stop - 1) / 64 {
            let lo = start.max(w * 64) - w * 64;
            let hi = stop.min(w * 64 + 64) - w * 64;
            let range = if hi - lo == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            let word = self.bit_word(w)?;
            let mut bits = word.load(Ordering::SeqCst) & range & self.lay().valid_bits(w);
            while bits != 0 {
                let addr = w * 64 + u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                if addr >= mapped {
                    continue;
                }
                let marker = self.marker(addr)?;
                if self.commits(addr, marker.load(Ordering::Acquire))? {
                    rep.kept += 1;
                } else {
                    marker.store(0, Ordering::SeqCst);
                    word.fetch_and(!(1 << (addr % 64)), Ordering::SeqCst);
                    rep.dropped += 1;
                }
            }
            let sw = self.summary_word(w / 64)?;
            let sbit = 1u64 << (w % 64);
            let full = word.load(Ordering::SeqCst) | !self.lay().valid_bits(w) == u64::MAX;
            let marked = sw.load(Ordering::SeqCst) & sbit != 0;
            if full && marked {
                sw.fetch_and(!sbit, Ordering::SeqCst);
            } else if !full && !marked {
                sw.fetch_or(sbit, Ordering::SeqCst);
            }
        }
        Ok(((stop < cap).then_some(stop), rep))
    }
}
