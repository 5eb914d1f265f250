//! One mapping: map, grow in place, flush, advise, unmap on drop.
//!
//! A `Region` describes `len` usable bytes at `data`, which sit `data - map_ptr` bytes into
//! a page-aligned kernel mapping of `map_len` bytes (the user's offset need not be page
//! aligned). The descriptor is immutable; growing in place hands the kernel mapping over to
//! a new descriptor and leaves the old one as a non-owning view.

use std::os::fd::RawFd;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::sigbus::{self, Mark};

/// The system page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions; _SC_PAGESIZE is always supported on Linux.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p <= 0 {
        4096
    } else {
        p as usize
    }
}

/// The lowest address a fixed mapping may start at: the kernel's `vm.mmap_min_addr`
/// (read once; 65536, its usual value, if it cannot be read), and never below the first
/// page. The kernel enforces that limit only on processes without `CAP_SYS_RAWIO`: a VM
/// running as root could otherwise map a file at address 0, the null page.
pub fn min_fixed_address() -> usize {
    static MIN: OnceLock<usize> = OnceLock::new();
    *MIN.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/vm/mmap_min_addr")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(65536)
            .max(page_size())
    })
}

/// Where the kernel should place a new mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Anywhere.
    Any,
    /// Exactly at this page-aligned address, failing with `eexist` if anything is there.
    /// Never replaces existing memory (`MAP_FIXED_NOREPLACE`). Below
    /// [`min_fixed_address`]: `einval`.
    Exact(usize),
}

/// What to map: everything but the length.
#[derive(Debug, Clone, Copy)]
pub struct MapSpec {
    pub prot: libc::c_int,
    pub flags: libc::c_int,
    pub fd: Option<RawFd>,
    /// File offset of the user's byte 0 (any value; rounded down to a page internally).
    pub offset: u64,
}

#[derive(Debug)]
pub struct Region {
    map_ptr: *mut u8,
    map_len: usize,
    data: *mut u8,
    len: usize,
    /// Protection and flags the memory was mapped with, and the (page aligned) file offset
    /// of `map_ptr`: what it takes to map the same file pages again.
    prot: libc::c_int,
    flags: libc::c_int,
    file_off: libc::off_t,
    /// Whether dropping this descriptor unmaps the memory.
    owns: AtomicBool,
    /// False once the region was shrunk: its tail may no longer be file-backed, so it
    /// must never be grown in place (growth maps new memory instead).
    growable: bool,
    /// The kernel mapping's entry in the SIGBUS handler's table, shared by every
    /// descriptor of the same kernel mapping (successors and views), so damage recorded
    /// through one is seen through all. Unregistered by the owner, before `munmap`.
    mark: Mark,
}

// SAFETY: a Region is a descriptor of process-wide memory; the pointers are valid from any
// thread and the only interior mutability is the atomic `owns` flag.
unsafe impl Send for Region {}
// SAFETY: see `Send`; shared access only reads the immutable fields or the atomic flag.
unsafe impl Sync for Region {}

impl Region {
    /// Maps `len` bytes as `spec` says.
    pub fn map(spec: &MapSpec, len: usize, place: Placement) -> Result<Region> {
        if len == 0 {
            return Err(Error::Einval);
        }
        let page = page_size() as u64;
        let delta = (spec.offset % page) as usize;
        let file_off = spec.offset - delta as u64;
        let map_len = len.checked_add(delta).ok_or(Error::Einval)?;
        let file_off = libc::off_t::try_from(file_off).map_err(|_| Error::Einval)?;
        let (hint, extra) = match place {
            Placement::Any => (ptr::null_mut(), 0),
            Placement::Exact(a) if a < min_fixed_address() => return Err(Error::Einval),
            Placement::Exact(a) => (a as *mut libc::c_void, libc::MAP_FIXED_NOREPLACE),
        };
        let fd = spec.fd.unwrap_or(-1);
        // SAFETY: with a null hint or MAP_FIXED_NOREPLACE the kernel never replaces an
        // existing mapping, so no memory the VM uses can be affected; arguments are plain
        // values and the result is checked against MAP_FAILED.
        let p = unsafe { libc::mmap(hint, map_len, spec.prot, spec.flags | extra, fd, file_off) };
        if p == libc::MAP_FAILED {
            return Err(Error::last_os());
        }
        if let Placement::Exact(a) = place {
            if p as usize != a {
                // Kernels before 4.17 treat MAP_FIXED_NOREPLACE as a hint.
                // SAFETY: `p` is the mapping just created above, of `map_len` bytes.
                unsafe { libc::munmap(p, map_len) };
                return Err(Error::Eexist);
            }
        }
        // SAFETY: delta < page <= map_len, so this stays inside the new mapping.
        let data = unsafe { (p as *mut u8).add(delta) };
        // A shared mapping loses every page past a cut, a private one only the pages it
        // has not copied yet (the others hold private data that must stay).
        let shared = spec.flags & (libc::MAP_SHARED | libc::MAP_PRIVATE) != libc::MAP_PRIVATE;
        let mark = sigbus::register(
            p as usize,
            map_len,
            data as usize,
            unit_of(spec.flags),
            spec.prot,
            shared,
        );
        Ok(Region {
            map_ptr: p as *mut u8,
            map_len,
            data,
            len,
            prot: spec.prot,
            flags: spec.flags,
            file_off,
            owns: AtomicBool::new(true),
            growable: true,
            mark,
        })
    }

