//! Property tests for the offset arithmetic in `emmap_core::bounds`.
//!
//! Every helper is called with arbitrary 64-bit inputs (biased towards the edges: 0, small
//! values, values around page sizes and around `u64::MAX`/`usize::MAX`). For each, the
//! property states exactly when a request is accepted, computed independently in `u128`/
//! `i128` arithmetic (which cannot wrap for these inputs), and that an accepted range lies
//! inside the region. A panic in any helper fails the test.

use emmap_core::bounds::{
    advise_range, atomic_slot, empty_write_ok, read_range, seek, write_range, MAX_POS,
};
use emmap_core::Error;
use proptest::prelude::*;

/// Values a caller may send: anything, plus the edges where wrapping would happen.
fn edgy_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => any::<u64>(),
        2 => 0u64..=64,
        2 => (0u64..=16).prop_map(|d| u64::MAX - d),
        1 => (0u64..=16).prop_map(|d| (i64::MAX as u64).wrapping_add(d).wrapping_sub(8)),
        1 => (0u64..=8).prop_map(|d| 4096u64.wrapping_add(d).wrapping_sub(4)),
        1 => (0u32..64).prop_map(|s| 1u64 << s),
    ]
}

fn edgy_usize() -> impl Strategy<Value = usize> {
    edgy_u64().prop_map(|v| v as usize)
}

/// Region sizes: small ones (where positions are mostly outside) and huge ones (where
/// `pos + len` can exceed `usize::MAX`).
fn region_size() -> impl Strategy<Value = usize> {
    prop_oneof![
        2 => 0usize..=8192,
        1 => edgy_usize(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4_000, .. ProptestConfig::default() })]

    /// A write is accepted exactly when all of `[pos, pos + len)` is inside the region,
    /// and then the range returned is that one.
    #[test]
    fn write_range_accepts_exactly_the_ranges_that_fit(
        pos in edgy_u64(), len in edgy_usize(), size in region_size()
    ) {
        let fits = u128::from(pos) + len as u128 <= size as u128;
        match write_range(pos, len, size) {
            Ok((s, e)) => {
                prop_assert!(fits);
                prop_assert_eq!(s as u64, pos);
                prop_assert_eq!(e as u128, s as u128 + len as u128);
                prop_assert!(s <= e && e <= size);
            }
            Err(err) => {
                prop_assert!(!fits, "rejected a write that fits: {:?}", (pos, len, size));
                prop_assert_eq!(err, Error::Einval);
            }
        }
    }

    /// A read is `None` (eof) exactly when `pos` is at or past the end or `len == 0`;
    /// otherwise it is the non-empty part of `[pos, pos + len)` inside the region.
    #[test]
    fn read_range_clips_at_the_end_and_never_leaves_the_region(
        pos in edgy_u64(), len in edgy_u64(), size in region_size()
    ) {
        let eof = u128::from(pos) >= size as u128 || len == 0;
        match read_range(pos, len, size) {
            None => prop_assert!(eof, "eof for a readable range: {:?}", (pos, len, size)),
            Some((s, e)) => {
                prop_assert!(!eof);
                prop_assert_eq!(s as u64, pos);
                prop_assert!(s < e && e <= size);
                let want = u128::from(len).min(size as u128 - s as u128);
                prop_assert_eq!((e - s) as u128, want);
            }
        }
    }

    /// An atomic slot is accepted exactly when its 8 bytes are inside the region and its
    /// address (`base + pos`) is 8-aligned; the size check comes first.
    #[test]
    fn atomic_slot_is_inside_and_aligned(
        base in edgy_usize(), pos in edgy_u64(), size in region_size()
    ) {
        let fits = u128::from(pos) + 8 <= size as u128;
        let aligned = (base as u128 + u128::from(pos)).is_multiple_of(8);
        match atomic_slot(base, pos, size) {
            Ok(s) => {
                prop_assert!(fits && aligned);
                prop_assert_eq!(s as u64, pos);
                prop_assert!(s + 8 <= size);
                prop_assert!(base.wrapping_add(s).is_multiple_of(8));
            }
            Err(Error::Einval) => prop_assert!(!fits),
            Err(Error::Alignment) => prop_assert!(fits && !aligned),
            Err(other) => prop_assert!(false, "unexpected error {:?}", other),
        }
    }

    /// `seek` is plain integer addition that refuses results outside `0..=2^63-1` (no file
    /// offset is larger).
    #[test]
    fn seek_is_exact_addition_within_file_offsets(from in edgy_u64(), delta in any::<i64>()) {
        let want = i128::from(from) + i128::from(delta);
        match seek(from, delta) {
            Ok(p) => {
                prop_assert_eq!(i128::from(p), want);
                prop_assert!(p <= MAX_POS);
            }
            Err(e) => {
                prop_assert!(want < 0 || want > i128::from(i64::MAX));
                prop_assert_eq!(e, Error::Einval);
            }
        }
    }

    /// `seek` with small deltas around the top of the range.
    #[test]
    fn seek_near_the_top(from in (0u64..=16).prop_map(|d| MAX_POS - d), delta in -32i64..=32) {
        let want = i128::from(from) + i128::from(delta);
        prop_assert_eq!(seek(from, delta).is_ok(), want <= i128::from(i64::MAX));
    }

    /// An empty write is accepted at every file position and nowhere else.
    #[test]
    fn empty_writes_fit_at_every_file_position(pos in edgy_u64()) {
        prop_assert_eq!(empty_write_ok(pos).is_ok(), pos <= i64::MAX as u64);
    }

    /// `advise_range`, under the preconditions every caller guarantees (a power-of-two page,
    /// `delta < page`, and `delta + size` addressable: the kernel mapping exists): always
    /// accepted; the result covers exactly the part of `[off, off + len)` (len 0: to the end)
    /// inside the region, rounded out to pages, and stays inside the kernel mapping.
    #[test]
    fn advise_range_clips_and_rounds_out_to_pages_inside_the_mapping(
        page_shift in 0u32..=21,
        delta_seed in any::<u64>(),
        off in edgy_u64(),
        len in edgy_u64(),
        size_seed in region_size(),
    ) {
        let page = 1usize << page_shift;
        let delta = (delta_seed as usize) % page;
        let size = size_seed.min(usize::MAX - delta);
        let s = u128::from(off).min(size as u128);
        let e = if len == 0 { size as u128 } else { (u128::from(off) + u128::from(len)).min(size as u128) };
        let (start, n) = advise_range(delta, off, len, size, page).unwrap();
        if e <= s {
            prop_assert_eq!(n, 0);
        } else {
            prop_assert!(start.is_multiple_of(page));
            prop_assert!(start as u128 <= delta as u128 + s);
            prop_assert!(delta as u128 + s - (start as u128) < page as u128);
            prop_assert_eq!(start as u128 + n as u128, delta as u128 + e);
            prop_assert!(start as u128 + n as u128 <= delta as u128 + size as u128);
        }
    }
}
