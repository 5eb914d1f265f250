//! Fixed-size block storage on a mapped region: a tiny persistent slab allocator.
//!
//! The byte layout, the store/free protocols and the crash-consistency argument are in
//! `BLOCKS.md` beside `Cargo.toml`; this file follows it. In short:
//!
//! ```text
//! 0            header (64 bytes: magic, version, geometry, header checksum)
//! 64           used-bitmap, one bit per slot, u64 words (native byte order)
//! summary_off  summary, one bit per bitmap word: "this word may have a free bit"
//! data_off     slots: [marker u64][block_size bytes][pad to 8]   (stride bytes each)
//! ```
//!
//! A block exists at address `a` iff bit `a` of the bitmap is set **and** the marker of slot
//! `a` is a commit marker whose checksum matches the slot's bytes. Store: claim the bit,
//! zero the marker, write the data, write the marker. Free: clear the marker (a CAS, so two
//! frees of one block cannot both succeed), then clear the bit. Repair clears bits whose
//! slot holds no valid block and rebuilds the summary.
//!
//! Two layouts exist; they differ only in the checksum of a slot's marker: version 1 uses
//! a 64-bit multiply hash ([`checksum`]), version 2 (what new storages get) the standard
//! CRC-32C ([`crate::crc32c`]), which the CPU computes several times faster. Files of
//! either version are read and written in their own version.
//!
//! Two layers live here. [`Storage`] is plain Rust over a [`Mem`] view (a mapped region or,
//! in tests, a `Vec<u64>`): every offset comes from [`Layout`]'s checked arithmetic and every
//! access is bounds- and alignment-checked, so a garbage file can give an error or an empty
//! result but never an out-of-bounds access or a panic. The free functions at the bottom
//! ([`init`], [`store`], [`with_storage`], [`read`], [`free`], [`scan`], [`repair`]) run
//! those on a [`Mapping`], through [`crate::mem::with_mem`], and grow it with `resize()`.
//! A [`Cache`] per handle remembers validated headers, so that the header is checked by
//! comparing 64 bytes instead of decoding and checksumming it on every call.

use std::sync::atomic::{fence, AtomicU64, Ordering};

use crate::crc32c;
use crate::error::Error;
use crate::growth::{self, Growth};
use crate::mapping::Mapping;
use crate::mem::{self, Fault, Mem};

mod cache;
pub use cache::Cache;

/// First 8 bytes of a block storage file.
pub const MAGIC: [u8; 8] = *b"EMMAPBLK";
/// Layout version whose markers use the 64-bit multiply hash.
pub const VERSION_1: u32 = 1;
/// Layout version whose markers use CRC-32C.
pub const VERSION_2: u32 = 2;
/// Layout version `init` gives new storages.
pub const VERSION: u32 = VERSION_2;
/// Size of the header; the bitmap starts right after it.
pub const HEADER_SIZE: u64 = 64;
/// Slots in a storage when `init` is not given a capacity.
pub const DEFAULT_CAPACITY: u64 = 262_144;
/// Largest capacity `init` accepts (2^26 slots: an 8 MiB bitmap, a 128 KiB summary).
pub const MAX_CAPACITY: u64 = 1 << 26;
/// Largest block size `init` accepts (1 GiB).
pub const MAX_BLOCK_SIZE: u64 = 1 << 30;
/// The slot array starts at a multiple of this.
pub const DATA_ALIGN: u64 = 64;
/// High 32 bits of a commit marker; the low 32 bits are the data checksum.
pub const COMMIT_TAG: u32 = 0xB10C_C0DE;
/// Seeds of the two checksums, so a header can never pass as slot data or the reverse.
const HEADER_SEED: u64 = 0x6865_6164_6572_2131;
const SLOT_SEED: u64 = 0x736c_6f74_2164_6174;
/// The smallest step block storage grows its mapping by.
const GROWTH_FLOOR: u64 = 64 * 1024;

