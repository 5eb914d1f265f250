//! Mapped memory as the containers built on a mapping (block storage, the queue) see it:
//! a bounds-checked view ([`Mem`]) and the one function that pins a mapping's region for
//! them ([`with_mem`]). Every byte block storage and the queue read or write in a mapping
//! goes through these two, so a rule about touching mapped memory has one home here.

use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::error::Error;
use crate::mapping::Mapping;

/// Why an access was refused. Containers turn these into their own "damaged" error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The bytes asked for are not (all) inside the region.
    OutOfRange,
    /// A 64-bit atomic word that is not 8-byte aligned in memory.
    Misaligned,
}

/// A byte region shared with other threads and processes: touched only through atomics on
/// aligned words and through raw copies, never through `&mut`.
#[derive(Clone, Copy)]
pub struct Mem<'a> {
    pub(crate) ptr: *mut u8,
    pub(crate) len: usize,
    /// Where [`with_mem`] keeps the end of the furthest byte handed out so far (every
    /// access goes through `range`), so that it checks exactly the bytes a call used.
    reach: Option<&'a AtomicUsize>,
    _life: PhantomData<&'a [AtomicU64]>,
}

// SAFETY: a `Mem` is made for memory shared between threads (and processes): shared words
// are accessed through atomics, and the containers' protocols say who writes which bytes
// (block storage: the writer that claimed a slot; the queue: the holder of its lock).
unsafe impl Send for Mem<'_> {}
// SAFETY: as for `Send`.
unsafe impl Sync for Mem<'_> {}

