//! The kernel mappings emmap owns, in a table the SIGBUS handler can read (see `sigbus.rs`).
//!
//! The handler runs inside whatever thread touched a page the file no longer has, perhaps
//! in the middle of a NIF holding a lock, so it may take no lock and allocate nothing. The
//! table is built for that reader:
//!
//! - Slots live in chunks that are never freed (the first one is a static, later ones are
//!   leaked boxes linked by an atomic pointer), so a pointer to a slot is valid forever and
//!   the handler can walk the table without caring what other threads do meanwhile.
//! - Each slot's range is guarded by a sequence number, as in a seqlock: writers make it
//!   odd, store the fields, make it even again; the handler reads the number, the fields,
//!   and the number again, and believes the fields only if it was even and unchanged. A
//!   half-written slot is never matched.
//! - Writers (register, grow, unregister: ordinary code, never the handler) are serialised
//!   by a mutex, which also guards the free list. The handler never touches that mutex.
//! - A slot is handed out again only after every handler that might still be using its old
//!   contents has left (`IN_HANDLER`), so the handler never repairs a range that has been
//!   given to another mapping in the meantime (see [`unregister`]).
//!
//! Each slot also holds the mapping's damage record, `vanished`: the offset (from the
//! user's byte 0) of the first page the handler had to replace, or `usize::MAX`. Calls read
//! it after touching mapped memory to find out whether what they touched was real.

use std::sync::atomic::{fence, AtomicIsize, AtomicPtr, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Slots per chunk.
const CHUNK: usize = 256;

/// No damage recorded.
pub const INTACT: usize = usize::MAX;

/// One registered kernel mapping. `vanished` must stay the first field: other copies of
/// this library (see `sigbus.rs`) read it through a bare `*const AtomicUsize`.
#[repr(C)]
pub struct Slot {
    /// Offset from `base` of the first byte the handler replaced, or [`INTACT`].
    pub vanished: AtomicUsize,
    /// Even: the fields below are stable. Odd: a writer is changing them.
    seq: AtomicUsize,
    /// `[start, end)`: the kernel mapping (page aligned); `start == 0`: the slot is free.
    start: AtomicUsize,
    end: AtomicUsize,
    /// Address of the user's byte 0 (offsets in `vanished` are counted from here).
    base: AtomicUsize,
    /// Granularity of a replacement: the page size, or the huge page size.
    align: AtomicUsize,
    /// Protection to give replacement pages.
    prot: AtomicIsize,
    /// 1: replace from the faulting page to the end of the mapping (a shared mapping,
    /// whose later pages are cut as well); 0: only the faulting page (a private mapping,
    /// whose later pages may hold private copies that must not be thrown away).
    tail: AtomicUsize,
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            vanished: AtomicUsize::new(INTACT),
            seq: AtomicUsize::new(0),
            start: AtomicUsize::new(0),
            end: AtomicUsize::new(0),
            base: AtomicUsize::new(0),
            align: AtomicUsize::new(0),
            prot: AtomicIsize::new(0),
            tail: AtomicUsize::new(0),
        }
    }

    /// Runs `f` (stores to the fields) as one seqlock write. Only under `WRITERS`.
    fn write(&self, f: impl FnOnce(&Slot)) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        f(self);
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }
}

struct Chunk {
    slots: [Slot; CHUNK],
    next: AtomicPtr<Chunk>,
}

static FIRST: Chunk = Chunk {
    slots: [const { Slot::new() }; CHUNK],
    next: AtomicPtr::new(std::ptr::null_mut()),
};

/// Handlers currently looking at the table (see [`unregister`]).
static IN_HANDLER: AtomicUsize = AtomicUsize::new(0);

/// Writers' state: free slots, and the last chunk (where a new one is linked).
struct Writers {
    free: Vec<&'static Slot>,
    last: &'static Chunk,
    /// Slots of `last` never used yet.
    fresh: usize,
}

static WRITERS: Mutex<Option<Writers>> = Mutex::new(None);

fn writers() -> std::sync::MutexGuard<'static, Option<Writers>> {
    // Nothing that can panic runs under the lock; recover anyway rather than panic in a
    // destructor.
    WRITERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the handler needs to repair a fault: a copy of a slot as it was at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub slot: &'static Slot,
    pub start: usize,
    pub end: usize,
    pub base: usize,
    pub align: usize,
    pub prot: i32,
    pub tail: bool,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("vanished", &self.vanished.load(Ordering::Relaxed))
            .finish()
    }
}