/// Why a block operation could not be carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockError {
    /// No block storage header (wrong magic, or the region is shorter than a header).
    NotInitialized,
    /// The magic is there but the header is inconsistent, or the region is shorter than
    /// the bitmap the header describes.
    Corrupt,
    /// Every slot is taken (or, with `fixed_size`, every slot the mapping can hold).
    Full,
    /// `init` on a storage created with another block size or capacity.
    Mismatch,
    /// A block whose length is not the storage's block size (`badarg` in Erlang).
    BadSize,
    /// The store needs the mapping to grow and the caller said it may not
    /// ([`Growth::Refused`]): nothing was done.
    NeedsGrowth,
    /// An error of the mapping itself (closed, eacces, alignment, fixed_size, ...).
    Map(Error),
}

impl BlockError {
    /// The atom the Erlang side sees in `{error, Atom}`.
    pub fn atom(&self) -> &'static str {
        match self {
            BlockError::NotInitialized => "not_initialized",
            BlockError::Corrupt => "corrupt",
            BlockError::Full => "full",
            BlockError::Mismatch => "mismatch",
            BlockError::BadSize => "badarg",
            BlockError::NeedsGrowth => "eagain",
            BlockError::Map(e) => e.atom(),
        }
    }
}

impl From<Error> for BlockError {
    fn from(e: Error) -> BlockError {
        BlockError::Map(e)
    }
}

impl From<Fault> for BlockError {
    fn from(f: Fault) -> BlockError {
        match f {
            Fault::OutOfRange => BlockError::Corrupt,
            Fault::Misaligned => BlockError::Map(Error::Alignment),
        }
    }
}

pub type Result<T> = std::result::Result<T, BlockError>;

/// One step of a scan: the blocks found, as `(address, value)`, and where to go on
/// (`None`: the end was reached).
pub type Chunk<T> = (Vec<(u64, T)>, Option<u64>);

// ------------------------------------------------------------------------------ checksums

/// The murmur3 64-bit finaliser: a bijection that spreads every input bit.
fn fmix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

const LANE_K: [u64; 4] = [
    0x9E37_79B9_7F4A_7C15,
    0xC2B2_AE3D_27D4_EB4F,
    0x1656_67B1_9E37_79F9,
    0xD6E8_FEB8_6659_FD93,
];

/// One lane step: for a fixed accumulator it is a bijection of the word and the other way
/// round, so changing any one word always changes the lane's result.
#[inline(always)]
fn lane(acc: u64, w: u64, k: u64) -> u64 {
    (acc ^ w).wrapping_mul(k).rotate_left(31)
}

fn word_at(b: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(w)
}

/// A 64-bit checksum of `data` (not cryptographic: it detects torn writes and garbage).
/// Four independent lanes over 32-byte chunks keep it near memory speed.
pub fn checksum(seed: u64, data: &[u8]) -> u64 {
    let mut acc = [
        seed ^ LANE_K[0],
        seed.rotate_left(17) ^ LANE_K[1],
        seed.rotate_left(29) ^ LANE_K[2],
        seed.rotate_left(43) ^ LANE_K[3],
    ];
    let mut chunks = data.chunks_exact(32);
    for c in &mut chunks {
        for (j, a) in acc.iter_mut().enumerate() {
            *a = lane(*a, word_at(c, j * 8), LANE_K[j]);
        }
    }
    let rest = chunks.remainder();
    let mut words = rest.chunks_exact(8);
    for c in &mut words {
        acc[0] = lane(acc[0], word_at(c, 0), LANE_K[0]);
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        let mut w = [0u8; 8];
        w[..tail.len()].copy_from_slice(tail);
        acc[1] = lane(acc[1], u64::from_le_bytes(w), LANE_K[1]);
    }
    let mut h = fmix(seed ^ data.len() as u64);
    for a in acc {
        h = fmix(h ^ a);
    }
    h
}