    /// Pointer to the user's byte 0.
    #[inline]
    pub fn ptr(&self) -> *mut u8 {
        self.data
    }

    /// Usable length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn delta(&self) -> usize {
        self.data as usize - self.map_ptr as usize
    }

    /// Tries to extend the mapping to `new_len` usable bytes without moving it. On success
    /// the returned descriptor owns the memory and `self` becomes a view that will not unmap.
    pub fn grow_in_place(&self, new_len: usize) -> Option<Region> {
        let new_map_len = new_len.checked_add(self.delta())?;
        if !self.growable || !self.owns.load(Ordering::Acquire) {
            return None;
        }
        // SAFETY: `map_ptr/map_len` is a mapping this descriptor owns (checked above); flags
        // 0 forbid moving it, so on success every pointer into it stays valid, and on
        // failure nothing changes.
        let p = unsafe {
            libc::mremap(
                self.map_ptr as *mut libc::c_void,
                self.map_len,
                new_map_len,
                0,
            )
        };
        if p == libc::MAP_FAILED || p as *mut u8 != self.map_ptr {
            return None;
        }
        self.owns.store(false, Ordering::Release);
        sigbus::resize(self.mark, new_map_len);
        Some(self.successor(new_map_len, new_len, true))
    }

    /// Undoes [`Region::grow_in_place`] before anything used the result: shrinks `grown`'s
    /// mapping back to this descriptor's size (in place, which cannot move it) and gives
    /// the ownership back to `self`. On failure `grown` is handed back, still owning.
    pub fn undo_grow(&self, grown: Region) -> std::result::Result<(), Region> {
        if grown.map_ptr != self.map_ptr || grown.map_len < self.map_len || self.owns() {
            return Err(grown);
        }
        // The fault handler must stop claiming the tail before it is unmapped and its
        // addresses can be given to anything else (nothing of ours uses the tail yet).
        sigbus::resize(self.mark, self.map_len);
        // SAFETY: `grown` owns the mapping at `map_ptr` (it came from `grow_in_place` on
        // `self` and was never installed, so nothing points past our old end); shrinking
        // with flags 0 keeps the first `self.map_len` bytes where they are.
        let p = unsafe {
            libc::mremap(
                grown.map_ptr as *mut libc::c_void,
                grown.map_len,
                self.map_len,
                0,
            )
        };
        if p == libc::MAP_FAILED || p as *mut u8 != self.map_ptr {
            sigbus::resize(self.mark, grown.map_len);
            return Err(grown);
        }
        grown.owns.store(false, Ordering::Release);
        self.owns.store(true, Ordering::Release);
        Ok(())
    }

    /// A descriptor that owns this one's memory (whose ownership the caller has just given
    /// up), now `map_len` bytes long with `len` usable.
    fn successor(&self, map_len: usize, len: usize, growable: bool) -> Region {
        Region {
            map_ptr: self.map_ptr,
            map_len,
            data: self.data,
            len,
            prot: self.prot,
            flags: self.flags,
            file_off: self.file_off,
            owns: AtomicBool::new(true),
            growable,
            mark: self.mark,
        }
    }

    /// A descriptor of the first `new_len` bytes of the same memory, which takes over the
    /// ownership (`self` becomes a view). Nothing is unmapped: bytes past `new_len` stay
    /// readable for binaries that point there. The result never grows in place.
    /// `None` if `self` does not own its memory or `new_len` is larger than it.
    pub fn shrunk(&self, new_len: usize) -> Option<Region> {
        if new_len > self.len || !self.owns.swap(false, Ordering::AcqRel) {
            return None;
        }
        Some(self.successor(self.map_len, new_len, false))
    }

    /// Replaces the whole pages that lie entirely past user byte `from` with private
    /// zero-filled memory, so that nothing in them depends on the file any more (a file
    /// cut shorter would make them fault with SIGBUS). The replacement is atomic: a
    /// concurrent reader sees either the old page or a zero page, never a hole. Dirty
    /// pages of a shared file mapping are not lost: they belong to the page cache.
    /// Only for a descriptor that owns its memory.
    pub fn detach_tail(&self, from: usize) -> Result<()> {
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        self.replace_tail(from, flags, -1, 0)
    }

    /// Undoes [`Region::detach_tail`]: maps the file pages past `from` back, from `fd`
    /// (the descriptor this region was mapped from).
    pub fn reattach_tail(&self, from: usize, fd: RawFd) -> Result<()> {
        self.replace_tail(from, self.flags & !libc::MAP_POPULATE, fd, self.file_off)
    }

    fn replace_tail(
        &self,
        from: usize,
        flags: libc::c_int,
        fd: RawFd,
        base: libc::off_t,
    ) -> Result<()> {
        if !self.owns.load(Ordering::Acquire) {
            return Err(Error::Einval);
        }
        let start = self
            .delta()
            .checked_add(from)
            .and_then(|b| b.checked_next_multiple_of(page_size()))
            .ok_or(Error::Einval)?;
        if start >= self.map_len {
            return Ok(());
        }
        let off = libc::off_t::try_from(start)
            .ok()
            .and_then(|s| base.checked_add(s))
            .ok_or(Error::Einval)?;
        // SAFETY: [map_ptr + start, map_ptr + map_len) is page aligned (map_ptr is, start
        // is rounded up to a page) and lies inside the mapping this descriptor owns, so
        // MAP_FIXED replaces only our own pages, never memory the VM uses for anything
        // else. The new pages get the protection the region was mapped with.
        let p = unsafe {
            libc::mmap(
                self.map_ptr.add(start) as *mut libc::c_void,
                self.map_len - start,
                self.prot,
                flags | libc::MAP_FIXED,
                fd,
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::last_os());
        }
        Ok(())
    }

    /// Whether dropping this descriptor unmaps its memory.
    pub fn owns(&self) -> bool {
        self.owns.load(Ordering::Acquire)
    }

    /// `msync` over the whole mapping: `MS_SYNC` waits for the disk, `MS_ASYNC` only asks.
    pub fn msync(&self, wait: bool) -> Result<()> {
        let how = if wait { libc::MS_SYNC } else { libc::MS_ASYNC };
        // SAFETY: the range is exactly the live mapping this descriptor describes.
        let r = unsafe { libc::msync(self.map_ptr as *mut libc::c_void, self.map_len, how) };
        if r != 0 {
            return Err(Error::last_os());
        }
        Ok(())
    }

    /// `madvise` over user bytes `[off, off + len)` (len 0: to the end), rounded out to pages.
    pub fn advise(&self, off: u64, len: u64, advice: libc::c_int) -> Result<()> {
        let (start, n) =
            crate::bounds::advise_range(self.delta(), off, len, self.len, page_size())?;
        if n == 0 {
            return Ok(());
        }
        // SAFETY: `advise_range` keeps [start, start + n) inside [0, map_len), page aligned.
        let r = unsafe { libc::madvise(self.map_ptr.add(start) as *mut libc::c_void, n, advice) };
        if r != 0 {
            return Err(Error::last_os());
        }
        Ok(())
    }

    /// Copies the first `min(len)` bytes of `other` into `self`.
    pub fn copy_from(&self, other: &Region) {
        let n = self.len.min(other.len);
        // SAFETY: both regions are mapped for at least `n` bytes and are distinct mappings.
        unsafe { ptr::copy_nonoverlapping(other.data, self.data, n) };
    }

    /// Start address of the kernel mapping.
    pub fn map_addr(&self) -> usize {
        self.map_ptr as usize
    }

    /// Whether every user byte before `end` still comes from the file: false once the
    /// SIGBUS handler replaced a page at or before it (the file was cut, or the page could
    /// not be read or written). Call it after touching the bytes: a fault in that access
    /// has run the handler, on this thread, by then. One load and one compare.
    #[inline]
    pub fn intact_to(&self, end: usize) -> bool {
        end <= self.mark.vanished()
    }

    /// Offset (from user byte 0) of the first byte the SIGBUS handler replaced, if any.
    pub fn vanished(&self) -> Option<usize> {
        Some(self.mark.vanished()).filter(|&v| v != crate::registry::INTACT)
    }

    /// Reads the user byte at `end - 1` (nothing if `end == 0`), so that if its page is gone
    /// the fault happens now. Since a file is cut from the end, a range whose last byte is
    /// still there is still there as a whole. `end <= len`.
    #[inline]
    pub fn probe(&self, end: usize) {
        if end > 0 {
            // SAFETY: `end - 1 < len`, inside the mapping; a volatile read so that it is
            // neither removed nor moved. A fault here is repaired by the SIGBUS handler.
            unsafe { ptr::read_volatile(self.data.add(end - 1)) };
        }
    }

    /// Records that the bytes from `offset` on are not the file's (this region was made as
    /// a copy of a damaged one).
    pub fn record_damage(&self, offset: usize) {
        self.mark.record(offset);
    }
}

