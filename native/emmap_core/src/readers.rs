//! A reader/writer exclusion whose read side costs no atomic read-modify-write.
//!
//! Data operations on a `lock` handle are readers; `close` and the size changes (`resize`,
//! `truncate`, a growing `allocate`) are the writer.
//! Readers are many and frequent, the writer is rare, so the cost is put on the writer
//! (the asymmetric scheme of user-space RCU):
//!
//! - Each thread owns one slot of a process-wide table, on its own cache line. A reader
//!   stores the address of the `Readers` it enters in its slot (a plain store), checks the
//!   writer flag, and clears the slot when done.
//! - The writer raises the flag, then calls `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`,
//!   which makes every running thread of the process execute a full memory barrier. After
//!   it, either a reader's slot store is visible to the writer (which then waits for the
//!   slot to clear), or that reader's later load of the flag sees it raised (and the
//!   reader steps back). This is the store-then-load (Dekker) pattern, with the reader's
//!   half of the fence paid by the writer.
//! - Where `membarrier` is not available, or a thread finds no free slot, readers fall
//!   back to per-`Readers` counters updated with sequentially consistent atomics.
//!
//! Reads must not nest on one thread (no emmap operation calls another while inside).
//! Writers are serialised by the caller (they hold the handle's state lock).

use std::cell::Cell;
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

const COUNTERS: usize = 16;
const GLOBAL_SLOTS: usize = 256;

#[repr(align(128))]
struct Slot(AtomicUsize);

/// Per-thread slots: 0 when the thread is not reading, else the `Readers` it is in.
static SLOTS: [Slot; GLOBAL_SLOTS] = [const { Slot(AtomicUsize::new(0)) }; GLOBAL_SLOTS];
/// Which slots belong to a live thread.
static CLAIMED: [AtomicBool; GLOBAL_SLOTS] = [const { AtomicBool::new(false) }; GLOBAL_SLOTS];
/// Next counter for threads on the fallback path.
static NEXT_COUNTER: AtomicUsize = AtomicUsize::new(0);

const MEMBARRIER_CMD_QUERY: libc::c_int = 0;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

fn membarrier(cmd: libc::c_int) -> libc::c_long {
    // SAFETY: membarrier takes two integers and touches no memory of ours.
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0) }
}

/// Whether the process is registered for expedited private membarriers.
fn membarrier_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let cmds = membarrier(MEMBARRIER_CMD_QUERY);
        cmds > 0
            && cmds & libc::c_long::from(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0
            && membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0
    })
}

/// A thread's claim on a global slot, given back when the thread exits.
struct Claim(Option<usize>);

impl Claim {
    fn new() -> Claim {
        if !membarrier_ready() || fallback_forced() {
            return Claim(None);
        }
        let free = (0..GLOBAL_SLOTS).find(|&i| {
            CLAIMED[i]
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        });
        Claim(free)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // From now on this thread reads through the counters (should it read at all while
        // its other thread-locals are being destroyed).
        FAST.with(|f| f.set(FAST_NONE));
        if let Some(i) = self.0 {
            CLAIMED[i].store(false, Ordering::Release);
        }
    }
}

/// `FAST` before the thread's first read.
const FAST_UNKNOWN: usize = usize::MAX;
/// `FAST` for a thread without a slot.
const FAST_NONE: usize = usize::MAX - 1;

thread_local! {
    /// The thread's claim, which gives its slot back when the thread exits. Lazily
    /// initialised and with a destructor, so each access checks its state: only the first
    /// read of a thread looks here.
    static CLAIM: Claim = Claim::new();
    /// The index of this thread's slot (or `FAST_UNKNOWN`, `FAST_NONE`): what every read
    /// looks at. A constant initialiser and no destructor make an access one TLS address
    /// lookup and one load, with no state check (in a shared library, `thread_local!`
    /// with a lazy initialiser costs a call and a branch more on every read).
    static FAST: Cell<usize> = const { Cell::new(FAST_UNKNOWN) };
    static COUNTER: Cell<usize> = const { Cell::new(usize::MAX) };
}

#[cfg(test)]
thread_local! {
    /// Set by a test on a thread before its first read: the thread reads through the
    /// counters, as every thread does where `membarrier` is missing.
    static FORCE_FALLBACK: Cell<bool> = const { Cell::new(false) };
}