impl<'a> Mem<'a> {
    /// A view of `len` bytes at `ptr`.
    ///
    /// # Safety
    /// For all of `'a`, `ptr..ptr + len` must stay mapped and readable, and writable if any
    /// writing method is called; nothing may hold a `&mut` to it. Other threads or
    /// processes may change it concurrently.
    pub unsafe fn from_raw(ptr: *mut u8, len: usize) -> Mem<'a> {
        Mem {
            ptr,
            len,
            reach: None,
            _life: PhantomData,
        }
    }

    /// A view of a buffer we own exclusively (tests, tools).
    pub fn from_words(words: &'a mut [u64]) -> Mem<'a> {
        let len = std::mem::size_of_val(words);
        // SAFETY: the exclusive borrow keeps the buffer alive, writable and unaliased for 'a.
        unsafe { Mem::from_raw(words.as_mut_ptr().cast(), len) }
    }

    #[inline]
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `[off, off + n)` as a `usize` start inside the region, or `OutOfRange`.
    #[inline]
    fn range(&self, off: u64, n: u64) -> Result<usize, Fault> {
        match off.checked_add(n) {
            Some(end) if end <= self.len as u64 => {
                if let Some(r) = self.reach {
                    // Only the thread running `with_mem`'s closure uses this view: a load
                    // and a store, no read-modify-write needed.
                    if end as usize > r.load(Ordering::Relaxed) {
                        r.store(end as usize, Ordering::Relaxed);
                    }
                }
                Ok(off as usize)
            }
            _ => Err(Fault::OutOfRange),
        }
    }

    /// The 8-byte word at `off` as an atomic, if it is inside and 8-aligned in memory.
    #[inline]
    pub fn atomic(&self, off: u64) -> Result<&'a AtomicU64, Fault> {
        let s = self.range(off, 8)?;
        if (self.ptr as usize).wrapping_add(s) % 8 != 0 {
            return Err(Fault::Misaligned);
        }
        // SAFETY: the 8 bytes at `s` are inside the region (checked above), which lives for
        // 'a per `from_raw`'s contract, and are 8-aligned in memory (checked above): that is
        // all `AtomicU64` needs. Every access to shared words goes through atomics.
        Ok(unsafe { &*(self.ptr.add(s) as *const AtomicU64) })
    }

    /// The `N` words from `off` on, loaded one by one (the first with acquire ordering).
    #[inline]
    pub fn words<const N: usize>(&self, off: u64) -> Result<[u64; N], Fault> {
        let s = self.range(off, 8 * N as u64)?;
        if (self.ptr as usize).wrapping_add(s) % 8 != 0 {
            return Err(Fault::Misaligned);
        }
        let mut w = [0u64; N];
        for (i, v) in w.iter_mut().enumerate() {
            // SAFETY: word `i` lies inside the range checked above, 8-aligned (the range
            // start is); as in `atomic`.
            let a = unsafe { &*(self.ptr.add(s + 8 * i) as *const AtomicU64) };
            *v = a.load(if i == 0 {
                Ordering::Acquire
            } else {
                Ordering::Relaxed
            });
        }
        Ok(w)
    }

    /// `n` bytes at `off`, for reading. Others may change them while the slice is alive;
    /// callers only copy or hash them and then check that they are still current (a
    /// block's marker), or copy them out before deciding anything (the queue).
    #[inline]
    pub fn bytes(&self, off: u64, n: u64) -> Result<&'a [u8], Fault> {
        let s = self.range(off, n)?;
        // SAFETY: inside the region (checked), alive for 'a (contract of `from_raw`); the
        // slice is used for copying/hashing only, as `Mapping::pread` does.
        Ok(unsafe { std::slice::from_raw_parts(self.ptr.add(s), n as usize) })
    }

    /// The address of `n` bytes at `off`, if they are inside the region: for copies that
    /// raw-pointer code makes (checksumming while copying). Reading and, for a writable
    /// region, writing those bytes is as safe as through the methods here.
    #[inline]
    pub fn ptr_at(&self, off: u64, n: u64) -> Result<*mut u8, Fault> {
        let s = self.range(off, n)?;
        // SAFETY: `s + n <= len` (checked), so the result stays inside the region.
        Ok(unsafe { self.ptr.add(s) })
    }

    /// Copies `dst.len()` bytes at `off` into `dst` (private memory).
    #[inline]
    pub fn read_into(&self, off: u64, dst: &mut [u8]) -> Result<(), Fault> {
        let s = self.range(off, dst.len() as u64)?;
        // SAFETY: the source is inside the region (checked); `dst` is a distinct, private
        // buffer we hold exclusively, so the two cannot overlap.
        unsafe { ptr::copy_nonoverlapping(self.ptr.add(s), dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// Copies `data` to `off`. `data` may overlap the destination (a direct binary of this
    /// very mapping), hence `ptr::copy` (memmove).
    #[inline]
    pub fn write(&self, off: u64, data: &[u8]) -> Result<(), Fault> {
        let s = self.range(off, data.len() as u64)?;
        // SAFETY: the destination is inside the region (checked), which the caller keeps
        // writable (contract of `from_raw`); memmove copes with overlap.
        unsafe { ptr::copy(data.as_ptr(), self.ptr.add(s), data.len()) };
        Ok(())
    }

    /// Writes `n` zero bytes at `off`.
    #[inline]
    pub fn zero(&self, off: u64, n: u64) -> Result<(), Fault> {
        let s = self.range(off, n)?;
        // SAFETY: inside the region (checked), writable (contract of `from_raw`).
        unsafe { ptr::write_bytes(self.ptr.add(s), 0, n as usize) };
        Ok(())
    }
}

/// Runs `f` on a view of `m`'s current region, which stays mapped until `f` returns.
///
/// This is the only way block storage and the queue reach mapped memory. Whatever must be
/// checked after touching it (for instance, whether a file cut short under the mapping
/// turned the bytes just used into zero pages) is checked here, once `f` has returned.
#[inline]
pub fn with_mem<T, E: From<Error>>(
    m: &Mapping,
    f: impl FnOnce(Mem<'_>) -> Result<T, E>,
) -> Result<T, E> {
    let reach = AtomicUsize::new(0);
    let (r, intact) = {
        let a = m.access()?;
        // SAFETY: `a` pins the current region (mapped, `a.len()` bytes) until it is dropped
        // at the end of this block, after `f` and everything borrowed from the view are gone
        // (the view's lifetime is local to `f`). Nothing in emmap makes a `&mut` to mapped
        // memory. Callers write only after checking that the mapping was opened `write`
        // (mapped PROT_WRITE).
        let mut mem = unsafe { Mem::from_raw(a.ptr(), a.len()) };
        mem.reach = Some(&reach);
        let r = f(mem);
        // If a page of the bytes the call used (the header, a bitmap word, a slot, a frame:
        // up to the furthest byte it was handed) was cut away by someone else, it must not
        // answer as if it had worked; even an error such as "corrupt" may come from the
        // zeros that replaced the lost pages, so the loss is reported first. Damage is
        // recorded from a first lost offset on, so the furthest byte decides.
        (r, a.check(0, reach.load(Ordering::Relaxed)))
    };
    match intact {
        Ok(()) => r,
        // Explained once the region is no longer pinned (see `Mapping::explain`).
        Err(e) => Err(E::from(m.explain(e))),
    }
}
