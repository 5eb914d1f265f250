//! The validated headers of one handle's block storage.
//!
//! Validating a header means decoding it, checking its checksum and, for versions 2 and 3,
//! preparing the CRC constants of its block size: far more work than a store or a read of
//! a small block. A [`Cache`] remembers the headers it has validated, by their full 64
//! bytes: a call whose header is byte for byte one of them skips the validation. Nothing
//! else is trusted: the header is loaded from the mapping on every call, so a remapped,
//! grown, re-initialised or damaged storage is seen at once (its bytes differ, or they do
//! not and then it is the same header). The region's length is not part of the entry; it
//! is taken from the mapping on every call too.

use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

use parking_lot::Mutex;

use super::storage::Geo;

/// At most this many headers are remembered; past that, headers are validated every time
/// (only a storage whose header keeps changing gets there).
const MAX_ENTRIES: usize = 8;

struct Entry {
    words: [u64; 8],
    geo: Geo,
}

/// Validated headers, per handle. Lookups take no lock.
#[derive(Default)]
pub struct Cache {
    /// The entry that matched last (null: none yet). Always points into `entries`.
    last: AtomicPtr<Entry>,
    /// Owns the entries; they are freed only when the cache is dropped. Boxed so that an
    /// entry stays at its address when the vector grows (`last` points at it).
    #[allow(clippy::vec_box)]
    entries: Mutex<Vec<Box<Entry>>>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("entries", &self.entries.lock().len())
            .finish()
    }
}

impl Cache {
    /// The layout and check of a header validated before, if `words` is one. They stay
    /// valid as long as the cache.
    #[inline]
    pub(super) fn get(&self, words: &[u64; 8]) -> Option<&Geo> {
        let p = self.last.load(Ordering::Acquire);
        if p.is_null() {
            return None;
        }
        // SAFETY: `last` only ever holds null or the address of an entry boxed in
        // `entries`, which are never removed or moved (a `Box`'s contents stay put when the
        // vector grows) before the cache is dropped, and `&self` outlives this call. The
        // entry was fully written before its address was published (release/acquire).
        let e = unsafe { &*p };
        let diff = e
            .words
            .iter()
            .zip(words)
            .fold(0, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            Some(&e.geo)
        } else {
            None
        }
    }

    /// Remembers a header just validated, and makes it the one `get` looks at first.
    /// Returns the remembered layout and check (`None` when the cache is full).
    pub(super) fn put(&self, words: [u64; 8], geo: Geo) -> Option<&Geo> {
        let mut entries = self.entries.lock();
        let p = match entries.iter().find(|e| e.words == words) {
            Some(e) => ptr::from_ref::<Entry>(e).cast_mut(),
            None if entries.len() < MAX_ENTRIES => {
                let e = Box::new(Entry { words, geo });
                let p = ptr::from_ref::<Entry>(&e).cast_mut();
                entries.push(e);
                p
            }
            None => return None,
        };
        self.last.store(p, Ordering::Release);
        // SAFETY: `p` points at an entry boxed in `entries`, which is never removed or
        // moved before the cache is dropped (see `get`); `&self` outlives the result.
        Some(unsafe { &(*p).geo })
    }

    /// How many headers are remembered (tests).
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
