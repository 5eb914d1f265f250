//! Slot markers and checksums: the 64-bit multiply hash of version 1 (also the header's
//! checksum, in every version), the CRC-32C markers of version 2 and the self-checking
//! CRC-32C markers of version 3.

use super::{Layout, COMMIT_TAG, COMMIT_TAG_V3, MARKER_SEED, SLOT_SEED, VERSION_1, VERSION_2};
use crate::crc32c;

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

pub(super) fn word_at(b: &[u8], i: usize) -> u64 {
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

/// The CRC register after the address (8 bytes, little-endian), where the CRC of a
/// version 2 or 3 slot goes on with the block.
#[inline]
pub(super) fn crc_start(addr: u64) -> u32 {
    crc32c::update_u64(!0, addr)
}

/// The version 2 commit marker: the tag and the CRC-32C of the address (8 bytes,
/// little-endian) followed by the block. `plan` must be for `data.len()` bytes to be fast
/// (any plan gives the same value).
pub fn commit_marker_v2(addr: u64, data: &[u8], plan: &crc32c::Plan) -> u64 {
    seal_v2(!plan.update(crc_start(addr), data))
}

#[inline]
fn seal_v2(crc: u32) -> u64 {
    (u64::from(COMMIT_TAG) << 32) | u64::from(crc)
}

/// The 16-bit check of a version 3 marker: of the slot's address, the block size and the
/// block's CRC, so that a marker validates only in the slot (and storage geometry) it was
/// written for, and a marker of random bits only with probability 2^-32 (with the tag).
#[inline]
fn marker_check(addr: u64, block_size: u64, crc: u32) -> u16 {
    let c = crc32c::update_2u64(MARKER_SEED, addr, (block_size << 32) | u64::from(crc));
    (c ^ (c >> 16)) as u16
}

#[inline]
fn seal_v3(addr: u64, block_size: u64, crc: u32) -> u64 {
    (u64::from(COMMIT_TAG_V3) << 48)
        | (u64::from(marker_check(addr, block_size, crc)) << 32)
        | u64::from(crc)
}

/// The version 3 commit marker: the tag (16 bits), the marker's own check (16 bits), and
/// the CRC-32C of the address and the block as in version 2 (32 bits).
pub fn commit_marker_v3(addr: u64, data: &[u8], plan: &crc32c::Plan) -> u64 {
    let crc = !plan.update(crc_start(addr), data);
    seal_v3(addr, data.len() as u64, crc)
}

/// How a storage's markers are computed: by its layout version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    V1,
    /// With the CRC plan for the storage's block size.
    V2(crc32c::Plan),
    /// With the CRC plan for the storage's block size.
    V3(crc32c::Plan),
}

impl Check {
    /// The check of a layout (for versions 2 and 3 this prepares the CRC constants: a few
    /// microseconds, which is why [`Cache`](super::Cache) keeps it).
    pub fn of(lay: &Layout) -> Check {
        let plan = || crc32c::Plan::new(lay.block_size as usize);
        match lay.version {
            VERSION_1 => Check::V1,
            VERSION_2 => Check::V2(plan()),
            _ => Check::V3(plan()),
        }
    }

    /// The commit marker of a slot holding `data` at `addr`.
    #[inline]
    pub fn marker(&self, addr: u64, data: &[u8]) -> u64 {
        match self {
            Check::V1 => commit_marker(addr, data),
            Check::V2(plan) => commit_marker_v2(addr, data, plan),
            Check::V3(plan) => commit_marker_v3(addr, data, plan),
        }
    }

    /// The CRC plan, for versions whose markers are CRC-32C.
    #[inline]
    pub(super) fn plan(&self) -> Option<&crc32c::Plan> {
        match self {
            Check::V1 => None,
            Check::V2(plan) | Check::V3(plan) => Some(plan),
        }
    }

    /// The marker of slot `addr` from the `crc32c` of its address and block (versions 2
    /// and 3; `plan()` is `Some` for them).
    #[inline]
    pub(super) fn seal(&self, addr: u64, crc: u32) -> u64 {
        match self {
            Check::V3(plan) => seal_v3(addr, plan.len() as u64, crc),
            _ => seal_v2(crc),
        }
    }

    /// Whether `marker` can be a commit marker at all (its tag).
    #[inline]
    pub(super) fn tagged(&self, marker: u64) -> bool {
        match self {
            Check::V3(_) => (marker >> 48) as u16 == COMMIT_TAG_V3,
            _ => (marker >> 32) as u32 == COMMIT_TAG,
        }
    }

    /// Whether markers can be checked without the block (version 3).
    #[inline]
    pub(super) fn has_seals(&self) -> bool {
        matches!(self, Check::V3(_))
    }

    /// Whether `marker` was written by a store into slot `addr` of this storage, judged
    /// from the marker alone: `Some` in version 3 (tag and the marker's own check), `None`
    /// in the versions whose markers can only be checked against the block.
    #[inline]
    pub(super) fn sealed_for(&self, addr: u64, marker: u64) -> Option<bool> {
        match self {
            Check::V3(plan) => Some(marker == seal_v3(addr, plan.len() as u64, marker as u32)),
            _ => None,
        }
    }
}
