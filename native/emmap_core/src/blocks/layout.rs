//! Where everything is: the [`Layout`] derived from a block size and a capacity, and the
//! 64-byte header that records it (encoded, decoded and validated here).

use super::checksum::{checksum, word_at};
use super::{BlockError, Result};
use super::{DATA_ALIGN, HEADER_SEED, HEADER_SIZE, MAGIC, MAX_BLOCK_SIZE, MAX_CAPACITY};
use super::{VERSION, VERSION_1, VERSION_3};

fn round_up(v: u64, to: u64) -> Option<u64> {
    v.checked_add(to - 1).map(|x| x / to * to)
}

/// Where everything is, derived from block size and capacity alone with checked
/// arithmetic. Every offset in a [`Layout`] is below `total`, which fits in an `i64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// [`VERSION_1`], [`VERSION_2`](super::VERSION_2) or [`VERSION_3`]: how slot markers are
    /// computed.
    pub version: u32,
    pub block_size: u64,
    pub capacity: u64,
    /// Bytes per slot: 8 (marker) + block size, rounded up to 8.
    pub stride: u64,
    /// Bitmap words: `ceil(capacity / 64)`.
    pub words: u64,
    /// Summary words: `ceil(words / 64)`.
    pub summary_words: u64,
    pub bitmap_off: u64,
    pub summary_off: u64,
    pub data_off: u64,
    /// Size of a storage with every slot mapped.
    pub total: u64,
}

impl Layout {
    /// The layout of a new storage ([`VERSION`]) for a block size and a capacity, or
    /// `None` if either is out of range.
    pub fn new(block_size: u64, capacity: u64) -> Option<Layout> {
        Layout::with_version(VERSION, block_size, capacity)
    }

    /// Like [`Layout::new`], for a given layout version (`None` for an unknown one).
    pub fn with_version(version: u32, block_size: u64, capacity: u64) -> Option<Layout> {
        if !(VERSION_1..=VERSION_3).contains(&version)
            || block_size == 0
            || block_size > MAX_BLOCK_SIZE
            || capacity == 0
            || capacity > MAX_CAPACITY
        {
            return None;
        }
        let stride = round_up(block_size.checked_add(8)?, 8)?;
        let words = capacity.div_ceil(64);
        let summary_words = words.div_ceil(64);
        let bitmap_off = HEADER_SIZE;
        let summary_off = bitmap_off.checked_add(words.checked_mul(8)?)?;
        let meta_end = summary_off.checked_add(summary_words.checked_mul(8)?)?;
        let data_off = round_up(meta_end, DATA_ALIGN)?;
        let total = data_off.checked_add(capacity.checked_mul(stride)?)?;
        if total > i64::MAX as u64 {
            return None;
        }
        Some(Layout {
            version,
            block_size,
            capacity,
            stride,
            words,
            summary_words,
            bitmap_off,
            summary_off,
            data_off,
            total,
        })
    }

    /// Offset of slot `addr` (its marker), or `None` past the capacity.
    pub fn slot_off(&self, addr: u64) -> Option<u64> {
        if addr >= self.capacity {
            return None;
        }
        addr.checked_mul(self.stride)?.checked_add(self.data_off)
    }

    /// Bytes a region needs to hold slot `addr` whole.
    pub fn slot_end(&self, addr: u64) -> Option<u64> {
        self.slot_off(addr)?.checked_add(self.stride)
    }

    /// How many slots (from address 0) a region of `len` bytes holds whole.
    pub fn slots_in(&self, len: u64) -> u64 {
        match len.checked_sub(self.data_off) {
            Some(rest) => (rest / self.stride).min(self.capacity),
            None => 0,
        }
    }

    /// Bits of bitmap word `w` that stand for real slots (all of them but in the last word).
    pub fn valid_bits(&self, w: u64) -> u64 {
        let first = w.saturating_mul(64);
        if first >= self.capacity {
            0
        } else if self.capacity - first >= 64 {
            u64::MAX
        } else {
            (1u64 << (self.capacity - first)) - 1
        }
    }

    /// The 64 header bytes for this layout (little-endian fields, see BLOCKS.md).
    pub fn encode(&self) -> [u8; 64] {
        let mut h = [0u8; 64];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&self.version.to_le_bytes());
        h[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        h[16..24].copy_from_slice(&self.block_size.to_le_bytes());
        h[24..32].copy_from_slice(&self.capacity.to_le_bytes());
        h[32..40].copy_from_slice(&self.stride.to_le_bytes());
        h[40..48].copy_from_slice(&self.summary_off.to_le_bytes());
        h[48..56].copy_from_slice(&self.data_off.to_le_bytes());
        let sum = checksum(HEADER_SEED, &h[..56]);
        h[56..64].copy_from_slice(&sum.to_le_bytes());
        h
    }

    /// Parses and validates a header: every field must be what [`Layout::new`] derives
    /// from the block size and capacity, and the checksum must match.
    pub fn decode(h: &[u8; 64]) -> Result<Layout> {
        if h[0..8] != MAGIC {
            return Err(BlockError::NotInitialized);
        }
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let u64_at = |i: usize| word_at(h, i);
        if u64_at(56) != checksum(HEADER_SEED, &h[..56]) || u64::from(u32_at(12)) != HEADER_SIZE {
            return Err(BlockError::Corrupt);
        }
        let lay =
            Layout::with_version(u32_at(8), u64_at(16), u64_at(24)).ok_or(BlockError::Corrupt)?;
        if lay.stride != u64_at(32) || lay.summary_off != u64_at(40) || lay.data_off != u64_at(48) {
            return Err(BlockError::Corrupt);
        }
        Ok(lay)
    }
}

pub(super) fn word_bytes(h: &[u8; 64], i: usize) -> [u8; 8] {
    let mut w = [0u8; 8];
    w.copy_from_slice(&h[i..i + 8]);
    w
}

/// The header's bytes from its words as loaded from memory (native byte order).
pub(super) fn header_bytes(words: &[u64; 8]) -> [u8; 64] {
    let mut h = [0u8; 64];
    for (i, w) in words.iter().enumerate() {
        h[i * 8..i * 8 + 8].copy_from_slice(&w.to_ne_bytes());
    }
    h
}