/// The version 1 commit marker of a slot holding `data` at `addr`: never 0 (free) thanks
/// to the tag.
pub fn commit_marker(addr: u64, data: &[u8]) -> u64 {
    let h = checksum(SLOT_SEED ^ addr.wrapping_mul(LANE_K[0]), data);
    (u64::from(COMMIT_TAG) << 32) | ((h ^ (h >> 32)) & 0xFFFF_FFFF)
}

/// The version 2 commit marker: the tag and the CRC-32C of the address (8 bytes,
/// little-endian) followed by the block. `plan` must be for `data.len()` bytes to be fast
/// (any plan gives the same value).
pub fn commit_marker_v2(addr: u64, data: &[u8], plan: &crc32c::Plan) -> u64 {
    let r = crc32c::update(!0, &addr.to_le_bytes());
    (u64::from(COMMIT_TAG) << 32) | u64::from(!plan.update(r, data))
}

/// How a storage's markers are computed: by its layout version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    V1,
    /// With the CRC plan for the storage's block size.
    V2(crc32c::Plan),
}

impl Check {
    /// The check of a layout (for version 2 this prepares the CRC constants: a few
    /// microseconds, which is why [`Cache`] keeps it).
    pub fn of(lay: &Layout) -> Check {
        match lay.version {
            VERSION_1 => Check::V1,
            _ => Check::V2(crc32c::Plan::new(lay.block_size as usize)),
        }
    }

    /// The commit marker of a slot holding `data` at `addr`.
    #[inline]
    pub fn marker(&self, addr: u64, data: &[u8]) -> u64 {
        match self {
            Check::V1 => commit_marker(addr, data),
            Check::V2(plan) => commit_marker_v2(addr, data, plan),
        }
    }
}

fn is_commit_tag(marker: u64) -> bool {
    (marker >> 32) as u32 == COMMIT_TAG
}

// ------------------------------------------------------------------------------ layout

fn round_up(v: u64, to: u64) -> Option<u64> {
    v.checked_add(to - 1).map(|x| x / to * to)
}

/// Where everything is, derived from block size and capacity alone with checked
/// arithmetic. Every offset in a [`Layout`] is below `total`, which fits in an `i64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// [`VERSION_1`] or [`VERSION_2`]: how slot markers are computed.
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
        if !(VERSION_1..=VERSION_2).contains(&version)
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

// ------------------------------------------------------------------------------ storage

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

/// A validated block storage over a region.
pub struct Storage<'a> {
    mem: Mem<'a>,
    lay: Layout,
    check: Check,
}

/// Retries of a read whose slot changed under it, before answering "no block".
const READ_RETRIES: usize = 8;