#[cfg(test)]
fn fallback_forced() -> bool {
    FORCE_FALLBACK.with(Cell::get)
}

#[cfg(not(test))]
#[inline(always)]
fn fallback_forced() -> bool {
    false
}

/// This thread's global slot, if it has one.
#[inline(always)]
fn global_slot() -> Option<&'static AtomicUsize> {
    let i = FAST.with(Cell::get);
    if i < GLOBAL_SLOTS {
        Some(&SLOTS[i].0)
    } else {
        global_slot_slow(i)
    }
}

/// The first read of a thread claims its slot (or finds none); later ones find `FAST`
/// set. A thread whose `CLAIM` is already destroyed gets none.
#[cold]
#[inline(never)]
fn global_slot_slow(i: usize) -> Option<&'static AtomicUsize> {
    if i != FAST_UNKNOWN {
        return None;
    }
    let s = CLAIM.try_with(|c| c.0).ok().flatten();
    FAST.with(|f| f.set(s.unwrap_or(FAST_NONE)));
    s.map(|i| &SLOTS[i].0)
}

fn counter_index() -> usize {
    COUNTER.with(|s| {
        let v = s.get();
        if v != usize::MAX {
            return v;
        }
        let v = NEXT_COUNTER.fetch_add(1, Ordering::Relaxed) % COUNTERS;
        s.set(v);
        v
    })
}

fn pause() {
    std::hint::spin_loop();
    std::thread::yield_now();
}

pub struct Readers {
    counters: [Slot; COUNTERS],
    writer: AtomicBool,
}

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readers")
            .field("writer", &self.writer)
            .finish()
    }
}

impl Default for Readers {
    fn default() -> Self {
        Readers {
            counters: [const { Slot(AtomicUsize::new(0)) }; COUNTERS],
            writer: AtomicBool::new(false),
        }
    }
}

/// Held by a reader; the writer waits for it to be dropped.
pub enum ReadGuard<'a> {
    Slot(&'static AtomicUsize),
    Counter(&'a AtomicUsize),
}

impl Drop for ReadGuard<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        match self {
            ReadGuard::Slot(s) => s.store(0, Ordering::Release),
            ReadGuard::Counter(c) => {
                c.fetch_sub(1, Ordering::Release);
            }
        }
    }
}

/// Held by the writer; readers wait while it exists.
pub struct WriteGuard<'a> {
    flag: &'a AtomicBool,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.flag.store(false, Ordering::Release);
    }
}

impl Readers {
    fn id(&self) -> usize {
        self as *const Readers as usize
    }