impl PartialEq for Slot {
    fn eq(&self, other: &Slot) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for Slot {}

fn round_up(v: usize, to: usize) -> usize {
    v.checked_next_multiple_of(to)
        .unwrap_or(usize::MAX - to + 1)
}

/// Registers the kernel mapping `[start, start + len)` (start aligned to `align`), whose
/// user byte 0 is at `base`. Returns its slot, whose damage record starts clean.
pub fn register(
    start: usize,
    len: usize,
    base: usize,
    align: usize,
    prot: i32,
    tail: bool,
) -> &'static Slot {
    let align = align.max(1);
    let mut g = writers();
    let w = g.get_or_insert_with(|| Writers {
        free: Vec::new(),
        last: &FIRST,
        fresh: CHUNK,
    });
    let slot = match w.free.pop() {
        Some(s) => s,
        None => {
            if w.fresh == 0 {
                let c: &'static Chunk = Box::leak(Box::new(Chunk {
                    slots: [const { Slot::new() }; CHUNK],
                    next: AtomicPtr::new(std::ptr::null_mut()),
                }));
                // Release: a reader that follows the link sees the initialised chunk.
                w.last
                    .next
                    .store(c as *const Chunk as *mut Chunk, Ordering::Release);
                w.last = c;
                w.fresh = CHUNK;
            }
            w.fresh -= 1;
            &w.last.slots[CHUNK - 1 - w.fresh]
        }
    };
    slot.write(|s| {
        s.vanished.store(INTACT, Ordering::Relaxed);
        s.end.store(round_up(start + len, align), Ordering::Relaxed);
        s.base.store(base, Ordering::Relaxed);
        s.align.store(align, Ordering::Relaxed);
        s.prot.store(prot as isize, Ordering::Relaxed);
        s.tail.store(usize::from(tail), Ordering::Relaxed);
        s.start.store(start, Ordering::Relaxed);
    });
    slot
}

/// The mapping of `slot` now ends at `start + len` (it was grown in place).
pub fn resize(slot: &'static Slot, len: usize) {
    let _g = writers();
    let start = slot.start.load(Ordering::Relaxed);
    let align = slot.align.load(Ordering::Relaxed).max(1);
    if start != 0 {
        slot.write(|s| s.end.store(round_up(start + len, align), Ordering::Relaxed));
    }
}

/// Forgets `slot`'s mapping. Must be called before the mapping is unmapped: once this
/// returns, no handler uses the slot's old range any more, so the addresses may be given
/// to anything else.
pub fn unregister(slot: &'static Slot) {
    let mut g = writers();
    slot.write(|s| {
        s.start.store(0, Ordering::Relaxed);
        s.end.store(0, Ordering::Relaxed);
    });
    // A handler that read the slot before the write above counted itself in IN_HANDLER
    // first; one that did not is counted after and reads the cleared slot (both sides use
    // SeqCst, the store-then-load pattern). Wait for the former.
    fence(Ordering::SeqCst);
    while IN_HANDLER.load(Ordering::SeqCst) != 0 {
        std::thread::yield_now();
    }
    if let Some(w) = g.as_mut() {
        w.free.push(slot);
    }
}

/// Marks the calling handler as inside the table until the guard is dropped.
/// Async-signal-safe: one atomic add, one atomic subtract.
pub struct HandlerGuard(());

impl HandlerGuard {
    #[inline]
    pub fn enter() -> HandlerGuard {
        IN_HANDLER.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        HandlerGuard(())
    }
}

