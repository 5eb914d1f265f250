//! A reader/writer exclusion whose read side scales across cores.
//!
//! Readers (every data operation on a `lock` handle) announce themselves in one of several
//! counters, each on its own cache line, picked per thread; two schedulers reading the same
//! handle therefore never write to the same cache line. A writer (`close`, `resize`) raises
//! a flag and waits until every counter is zero; readers that see the flag step back until
//! it is lowered. Writers are serialised by the caller (they hold the handle's state lock).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

const SLOTS: usize = 16;

#[repr(align(128))]
#[derive(Default)]
struct Slot(AtomicUsize);

pub struct Readers {
    slots: [Slot; SLOTS],
    writer: AtomicBool,
}

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readers")
            .field("writer", &self.writer)
            .finish()
    }
}

static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn my_slot() -> usize {
    SLOT.with(|s| {
        let v = s.get();
        if v != usize::MAX {
            return v;
        }
        let v = NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % SLOTS;
        s.set(v);
        v
    })
}

fn pause() {
    std::hint::spin_loop();
    std::thread::yield_now();
}

/// Held by a reader; the writer waits for it to be dropped.
pub struct ReadGuard<'a> {
    count: &'a AtomicUsize,
}

impl Drop for ReadGuard<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Release);
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

impl Default for Readers {
    fn default() -> Self {
        Readers {
            slots: Default::default(),
            writer: AtomicBool::new(false),
        }
    }
}

impl Readers {
    /// Enters the read side. Must not be called again on the same thread while the guard
    /// lives (no nesting).
    #[inline]
    pub fn read(&self) -> ReadGuard<'_> {
        let count = &self.slots[my_slot()].0;
        loop {
            // SeqCst on both sides (here and in `write`) means that either the writer sees
            // this increment or this reader sees the writer's flag.
            count.fetch_add(1, Ordering::SeqCst);
            if !self.writer.load(Ordering::SeqCst) {
                return ReadGuard { count };
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
        for s in &self.slots {
            while s.0.load(Ordering::SeqCst) != 0 {
                pause();
            }
        }
        WriteGuard { flag: &self.writer }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn writer_excludes_readers() {
        let r = Arc::new(Readers::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let (r, inside, stop) = (r.clone(), inside.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let _g = r.read();
                        inside.fetch_add(1, Ordering::SeqCst);
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for _ in 0..1000 {
            let _w = r.write();
            assert_eq!(inside.load(Ordering::SeqCst), 0);
        }
        stop.store(true, Ordering::Relaxed);
        hs.into_iter().for_each(|h| h.join().unwrap());
    }
}