    /// Enters the read side.
    #[inline(always)]
    pub fn read(&self) -> ReadGuard<'_> {
        match global_slot() {
            Some(slot) => loop {
                slot.store(self.id(), Ordering::Relaxed);
                // The CPU may still order the flag load before the store above; the
                // writer's membarrier makes up for that (see the module doc).
                compiler_fence(Ordering::SeqCst);
                if !self.writer.load(Ordering::Relaxed) {
                    // Accesses to the mapping must not move before the flag check.
                    compiler_fence(Ordering::SeqCst);
                    std::sync::atomic::fence(Ordering::Acquire);
                    return ReadGuard::Slot(slot);
                }
                slot.store(0, Ordering::Release);
                while self.writer.load(Ordering::Acquire) {
                    pause();
                }
            },
            None => self.read_counted(),
        }
    }

    #[cold]
    #[inline(never)]
    fn read_counted(&self) -> ReadGuard<'_> {
        let count = &self.counters[counter_index()].0;
        loop {
            // SeqCst on both sides (here and in `write`): either the writer sees this
            // increment or this reader sees the writer's flag.
            count.fetch_add(1, Ordering::SeqCst);
            if !self.writer.load(Ordering::SeqCst) {
                return ReadGuard::Counter(count);
            }
            count.fetch_sub(1, Ordering::SeqCst);
            while self.writer.load(Ordering::Acquire) {
                pause();
            }
        }
    }

    /// Enters the write side: waits until no reader is inside. Callers serialise writers.
    pub fn write(&self) -> WriteGuard<'_> {
        self.writer.store(true, Ordering::SeqCst);
        // Lowers the flag again however this function is left (a panic included).
        let guard = WriteGuard { flag: &self.writer };
        if membarrier_ready() {
            // Registered, so it does not fail; should it, slot readers could be missed:
            // retry, and give up (unwinding, nothing unmapped) rather than go on.
            let mut tries = 0;
            while membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0 {
                tries += 1;
                assert!(tries < 1000, "membarrier keeps failing");
                pause();
            }
        }
        let me = self.id();
        for s in &SLOTS {
            while s.0.load(Ordering::Acquire) == me {
                pause();
            }
        }
        for c in &self.counters {
            while c.0.load(Ordering::SeqCst) != 0 {
                pause();
            }
        }
        guard
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Tests that fill the slot table, or count on free slots, must not run at the same
    /// time.
    static TABLE: Mutex<()> = Mutex::new(());

    /// Which way a thread's reads went.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct Paths {
        slot: u64,
        counter: u64,
    }

    impl Paths {
        fn count(&mut self, g: &ReadGuard<'_>) {
            match g {
                ReadGuard::Slot(_) => self.slot += 1,
                ReadGuard::Counter(_) => self.counter += 1,
            }
        }
    }

    /// `threads` readers (reading through the counters if `fallback`) against a writer
    /// that checks no reader is inside; returns which ways the reads went.
    fn exclusion(threads: usize, fallback: bool) -> Paths {
        let r = Arc::new(Readers::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                let (r, inside, stop) = (r.clone(), inside.clone(), stop.clone());
                std::thread::spawn(move || {
                    FORCE_FALLBACK.with(|f| f.set(fallback));
                    let mut paths = Paths::default();
                    while !stop.load(Ordering::Relaxed) {
                        let g = r.read();
                        inside.fetch_add(1, Ordering::SeqCst);
                        for _ in 0..10 {
                            std::hint::spin_loop();
                        }
                        inside.fetch_sub(1, Ordering::SeqCst);
                        paths.count(&g);
                    }
                    paths
                })
            })
            .collect();
        for _ in 0..2000 {
            let _w = r.write();
            // Looked at for a while, so that a reader let in by mistake is seen.
            for _ in 0..100 {
                assert_eq!(inside.load(Ordering::SeqCst), 0);
                std::hint::spin_loop();
            }
        }
        stop.store(true, Ordering::Relaxed);
        let mut all = Paths::default();
        for h in hs {
            let p = h.join().unwrap();
            all.slot += p.slot;
            all.counter += p.counter;
        }
        assert!(all.slot + all.counter > 0);
        all
    }

    /// With `membarrier`, readers take slots of the table; where it is missing, they
    /// count (the test below covers that way everywhere).
    #[test]
    fn writer_excludes_readers() {
        let _t = TABLE.lock().unwrap();
        let p = exclusion(4, false);
        if membarrier_ready() {
            assert_eq!((p.slot > 0, p.counter), (true, 0), "{p:?}");
        } else {
            assert_eq!((p.slot, p.counter > 0), (0, true), "{p:?}");
        }
    }

    #[test]
    fn writer_excludes_readers_that_count() {
        let p = exclusion(4, true);
        assert_eq!((p.slot, p.counter > 0), (0, true), "{p:?}");
    }

    /// More threads than global slots: the rest take the counter path, still excluded.
    #[test]
    fn writer_excludes_readers_beyond_the_slot_table() {
        let _t = TABLE.lock().unwrap();
        let p = exclusion(GLOBAL_SLOTS + 8, false);
        assert!(p.counter > 0, "{p:?}");
        assert_eq!(p.slot > 0, membarrier_ready(), "{p:?}");
    }

    /// Whether a new thread's read takes a slot (`fallback`: forced onto the counters).
    fn takes_a_slot(fallback: bool) -> bool {
        std::thread::spawn(move || {
            FORCE_FALLBACK.with(|f| f.set(fallback));
            let r = Readers::default();
            let g = r.read();
            matches!(g, ReadGuard::Slot(_))
        })
        .join()
        .unwrap()
    }

    #[test]
    fn slots_are_given_back_when_threads_exit() {
        let _t = TABLE.lock().unwrap();
        for _ in 0..(2 * GLOBAL_SLOTS) {
            std::thread::spawn(|| {
                let r = Readers::default();
                drop(r.read());
            })
            .join()
            .unwrap();
        }
        // Had the threads above kept their slots, none would be left.
        assert_eq!(takes_a_slot(false), membarrier_ready());
        assert!(!takes_a_slot(true));
    }
}