/// The unit in which pages of a mapping made with `flags` are replaced: the page size,
/// or the huge page size for `MAP_HUGETLB`.
fn unit_of(flags: libc::c_int) -> usize {
    if flags & libc::MAP_HUGETLB == 0 {
        return page_size();
    }
    let shift = (flags >> libc::MAP_HUGE_SHIFT) & 0x3f;
    if shift != 0 {
        return 1usize << shift;
    }
    default_huge_page()
}

/// `Hugepagesize` from /proc/meminfo (2 MiB if it cannot be read).
fn default_huge_page() -> usize {
    static SIZE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *SIZE.get_or_init(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                let l = t.lines().find(|l| l.starts_with("Hugepagesize:"))?;
                let kb: usize = l.split_whitespace().nth(1)?.parse().ok()?;
                kb.checked_mul(1024)
            })
            .unwrap_or(2 << 20)
    })
}

impl Drop for Region {
    fn drop(&mut self) {
        if self.owns.load(Ordering::Acquire) {
            // Out of the SIGBUS handler's table first: once this returns no handler can
            // touch these addresses, which munmap is about to give back.
            sigbus::unregister(self.mark);
            // SAFETY: this descriptor owns the mapping and is being dropped, which the
            // mapping code does only when no reader and no binary can still reach it.
            unsafe { libc::munmap(self.map_ptr as *mut libc::c_void, self.map_len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anon(len: usize) -> Region {
        let spec = MapSpec {
            prot: libc::PROT_READ | libc::PROT_WRITE,
            flags: libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            fd: None,
            offset: 0,
        };
        Region::map(&spec, len, Placement::Any).unwrap()
    }

    #[test]
    fn zero_length_is_refused() {
        let spec = MapSpec {
            prot: libc::PROT_READ,
            flags: libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            fd: None,
            offset: 0,
        };
        assert_eq!(
            Region::map(&spec, 0, Placement::Any).unwrap_err(),
            Error::Einval
        );
    }

    #[test]
    fn low_fixed_addresses_are_refused() {
        let min = min_fixed_address();
        assert!(min >= page_size());
        let spec = MapSpec {
            prot: libc::PROT_READ,
            flags: libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            fd: None,
            offset: 0,
        };
        for a in [0, min - page_size()] {
            let e = Region::map(&spec, 4096, Placement::Exact(a)).unwrap_err();
            assert_eq!(e, Error::Einval, "address {a:#x}");
        }
    }

    #[test]
    fn exact_placement_never_replaces() {
        let r = anon(4096);
        let spec = MapSpec {
            prot: libc::PROT_READ,
            flags: libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            fd: None,
            offset: 0,
        };
        let e = Region::map(&spec, 4096, Placement::Exact(r.map_addr())).unwrap_err();
        assert_eq!(e, Error::Eexist);
        // SAFETY: test reads its own fresh anonymous mapping.
        assert_eq!(unsafe { *r.ptr() }, 0);
    }

    /// A fresh anonymous mapping of `len` bytes at the start of a free range of
    /// `reserve` bytes: the range is reserved first (a mapping of our own, so the kernel
    /// places nothing else there), given back, and mapped again at its start. `None` if
    /// another thread took the address in between.
    fn with_room_after(len: usize, reserve: usize) -> Option<Region> {
        // SAFETY: a new private anonymous mapping at an address the kernel chooses; it
        // cannot affect any existing memory.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                reserve,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        // SAFETY: `p` is the mapping just made, `reserve` bytes long; nothing uses it.
        assert_eq!(unsafe { libc::munmap(p, reserve) }, 0);
        let spec = MapSpec {
            prot: libc::PROT_READ | libc::PROT_WRITE,
            flags: libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            fd: None,
            offset: 0,
        };
        Region::map(&spec, len, Placement::Exact(p as usize)).ok()
    }

    /// A mapping of `len` bytes (after `prepare` ran on it) and what growing it in place to
    /// `new_len` bytes made, with the room for that growth made sure of. Another thread
    /// may map something into the room before the growth (a mapping made meanwhile
    /// anywhere in the process); that attempt is dropped and made again, a hundred times
    /// at most, so a `grow_in_place` that does not grow fails the test.
    fn grown_in_place(len: usize, new_len: usize, prepare: impl Fn(&Region)) -> (Region, Region) {
        for _ in 0..100 {
            let Some(r) = with_room_after(len, new_len) else {
                continue;
            };
            prepare(&r);
            if let Some(g) = r.grow_in_place(new_len) {
                return (r, g);
            }
        }
        panic!("mremap never grew a mapping into the free room after it");
    }

    /// Descriptors of one kernel mapping share its damage record: a successor made by
    /// growing in place or by `shrunk`, and the view left behind, all see the same record.
    #[test]
    fn successors_and_views_share_the_damage_record() {
        let r = anon(4096);
        assert_eq!(r.vanished(), None);
        r.record_damage(100);
        let s = r.shrunk(2048).unwrap();
        assert_eq!((r.vanished(), s.vanished()), (Some(100), Some(100)));
        assert!(s.intact_to(100) && !s.intact_to(101));
        s.record_damage(50);
        assert_eq!(r.vanished(), Some(50));
        let (fresh, g) = grown_in_place(8192, 16384, |_| ());
        g.record_damage(9000);
        assert_eq!(fresh.vanished(), Some(9000));
        assert!(g.intact_to(9000) && !g.intact_to(9001));
    }

    #[test]
    fn grow_in_place_keeps_the_address_and_the_bytes() {
        // SAFETY: test writes into its own mapping.
        let (r, g) = grown_in_place(4096, 8192, |r| unsafe { *r.ptr() = 7 });
        assert_eq!(g.ptr(), r.ptr());
        assert_eq!(g.len(), 8192);
        assert!(g.owns() && !r.owns());
        // SAFETY: same mapping, now 8192 bytes.
        unsafe { assert_eq!(*g.ptr(), 7) };
        drop(r); // a view: must not unmap
                 // SAFETY: still mapped through `g`.
        unsafe { *g.ptr().add(8191) = 1 };
    }

    /// With the page after it taken (by us, or by anything else that got there first),
    /// a mapping cannot grow in place, and says so keeping its memory.
    #[test]
    fn grow_in_place_reports_failure_when_the_next_page_is_taken() {
        let page = page_size();
        let r = anon(page);
        let spec = MapSpec {
            prot: libc::PROT_READ,
            flags: libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            fd: None,
            offset: 0,
        };
        let next = Region::map(&spec, page, Placement::Exact(r.map_addr() + page));
        assert!(matches!(next, Ok(_) | Err(Error::Eexist)), "{next:?}");
        assert!(r.grow_in_place(2 * page).is_none());
        assert!(r.owns());
        // SAFETY: still our mapping, which kept its length.
        unsafe { *r.ptr().add(page - 1) = 1 };
    }
}