impl Drop for HandlerGuard {
    #[inline]
    fn drop(&mut self) {
        IN_HANDLER.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Reads one slot consistently, or `None` if it is free. Waits (briefly, bounded) while a
/// writer is changing it. Async-signal-safe: loads only.
fn read(slot: &'static Slot) -> Option<Found> {
    for i in 0..100_000u32 {
        let s1 = slot.seq.load(Ordering::Acquire);
        if s1 & 1 == 1 {
            // A writer on another thread is in the middle of a few stores: give it the
            // CPU now and then (sched_yield is a bare system call).
            std::hint::spin_loop();
            if i % 64 == 63 {
                // SAFETY: no arguments, no memory touched.
                unsafe { libc::sched_yield() };
            }
            continue;
        }
        let start = slot.start.load(Ordering::Relaxed);
        let end = slot.end.load(Ordering::Relaxed);
        let base = slot.base.load(Ordering::Relaxed);
        let align = slot.align.load(Ordering::Relaxed);
        let prot = slot.prot.load(Ordering::Relaxed);
        let tail = slot.tail.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if slot.seq.load(Ordering::Relaxed) != s1 {
            continue;
        }
        if start == 0 {
            return None;
        }
        return Some(Found {
            slot,
            start,
            end,
            base,
            align,
            prot: prot as i32,
            tail: tail != 0,
        });
    }
    None
}

/// The registered mapping that contains `addr`, if any. Only meaningful while a
/// [`HandlerGuard`] is held. Async-signal-safe: loads only, no allocation, no lock.
pub fn lookup(addr: usize) -> Option<Found> {
    let mut chunk: &'static Chunk = &FIRST;
    loop {
        for slot in &chunk.slots {
            // Cheap test first: most slots are free or elsewhere.
            let start = slot.start.load(Ordering::Relaxed);
            if start == 0 || addr < start {
                continue;
            }
            if let Some(f) = read(slot) {
                if f.start <= addr && addr < f.end {
                    return Some(f);
                }
            }
        }
        let next = chunk.next.load(Ordering::Acquire);
        if next.is_null() {
            return None;
        }
        // SAFETY: chunks are leaked boxes, never freed, fully initialised before being
        // linked (Release store in `register`, Acquire load above).
        chunk = unsafe { &*next };
    }
}

/// Records that bytes from `offset` (counted from the user's byte 0) no longer come from
/// the file. Async-signal-safe: one atomic read-modify-write.
#[inline]
pub fn record(slot: &Slot, offset: usize) {
    slot.vanished.fetch_min(offset, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// Fake ranges above every user-space address (2^56 is beyond even 5-level paging),
    /// so that they never overlap a real mapping that another test of this process
    /// registers meanwhile (0x7f.. addresses, where mmap puts them, did now and then);
    /// never faulted on: the registry only stores numbers.
    const FAKE: usize = 1 << 56;
    const PAGE: usize = 4096;

    /// Register, grow and remove ranges from several threads while another looks them up:
    /// a lookup only ever returns a range exactly as one writer made it (its length is a
    /// function of its start, its base equals its start), never a range that was not
    /// registered, and always finds a range that stays registered. (On x86 the order of
    /// the stores in `register` already keeps a reader from seeing a new start with an old
    /// end; the sequence numbers are what make that hold on weaker CPUs too.)
    #[test]
    fn lookups_never_see_a_half_written_slot() {
        let stop = Arc::new(AtomicBool::new(false));
        let registered = Arc::new(AtomicU64::new(0));
        let len_of = |start: usize, grown: bool| {
            let k = (start - FAKE) / (1 << 20);
            PAGE * (1 + k % 7) * if grown { 2 } else { 1 }
        };
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let (stop, registered) = (stop.clone(), registered.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        for i in 0..50 {
                            let start = FAKE + (t * 1000 + i) * (1 << 20);
                            let s = register(start, len_of(start, false), start, PAGE, 3, true);
                            resize(s, len_of(start, true));
                            unregister(s);
                            registered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        // A range that stays registered throughout.
        let steady = FAKE + 9000 * (1 << 20);
        let st = register(steady, PAGE, steady, PAGE, 3, false);
        let mut found = 0u64;
        let t0 = Instant::now();
        // At least 300 ms, and until both sides got somewhere (a loaded machine may starve
        // the writers for a while), at most 30 s.
        while t0.elapsed() < Duration::from_millis(300)
            || (found < 100 || registered.load(Ordering::Relaxed) < 1000)
                && t0.elapsed() < Duration::from_secs(30)
        {
            for t in 0..4 {
                for i in 0..50 {
                    let start = FAKE + (t * 1000 + i) * (1 << 20);
                    let _g = HandlerGuard::enter();
                    if let Some(f) = lookup(start + 10) {
                        assert_eq!(f.start, start);
                        let len = f.end - f.start;
                        assert!(len == len_of(start, false) || len == len_of(start, true));
                        assert_eq!(f.base, start);
                        found += 1;
                    }
                }
            }
            let _g = HandlerGuard::enter();
            let f = lookup(steady + PAGE - 1).expect("a registered range is always found");
            assert_eq!((f.start, f.end, f.tail), (steady, steady + PAGE, false));
            assert!(lookup(steady + PAGE).is_none_or(|f| f.start != steady));
        }
        stop.store(true, Ordering::Relaxed);
        writers.into_iter().for_each(|h| h.join().unwrap());
        unregister(st);
        let registered = registered.load(Ordering::Relaxed);
        assert!(registered >= 1000 && found >= 100, "{registered} {found}");
    }

    #[test]
    fn damage_is_the_lowest_offset_and_starts_clean() {
        let start = FAKE + 9500 * (1 << 20);
        let s = register(start, 4 * PAGE, start + 100, PAGE, 3, true);
        assert_eq!(s.vanished.load(Ordering::Relaxed), INTACT);
        record(s, 3 * PAGE);
        record(s, 2 * PAGE);
        record(s, 3 * PAGE);
        assert_eq!(s.vanished.load(Ordering::Relaxed), 2 * PAGE);
        unregister(s);
        let again = register(start, PAGE, start, PAGE, 3, true);
        assert_eq!(again.vanished.load(Ordering::Relaxed), INTACT);
        unregister(again);
    }
}