impl<'a> Storage<'a> {
    /// Opens the storage in `mem`, validating the header.
    pub fn open(mem: Mem<'a>) -> Result<Storage<'a>> {
        let words = Storage::header_words(mem)?;
        let lay = Layout::decode(&header_bytes(&words))?;
        Storage::on(mem, lay, Check::of(&lay))
    }

    /// Like [`Storage::open`], with the header validated through `cache`: a header seen
    /// before (all 64 bytes equal) is not decoded again.
    #[inline]
    pub fn open_cached(mem: Mem<'a>, cache: &Cache) -> Result<Storage<'a>> {
        let words = Storage::header_words(mem)?;
        if let Some((lay, check)) = cache.get(&words) {
            return Storage::on(mem, lay, check);
        }
        let lay = Layout::decode(&header_bytes(&words))?;
        let check = Check::of(&lay);
        cache.put(words, lay, check);
        Storage::on(mem, lay, check)
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
    fn on(mem: Mem<'a>, lay: Layout, check: Check) -> Result<Storage<'a>> {
        if mem.len() < lay.data_off {
            return Err(BlockError::Corrupt);
        }
        Ok(Storage { mem, lay, check })
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
        &self.lay
    }

    /// Slots lying whole inside the region (never more than the capacity).
    pub fn mapped_slots(&self) -> u64 {
        self.lay.slots_in(self.mem.len())
    }

    /// Whether slot `addr` exists and lies whole inside the region.
    #[inline]
    fn in_region(&self, addr: u64) -> bool {
        self.lay
            .slot_end(addr)
            .is_some_and(|end| end <= self.mem.len())
    }

    fn bit_word(&self, w: u64) -> Result<&'a AtomicU64> {
        if w >= self.lay.words {
            return Err(BlockError::Corrupt);
        }
        Ok(self.mem.atomic(self.lay.bitmap_off + 8 * w)?)
    }

    fn summary_word(&self, s: u64) -> Result<&'a AtomicU64> {
        if s >= self.lay.summary_words {
            return Err(BlockError::Corrupt);
        }
        Ok(self.mem.atomic(self.lay.summary_off + 8 * s)?)
    }

    /// Bits of summary word `s` that stand for real bitmap words.
    fn summary_valid(&self, s: u64) -> u64 {
        let first = s * 64;
        let n = self.lay.words - first.min(self.lay.words);
        if n >= 64 {
            u64::MAX
        } else {
            (1u64 << n) - 1
        }
    }

    /// Bitmap word `w` with the bits that are not real slots shown as taken.
    fn load_word(&self, w: u64) -> Result<u64> {
        Ok(self.bit_word(w)?.load(Ordering::SeqCst) | !self.lay.valid_bits(w))
    }

    fn marker(&self, addr: u64) -> Result<&'a AtomicU64> {
        Ok(self
            .mem
            .atomic(self.lay.slot_off(addr).ok_or(BlockError::Corrupt)?)?)
    }

    fn data(&self, addr: u64) -> Result<&'a [u8]> {
        let off = self.lay.slot_off(addr).ok_or(BlockError::Corrupt)?;
        Ok(self.mem.bytes(off + 8, self.lay.block_size)?)
    }

    fn bit_is_set(&self, addr: u64) -> Result<bool> {
        Ok(self.bit_word(addr / 64)?.load(Ordering::SeqCst) & (1 << (addr % 64)) != 0)
    }

    /// Whether `marker` commits the bytes slot `addr` holds now.
    fn commits(&self, addr: u64, marker: u64) -> Result<bool> {
        Ok(is_commit_tag(marker) && self.check.marker(addr, self.data(addr)?) == marker)
    }

    /// The lowest address whose bit is clear, or `None` when all are taken. Words the
    /// summary marks full are skipped; a word found full has its summary bit cleared and
    /// then re-checked, so a concurrent free (clear bit, then set summary bit) is never lost.
    fn find_free(&self) -> Result<Option<u64>> {
        for s in 0..self.lay.summary_words {
            let sw = self.summary_word(s)?;
            let mut bits = sw.load(Ordering::SeqCst) & self.summary_valid(s);
            while bits != 0 {
                let b = u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                let w = s * 64 + b;
                let word = self.load_word(w)?;
                if word != u64::MAX {
                    return Ok(Some(w * 64 + u64::from((!word).trailing_zeros())));
                }
                sw.fetch_and(!(1 << b), Ordering::SeqCst);
                let again = self.load_word(w)?;
                if again != u64::MAX {
                    sw.fetch_or(1 << b, Ordering::SeqCst);
                    return Ok(Some(w * 64 + u64::from((!again).trailing_zeros())));
                }
            }
        }
        Ok(None)
    }

    /// Stores `data` in the lowest free slot. Needs a writable region.
    pub fn store(&self, data: &[u8]) -> Result<Stored> {
        if data.len() as u64 != self.lay.block_size {
            return Err(BlockError::BadSize);
        }
        loop {
            let Some(addr) = self.find_free()? else {
                return Err(BlockError::Full);
            };
            if !self.in_region(addr) {
                let need = self.lay.slot_end(addr).ok_or(BlockError::Corrupt)?;
                return Ok(Stored::Grow { need });
            }
            let (w, bit) = (addr / 64, 1u64 << (addr % 64));
            let word = self.bit_word(w)?;
            if word.fetch_or(bit, Ordering::SeqCst) & bit != 0 {
                continue; // another writer took it first
            }
            let marker = self.marker(addr)?;
            let off = self.lay.slot_off(addr).ok_or(BlockError::Corrupt)?;
            marker.store(0, Ordering::SeqCst);
            let m = self.fill(addr, off + 8, data)?;
            marker.store(m, Ordering::Release);
            return Ok(Stored::At(addr));
        }
    }

