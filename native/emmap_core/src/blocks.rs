//! Fixed-size block storage on a mapped region: a tiny persistent slab allocator.
//!
//! The byte layout, the store/free protocols and the crash-consistency argument are in
//! `BLOCKS.md` beside `Cargo.toml`; this module follows it. In short:
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
//! Three layouts exist; they differ only in a slot's marker: version 1 uses a 64-bit
//! multiply hash ([`checksum()`]) of the block, version 2 the standard CRC-32C
//! ([`crate::crc32c`]), which the CPU computes several times faster, and version 3 (what
//! new storages get) the same CRC plus a 16-bit check of the marker itself, so that a free
//! can prove the slot holds a block stored at that address without reading the block.
//! Files of any version are read and written in their own version.
//!
//! Two layers live here. [`Storage`] is plain Rust over a [`Mem`](crate::mem::Mem) view (a
//! mapped region or, in tests, a `Vec<u64>`): every offset comes from [`Layout`]'s checked
//! arithmetic and every access is bounds- and alignment-checked, so a garbage file can give
//! an error or an empty result but never an out-of-bounds access or a panic. The entry
//! points ([`init`], [`store`], [`with_storage`], [`read`], [`free`], [`scan`], [`repair`])
//! run those on a [`Mapping`](crate::mapping::Mapping), through [`crate::mem::with_mem`],
//! and grow it with `resize()` by the rule of [`crate::growth`]. A [`Cache`] per handle
//! remembers validated headers, so that the header is checked by comparing 64 bytes instead
//! of decoding and checksumming it on every call.
//!
//! This file holds the format's constants, the errors and what the module exports; the
//! rest is one concern a file: `blocks/checksum.rs` (slot markers and checksums of both
//! versions), `blocks/layout.rs` (the layout and its header), `blocks/bitmap.rs` (the
//! used-bitmap and its summary), `blocks/storage.rs` (the [`Storage`] operations),
//! `blocks/on_mapping.rs` (the entry points) and `blocks/cache.rs` (the [`Cache`]).

use crate::error::Error;
use crate::mem::Fault;

mod bitmap;
mod cache;
mod checksum;
mod layout;
mod on_mapping;
mod storage;

pub use cache::Cache;
pub use checksum::{checksum, commit_marker, commit_marker_v2, commit_marker_v3, Check};
pub use layout::Layout;
pub use on_mapping::{
    free, init, layout, mark_exported, read, repair, scan, store, with_storage, writable,
};
pub use storage::{Budget, Repaired, Storage, Stored};

/// First 8 bytes of a block storage file.
pub const MAGIC: [u8; 8] = *b"EMMAPBLK";
/// Layout version whose markers use the 64-bit multiply hash.
pub const VERSION_1: u32 = 1;
/// Layout version whose markers use CRC-32C.
pub const VERSION_2: u32 = 2;
/// Layout version whose markers use CRC-32C and carry a check of their own.
pub const VERSION_3: u32 = 3;
/// Layout version `init` gives new storages.
pub const VERSION: u32 = VERSION_3;
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
/// High 32 bits of a commit marker of versions 1 and 2; the low 32 bits are the data
/// checksum.
pub const COMMIT_TAG: u32 = 0xB10C_C0DE;
/// High 16 bits of a version 3 commit marker; then the marker's own check (16 bits), then
/// the data checksum (32 bits).
pub const COMMIT_TAG_V3: u16 = 0xB1C3;
/// Seeds of the two checksums, so a header can never pass as slot data or the reverse.
const HEADER_SEED: u64 = 0x6865_6164_6572_2131;
const SLOT_SEED: u64 = 0x736c_6f74_2164_6174;
/// Start of the CRC register for a version 3 marker's own check ("mark").
const MARKER_SEED: u32 = 0x6d61_726b;

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
    /// ([`Growth::Refused`](crate::growth::Growth::Refused)): nothing was done.
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

#[cfg(test)]
mod tests;