    /// Copies `data` into the slot of `addr` at `off` and returns the slot's commit marker,
    /// computed over exactly the bytes written (version 2: while copying, in one pass).
    fn fill(&self, addr: u64, off: u64, data: &[u8]) -> Result<u64> {
        if let Check::V2(plan) = &self.check {
            let dst = self.mem.ptr_at(off, data.len() as u64)?;
            let (s, d, n) = (data.as_ptr() as usize, dst as usize, data.len());
            // `data` may be a direct binary of this mapping: overlapping (but not
            // identical) ranges need memmove, below.
            let apart = s + n <= d || d + n <= s || s == d;
            if apart && plan.len() == n {
                let r = crc32c::update(!0, &addr.to_le_bytes());
                // SAFETY: `dst` is `n` writable bytes of the region (range-checked above;
                // store needs a writable region), `data` is `n` readable bytes, and the
                // two are apart or the same range (checked above).
                let c = unsafe { plan.copy_update(r, data.as_ptr(), dst) };
                return Ok((u64::from(COMMIT_TAG) << 32) | u64::from(!c));
            }
        }
        self.mem.write(off, data)?;
        // The checksum is of what the slot holds now, i.e. exactly what readers will see.
        Ok(self.check.marker(addr, self.data(addr)?))
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
        if !self.in_region(addr) {
            return Ok(None);
        }
        let marker = self.marker(addr)?;
        let off = self.lay.slot_off(addr).ok_or(BlockError::Corrupt)? + 8;
        let n = self.lay.block_size;
        for _ in 0..READ_RETRIES {
            if !self.bit_is_set(addr)? {
                return Ok(None);
            }
            let m = marker.load(Ordering::Acquire);
            if !is_commit_tag(m) {
                return Ok(None);
            }
            let (v, buf) = alloc(n as usize);
            if buf.len() as u64 != n {
                return Err(BlockError::BadSize);
            }
            let got = match &self.check {
                Check::V2(plan) if plan.len() == buf.len() => {
                    let src = self.mem.ptr_at(off, n)?;
                    let r = crc32c::update(!0, &addr.to_le_bytes());
                    // SAFETY: `src` is `n` readable bytes of the region (range-checked),
                    // `buf` is `n` bytes of private memory we hold exclusively, so they
                    // do not overlap.
                    let c = unsafe { plan.copy_update(r, src, buf.as_mut_ptr()) };
                    (u64::from(COMMIT_TAG) << 32) | u64::from(!c)
                }
                check => {
                    self.mem.read_into(off, buf)?;
                    check.marker(addr, buf)
                }
            };
            if got != m {
                if marker.load(Ordering::Acquire) == m {
                    return Ok(None); // torn or damaged slot: not a block
                }
                continue;
            }
            fence(Ordering::Acquire);
            if marker.load(Ordering::Relaxed) == m {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// Calls `f` on the block at `addr` (its bytes in the region) and returns what `f`
    /// returned, or `None` if there is no block. A block freed or replaced while `f` ran is
    /// detected through its marker and read again; `f` may run more than once.
    pub fn read<T>(&self, addr: u64, mut f: impl FnMut(&'a [u8]) -> T) -> Result<Option<T>> {
        if !self.in_region(addr) {
            return Ok(None);
        }
        let marker = self.marker(addr)?;
        for _ in 0..READ_RETRIES {
            if !self.bit_is_set(addr)? {
                return Ok(None);
            }
            let m = marker.load(Ordering::Acquire);
            if !is_commit_tag(m) {
                return Ok(None);
            }
            let data = self.data(addr)?;
            if self.check.marker(addr, data) != m {
                if marker.load(Ordering::Acquire) == m {
                    return Ok(None); // torn or damaged slot: not a block
                }
                continue;
            }
            let v = f(data);
            fence(Ordering::Acquire);
            if marker.load(Ordering::Relaxed) == m {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// Frees the block at `addr`: `true` if there was one. Needs a writable region.
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
            if !self.commits(addr, m)? {
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
                & self.lay.valid_bits(w)
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
        let cap = self.lay.capacity;
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
            let mut bits = word.load(Ordering::SeqCst) & range & self.lay.valid_bits(w);
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
            let full = word.load(Ordering::SeqCst) | !self.lay.valid_bits(w) == u64::MAX;
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

fn word_bytes(h: &[u8; 64], i: usize) -> [u8; 8] {
    let mut w = [0u8; 8];
    w.copy_from_slice(&h[i..i + 8]);
    w
}

/// The header's bytes from its words as loaded from memory (native byte order).
fn header_bytes(words: &[u64; 8]) -> [u8; 64] {
    let mut h = [0u8; 64];
    for (i, w) in words.iter().enumerate() {
        h[i * 8..i * 8 + 8].copy_from_slice(&w.to_ne_bytes());
    }
    h
}

// ------------------------------------------------------------------------------ on a Mapping

/// Runs `f` on the storage in `m`'s current region (validated through `cache`), which stays
/// mapped while `f` runs. `f` may look at the layout before doing anything (a caller that
/// must stay short can decline large blocks).
#[inline]
pub fn with_storage<T>(
    m: &Mapping,
    cache: &Cache,
    f: impl FnOnce(&Storage<'_>) -> Result<T>,
) -> Result<T> {
    mem::with_mem(m, |mem| f(&Storage::open_cached(mem, cache)?))
}

fn check_writable(m: &Mapping) -> Result<()> {
    if m.options().write {
        Ok(())
    } else {
        Err(BlockError::Map(Error::Eacces))
    }
}

/// Whether block storage grows `m` through `resize`: always, but with `fixed_size`.
fn may_resize(m: &Mapping) -> bool {
    let o = m.options();
    !o.fixed_size
}

/// Grows `m` to hold at least `need` bytes, by the usual growth rule (at least 64 KiB a
/// step), never past `total`. `fixed_size` means full.
fn grow(m: &Mapping, need: u64, total: u64) -> Result<()> {
    let cur = m.size()? as u64;
    if cur >= need {
        return Ok(());
    }
    if !may_resize(m) {
        return Err(BlockError::Full);
    }
    let target = growth::target(cur, need, m.options().max_inc_size, GROWTH_FLOOR)
        .unwrap_or(total)
        .min(total)
        .max(need);
    match m.resize(target) {
        Ok(_) => Ok(()),
        // Someone else grew it meanwhile (resize never shrinks): fine if it is enough now.
        Err(_) if m.size()? as u64 >= need => Ok(()),
        Err(Error::FixedSize) => Err(BlockError::Full),
        Err(e) => Err(e.into()),
    }
}

/// The storage's layout (validates the header).
pub fn layout(m: &Mapping, cache: &Cache) -> Result<Layout> {
    with_storage(m, cache, |s| Ok(*s.layout()))
}

/// `init_block_storage`: formats a new storage (growing the mapping to hold its bitmap),
/// or accepts an existing one with the same block size (and capacity, if one is given),
/// whatever its layout version.
pub fn init(m: &Mapping, cache: &Cache, block_size: u64, capacity: Option<u64>) -> Result<Layout> {
    check_writable(m)?;
    let lay = Layout::new(block_size, capacity.unwrap_or(DEFAULT_CAPACITY))
        .ok_or(BlockError::Map(Error::Einval))?;
    for _ in 0..4 {
        let done = mem::with_mem(m, |mem| match Storage::open_cached(mem, cache) {
            Ok(s) => {
                let have = s.layout();
                let same_cap = capacity.is_none_or(|c| c == have.capacity);
                if have.block_size == block_size && same_cap {
                    Ok(Some(*have))
                } else {
                    Err(BlockError::Mismatch)
                }
            }
            Err(BlockError::NotInitialized) if mem.len() >= lay.data_off => {
                Storage::format(mem, lay).map(|s| Some(*s.layout()))
            }
            Err(BlockError::NotInitialized) => Ok(None),
            Err(e) => Err(e),
        })?;
        if let Some(l) = done {
            return Ok(l);
        }
        if !may_resize(m) {
            return Err(BlockError::Map(Error::FixedSize));
        }
        match m.resize(lay.data_off) {
            Ok(_) => {}
            Err(_) if m.size()? as u64 >= lay.data_off => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(BlockError::Map(Error::Os(libc::EAGAIN)))
}

/// `store_block`: stores `data` in the lowest free slot and returns its address, growing
/// the mapping if that slot lies past its end (with [`Growth::Refused`]: answering
/// [`BlockError::NeedsGrowth`] instead, having done nothing).
pub fn store(m: &Mapping, cache: &Cache, data: &[u8], growth: Growth) -> Result<u64> {
    check_writable(m)?;
    // Each round either stores or grows the mapping; growth is bounded by the capacity, so
    // only a storm of concurrent stores could need many rounds.
    for _ in 0..64 {
        let (r, total) = with_storage(m, cache, |s| Ok((s.store(data)?, s.layout().total)))?;
        match r {
            Stored::At(addr) => return Ok(addr),
            Stored::Grow { .. } if !may_resize(m) => return Err(BlockError::Full),
            Stored::Grow { .. } if growth == Growth::Refused => {
                return Err(BlockError::NeedsGrowth)
            }
            Stored::Grow { need } => grow(m, need, total)?,
        }
    }
    Err(BlockError::Map(Error::Os(libc::EAGAIN)))
}

/// In direct mode, records that binaries into the mapping are about to be handed out, so
/// that no region is unmapped before the handle is dropped (see `mapping.rs`). A 1-byte
/// `pread` is the mapping's public way of doing that.
pub fn mark_exported(m: &Mapping) -> Result<()> {
    if m.options().direct {
        m.pread(0, 1, |_| ())?;
    }
    Ok(())
}

/// `read_block`: `f` gets the block's bytes inside the mapping (in direct mode they stay
/// mapped until the handle is dropped), `None` if there is no block at `addr`.
pub fn read<T>(
    m: &Mapping,
    cache: &Cache,
    addr: u64,
    f: impl FnMut(&[u8]) -> T,
) -> Result<Option<T>> {
    mark_exported(m)?;
    with_storage(m, cache, |s| s.read(addr, f))
}

/// `free_block`: `true` if there was a block at `addr`.
pub fn free(m: &Mapping, cache: &Cache, addr: u64) -> Result<bool> {
    check_writable(m)?;
    with_storage(m, cache, |s| s.free(addr))
}

/// `eacces` for a mapping not opened with `write`: what stores, frees and repairs need
/// (for callers that run [`Storage`] operations through [`with_storage`] themselves).
pub fn writable(m: &Mapping) -> Result<()> {
    check_writable(m)
}

/// One bounded step of `read_blocks`: see [`Storage::scan`].
pub fn scan<T>(
    m: &Mapping,
    cache: &Cache,
    start: u64,
    budget: Budget,
    make: impl FnMut(&[u8]) -> T,
) -> Result<Chunk<T>> {
    mark_exported(m)?;
    with_storage(m, cache, |s| s.scan(start, budget, make))
}

/// One bounded step of `repair_block_storage`: see [`Storage::repair`].
pub fn repair(
    m: &Mapping,
    cache: &Cache,
    start: u64,
    max_slots: u64,
) -> Result<(Option<u64>, Repaired)> {
    check_writable(m)?;
    with_storage(m, cache, |s| s.repair(start, max_slots))
}

#[cfg(test)]
mod tests;
