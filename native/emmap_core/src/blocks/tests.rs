//! Block storage tests: exhaustive layout arithmetic, garbage headers and bodies, every
//! crash point of store/free, a randomised model test, and the Mapping glue.

use super::checksum::word_at;
use super::layout::word_bytes;
use super::*;
use crate::crc32c;
use crate::growth::Growth;
use crate::mapping::Mapping;
use crate::mem::Mem;
use crate::options::Options;
use proptest::prelude::*;
use proptest::test_runner::{RngAlgorithm, TestRng};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

/// Random data for the sweeps below: proptest's generator, seeded per test, so that a
/// failure repeats run after run. (The model test further down draws its operations
/// through proptest strategies, and shrinks a failure.)
fn rng(seed: u8) -> TestRng {
    TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32])
}

/// What the sweeps draw.
trait Draw {
    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64;
    fn bytes(&mut self, n: usize) -> Vec<u8>;
}

impl Draw for TestRng {
    fn below(&mut self, n: u64) -> u64 {
        self.random_range(0..n)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.fill_bytes(&mut v);
        v
    }
}

fn buffer(lay: &Layout, slots: u64) -> Vec<u64> {
    let bytes = lay.data_off + slots * lay.stride;
    vec![0u64; bytes.div_ceil(8) as usize]
}

fn fresh(buf: &mut [u64], lay: Layout) -> Storage<'_> {
    Storage::format(Mem::from_words(buf), lay).unwrap()
}

fn block(rng: &mut TestRng, lay: &Layout) -> Vec<u8> {
    rng.bytes(lay.block_size as usize)
}

fn all_blocks(s: &Storage<'_>) -> Vec<(u64, Vec<u8>)> {
    s.scan(0, Budget::ALL, |b| b.to_vec()).unwrap().0
}

// ------------------------------------------------------------------------------ layout

fn check_layout(l: &Layout) {
    let (bs, cap) = (l.block_size, l.capacity);
    assert!(l.stride >= bs + 8 && l.stride.is_multiple_of(8) && l.stride < bs + 16);
    assert!(l.words * 64 >= cap && (l.words - 1) * 64 < cap);
    assert!(l.summary_words * 64 >= l.words && (l.summary_words - 1) * 64 < l.words);
    assert_eq!(l.bitmap_off, HEADER_SIZE);
    assert_eq!(l.summary_off, HEADER_SIZE + 8 * l.words);
    assert!(l.data_off >= l.summary_off + 8 * l.summary_words);
    assert!(
        l.data_off.is_multiple_of(DATA_ALIGN)
            && l.data_off < l.summary_off + 8 * l.summary_words + 64
    );
    assert_eq!(l.total, l.data_off + cap * l.stride);
    assert!(l.total <= i64::MAX as u64);
    assert_eq!(l.slot_off(0), Some(l.data_off));
    assert_eq!(l.slot_end(cap - 1), Some(l.total));
    assert_eq!(l.slot_off(cap), None);
    assert_eq!(l.slot_off(u64::MAX), None);
    assert_eq!(l.slot_end(u64::MAX), None);
    assert_eq!(l.slots_in(l.total), cap);
    assert_eq!(l.slots_in(u64::MAX), cap);
    assert_eq!(l.slots_in(l.data_off - 1), 0);
    assert_eq!(l.slots_in(l.data_off + l.stride - 1), 0);
    assert_eq!(l.slots_in(l.data_off + l.stride), 1.min(cap));
    assert_eq!(
        l.valid_bits(l.words - 1).count_ones() as u64,
        cap - (l.words - 1) * 64
    );
    assert_eq!(l.valid_bits(l.words), 0);
    assert_eq!(l.valid_bits(u64::MAX), 0);
    assert_eq!(Layout::decode(&l.encode()), Ok(*l));
}

/// Every block size 1..=200 with every capacity 1..=300, plus the edges of both ranges.
#[test]
fn layout_arithmetic_exhaustive_and_at_the_edges() {
    for bs in 1..=200 {
        for cap in 1..=300 {
            let l = Layout::new(bs, cap).unwrap();
            check_layout(&l);
            // Consecutive slots never overlap and each slot's data fits in its stride.
            for a in [0, cap / 2, cap.saturating_sub(2)] {
                if a + 1 < cap {
                    let (o, n) = (l.slot_off(a).unwrap(), l.slot_off(a + 1).unwrap());
                    assert!(o + 8 + bs <= n && o % 8 == 0);
                }
            }
        }
    }
    let sizes = [
        0,
        1,
        7,
        8,
        9,
        4095,
        MAX_BLOCK_SIZE - 1,
        MAX_BLOCK_SIZE,
        MAX_BLOCK_SIZE + 1,
        u64::MAX - 8,
        u64::MAX,
    ];
    let caps = [
        0,
        1,
        63,
        64,
        65,
        4095,
        4096,
        4097,
        DEFAULT_CAPACITY,
        MAX_CAPACITY - 1,
        MAX_CAPACITY,
        MAX_CAPACITY + 1,
        u64::MAX,
    ];
    for &bs in &sizes {
        for &cap in &caps {
            let ok = (1..=MAX_BLOCK_SIZE).contains(&bs) && (1..=MAX_CAPACITY).contains(&cap);
            match Layout::new(bs, cap) {
                Some(l) => {
                    assert!(ok, "{bs} {cap}");
                    check_layout(&l);
                }
                None => assert!(!ok, "{bs} {cap}"),
            }
        }
    }
    let d = Layout::new(1531, DEFAULT_CAPACITY).unwrap();
    assert_eq!((d.stride, d.words, d.summary_words), (1544, 4096, 64));
    assert_eq!((d.summary_off, d.data_off), (64 + 32768, 64 + 32768 + 512));
}

// ------------------------------------------------------------------------------ garbage

#[test]
fn every_single_byte_change_of_a_header_is_rejected() {
    for (bs, cap) in [(1, 1), (1531, DEFAULT_CAPACITY), (8, 100)] {
        let h = Layout::new(bs, cap).unwrap().encode();
        for i in 0..64 {
            for v in 0..=255u8 {
                if v == h[i] {
                    continue;
                }
                let mut g = h;
                g[i] = v;
                let want = if i < 8 {
                    BlockError::NotInitialized
                } else {
                    BlockError::Corrupt
                };
                assert_eq!(Layout::decode(&g), Err(want), "byte {i} = {v}");
            }
        }
    }
}

/// Headers with a correct checksum but fields that disagree with each other are corrupt;
/// random headers (with and without the magic) never decode to anything out of range.
#[test]
fn forged_and_random_headers() {
    let mut rng = rng(1);
    let seal = |mut h: [u8; 64]| {
        let s = checksum(HEADER_SEED, &h[..56]);
        h[56..].copy_from_slice(&s.to_le_bytes());
        h
    };
    let good = Layout::new(100, 1000).unwrap().encode();
    for field in [8usize, 12, 16, 24, 32, 40, 48] {
        for _ in 0..200 {
            let mut h = good;
            let w = field == 8 || field == 12;
            let n = if w { 4 } else { 8 };
            let v = match rng.below(3) {
                0 => rng.next_u64(),
                1 => rng.below(64),
                _ => word_at(&good, field & !7)
                    .wrapping_add(rng.below(17))
                    .wrapping_sub(8),
            };
            h[field..field + n].copy_from_slice(&v.to_le_bytes()[..n]);
            match Layout::decode(&seal(h)) {
                Ok(l) => {
                    check_layout(&l);
                    assert_eq!(l.encode(), seal(h));
                }
                Err(e) => assert_eq!(e, BlockError::Corrupt),
            }
        }
    }
    for i in 0..100_000 {
        let mut h = [0u8; 64];
        h.copy_from_slice(&rng.bytes(64));
        if i % 2 == 0 {
            h[..8].copy_from_slice(&MAGIC);
        }
        if i % 4 == 0 {
            h = seal(h);
        }
        if let Ok(l) = Layout::decode(&h) {
            check_layout(&l);
        }
    }
}

/// Random bytes as a whole region: opening gives an error; with a valid header on top the
/// storage is usable and consistent, and after repair it is empty.
#[test]
fn garbage_regions_never_panic_and_repair_to_consistency() {
    let mut rng = rng(2);
    for round in 0..300 {
        let words = 8 + rng.below(600) as usize;
        let mut buf: Vec<u64> = (0..words).map(|_| rng.next_u64()).collect();
        if round % 3 == 0 {
            let _ = Storage::open(Mem::from_words(&mut buf)).err().unwrap();
            continue;
        }
        let bs = 1 + rng.below(40);
        let cap = 1 + rng.below(300);
        let lay = Layout::new(bs, cap).unwrap();
        let h = lay.encode();
        let bytes = std::mem::size_of_val(buf.as_slice()) as u64;
        for (i, w) in buf.iter_mut().take(8).enumerate() {
            *w = u64::from_ne_bytes(word_bytes(&h, i * 8));
        }
        let mem = Mem::from_words(&mut buf);
        let s = match Storage::open(mem) {
            Ok(s) => s,
            Err(e) => {
                assert!(bytes < lay.data_off);
                assert_eq!(e, BlockError::Corrupt);
                continue;
            }
        };
        for _ in 0..50 {
            let a = rng.below(cap + 10);
            let _ = s.read(a, |b| b.len()).unwrap();
        }
        let (listed, _) = s.scan(0, Budget::ALL, |b| b.to_vec()).unwrap();
        for (a, b) in &listed {
            assert_eq!(s.read(*a, |x| x.to_vec()).unwrap().as_ref(), Some(b));
        }
        let (next, _) = s.repair(0, u64::MAX).unwrap();
        assert_eq!(next, None);
        assert_eq!(all_blocks(&s), listed, "random markers are never valid");
        // Now a working storage: stores fill from the lowest slot up.
        let mut want = 0;
        while want < s.mapped_slots() {
            let data = rng.bytes(bs as usize);
            match s.store(&data).unwrap() {
                Stored::At(a) => {
                    assert_eq!(a, want);
                    assert_eq!(s.read(a, |x| x.to_vec()).unwrap(), Some(data));
                }
                Stored::Grow { need } => {
                    assert!(need > bytes);
                    break;
                }
            }
            want += 1;
        }
    }
}

#[test]
fn misaligned_regions_are_refused() {
    let lay = Layout::new(8, 64).unwrap();
    let mut buf = buffer(&lay, 4);
    let mem = Mem::from_words(&mut buf);
    // SAFETY: four bytes into our own buffer, four bytes shorter: still inside it.
    let shifted = unsafe { Mem::from_raw(mem.ptr.add(4), mem.len - 4) };
    assert_eq!(
        Storage::format(shifted, lay).err(),
        Some(BlockError::Map(Error::Alignment))
    );
    assert_eq!(
        Storage::open(shifted).err(),
        Some(BlockError::Map(Error::Alignment))
    );
}

// ------------------------------------------------------------------------------ operations

#[test]
fn store_read_free_reuse_lowest_and_full() {
    let lay = Layout::new(10, 130).unwrap();
    let mut buf = buffer(&lay, 130);
    let s = fresh(&mut buf, lay);
    let mut rng = rng(3);
    let mut model = BTreeMap::new();
    for want in 0..130 {
        let d = block(&mut rng, &lay);
        assert_eq!(s.store(&d), Ok(Stored::At(want)));
        model.insert(want, d);
    }
    assert_eq!(s.store(&[0; 10]), Err(BlockError::Full));
    assert_eq!(s.store(&[0; 9]), Err(BlockError::BadSize));
    assert_eq!(s.store(&[0; 11]), Err(BlockError::BadSize));
    for a in [5, 64, 129, 0, 70] {
        assert_eq!(s.free(a), Ok(true));
        assert_eq!(s.free(a), Ok(false));
        assert_eq!(s.read(a, |b| b.to_vec()), Ok(None));
        model.remove(&a);
    }
    assert_eq!(s.free(130), Ok(false));
    assert_eq!(s.free(u64::MAX), Ok(false));
    assert_eq!(s.read(u64::MAX, |b| b.to_vec()), Ok(None));
    for want in [0, 5, 64, 70, 129] {
        let d = block(&mut rng, &lay);
        assert_eq!(s.store(&d), Ok(Stored::At(want)));
        model.insert(want, d);
    }
    assert_eq!(s.store(&[0; 10]), Err(BlockError::Full));
    let got: BTreeMap<_, _> = all_blocks(&s).into_iter().collect();
    assert_eq!(got, model);
}

#[test]
fn scan_respects_both_budgets_and_continues_exactly() {
    let lay = Layout::new(3, 1000).unwrap();
    let mut buf = buffer(&lay, 1000);
    let s = fresh(&mut buf, lay);
    let mut model = BTreeMap::new();
    for i in 0..1000u64 {
        let d = [(i % 251) as u8, (i / 251) as u8, 7];
        assert_eq!(s.store(&d), Ok(Stored::At(i)));
        model.insert(i, d.to_vec());
    }
    for i in 0..1000 {
        if i % 7 != 0 && i % 300 > 3 {
            assert_eq!(s.free(i), Ok(true));
            model.remove(&i);
        }
    }
    let budgets = [
        (1, 1, 1),
        (1, 100, 100),
        (3, 1, 1),
        (5, 9, 2),
        (1000, 2, 1000),
        (1000, 1000, 1),
        (usize::MAX, u64::MAX, 3),
    ];
    for (blocks, checks, words) in budgets {
        let mut got = Vec::new();
        let mut at = Some(0);
        let mut calls = 0;
        while let Some(start) = at {
            let b = Budget {
                blocks,
                checks,
                words,
            };
            let (v, next) = s.scan(start, b, |b| b.to_vec()).unwrap();
            assert!(v.len() <= blocks && v.len() as u64 <= checks);
            assert!(v.iter().all(|(a, _)| *a >= start));
            if let Some(n) = next {
                assert!(n > start, "progress");
            }
            got.extend(v);
            at = next;
            calls += 1;
        }
        assert!(calls <= 2000 + 16);
        assert_eq!(got, model.clone().into_iter().collect::<Vec<_>>());
    }
    assert_eq!(
        s.scan(1000, Budget::ALL, |b| b.len()).unwrap(),
        (vec![], None)
    );
    assert_eq!(
        s.scan(u64::MAX, Budget::ALL, |b| b.len()).unwrap(),
        (vec![], None)
    );
}

/// Only slots lying whole inside the region count; the lowest free slot past it asks for
/// growth, with the exact size needed.
#[test]
fn short_regions_ask_to_grow() {
    let lay = Layout::new(16, 100).unwrap();
    let mut buf = buffer(&lay, 3);
    let s = fresh(&mut buf, lay);
    assert_eq!(s.mapped_slots(), 3);
    for a in 0..3 {
        assert_eq!(s.store(&[a as u8; 16]), Ok(Stored::At(a)));
    }
    assert_eq!(
        s.store(&[9; 16]),
        Ok(Stored::Grow {
            need: lay.slot_end(3).unwrap()
        })
    );
    assert_eq!(s.read(3, |b| b.to_vec()), Ok(None));
    assert_eq!(s.free(3), Ok(false));
    assert_eq!(all_blocks(&s).len(), 3);
}

// ------------------------------------------------------------------------------ crash points

/// Every point at which a store or a free can be interrupted, written out as the state it
/// leaves; repair must keep every block whose store completed and drop everything else.
#[test]
fn every_crash_point_of_store_and_free_is_repaired() {
    for version in [VERSION_2, VERSION_3] {
        let lay = Layout::with_version(version, 24, 200).unwrap();
        let mut rng = rng(4);
        // The state after: 0 = claimed bit only, 1 = marker zeroed, 2 = half the data,
        // 3 = all data, no marker, 4 = free cleared the marker but not the bit,
        // 5 = free cleared marker and bit but not the summary, 6 = torn data under a marker
        // (not a crash point: damage after the store, or a power loss).
        for point in 0..7 {
            let mut buf = buffer(&lay, 200);
            let s = fresh(&mut buf, lay);
            let mut kept = BTreeMap::new();
            for a in 0..130 {
                let d = block(&mut rng, &lay);
                assert_eq!(s.store(&d), Ok(Stored::At(a)));
                kept.insert(a, d);
            }
            let victim = 64 + rng.below(60);
            let off = lay.slot_off(victim).unwrap();
            let word = s.bit_word(victim / 64).unwrap();
            let bit = 1u64 << (victim % 64);
            let marker = s.marker(victim).unwrap();
            match point {
                0..=3 => {
                    // Interrupted store into a free slot that once held another block.
                    assert_eq!(s.free(victim), Ok(true));
                    kept.remove(&victim);
                    word.fetch_or(bit, Ordering::SeqCst);
                    if point >= 2 {
                        let d = block(&mut rng, &lay);
                        let n = if point == 2 { 12 } else { 24 };
                        s.mem.write(off + 8, &d[..n]).unwrap();
                    }
                }
                4 => {
                    marker.store(0, Ordering::SeqCst);
                    kept.remove(&victim);
                }
                5 => {
                    // The free finished but for the summary bit; make the word otherwise full.
                    assert_eq!(s.free(victim), Ok(true));
                    kept.remove(&victim);
                    s.summary_word(0).unwrap().fetch_and(!2, Ordering::SeqCst);
                }
                _ => {
                    let d = s.data(victim).unwrap()[0];
                    s.mem.write(off + 8, &[d ^ 0x40]).unwrap();
                    kept.remove(&victim);
                }
            }
            // Before repair: reads already agree with the truth.
            for a in 0..200 {
                assert_eq!(s.read(a, |b| b.to_vec()).unwrap().as_ref(), kept.get(&a));
            }
            // Version 3 frees a block whose bytes were damaged after its store: its marker
            // proves the store completed. Then repair has nothing left to drop.
            let freed = version == VERSION_3 && point == 6;
            assert_eq!(s.free(victim), Ok(freed));
            let (next, rep) = s.repair(0, 37).unwrap();
            assert_eq!(next, Some(37));
            let mut at = next;
            let mut total = rep;
            while let Some(st) = at {
                let (n, r) = s.repair(st, 37).unwrap();
                total.kept += r.kept;
                total.dropped += r.dropped;
                at = n;
            }
            assert_eq!(total.kept, kept.len() as u64);
            let dropped = u64::from(matches!(point, 0..=4) || (point == 6 && !freed));
            assert_eq!(total.dropped, dropped, "v{version} point {point}");
            let got: BTreeMap<_, _> = all_blocks(&s).into_iter().collect();
            assert_eq!(got, kept);
            // After repair the victim's slot is the lowest free one again.
            assert_eq!(s.store(&[1; 24]), Ok(Stored::At(victim)));
            // A second repair changes nothing.
            assert_eq!(s.repair(0, u64::MAX).unwrap().1.dropped, 0);
        }
    }
}

// ------------------------------------------------------------------------------ model

/// The geometries of the model test: one slot; a bitmap word partly used, whole, and
/// one bit past it; several summary bits; blocks that are not a multiple of 8.
const GEOMETRIES: [(u64, u64); 7] = [
    (1, 1),
    (1, 70),
    (7, 64),
    (8, 129),
    (9, 200),
    (63, 130),
    (100, 300),
];

/// One step of the model test. Addresses and starts are reduced to the geometry when the
/// step runs (modulo a little more than the capacity, so that some lie past it).
#[derive(Debug, Clone)]
enum Op {
    /// Store a block whose bytes are made from these.
    Store([u8; 8]),
    Free(u64),
    Read(u64),
    Scan {
        start: u64,
        budget: Budget,
    },
    Repair {
        start: u64,
        slots: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<[u8; 8]>().prop_map(Op::Store),
        2 => any::<u64>().prop_map(Op::Free),
        2 => any::<u64>().prop_map(Op::Read),
        1 => (any::<u64>(), 1..=20usize, 1..=30u64, 1..=4u64).prop_map(
            |(start, blocks, checks, words)| Op::Scan {
                start,
                budget: Budget { blocks, checks, words },
            }
        ),
        1 => (any::<u64>(), any::<u64>()).prop_map(|(start, slots)| Op::Repair { start, slots }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random store/read/free/scan/repair against a map, over many geometries; checks
    /// that a store takes the lowest free address. Sequences are long enough to fill
    /// the largest geometry.
    #[test]
    fn random_operations_match_a_map_model(
        (bs, cap) in prop::sample::select(&GEOMETRIES[..]),
        ops in prop::collection::vec(op(), 1..3000),
    ) {
        let lay = Layout::new(bs, cap).unwrap();
        let mut buf = buffer(&lay, cap);
        let s = fresh(&mut buf, lay);
        let mut model: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Store(seed) => {
                    let d: Vec<u8> = (0..bs as usize)
                        .map(|i| seed[i % 8].wrapping_add((i / 8) as u8))
                        .collect();
                    let lowest = (0..cap).find(|a| !model.contains_key(a));
                    match (s.store(&d).unwrap_or(Stored::Grow { need: 0 }), lowest) {
                        (Stored::At(a), Some(l)) => {
                            assert_eq!(a, l);
                            model.insert(a, d);
                        }
                        (Stored::Grow { need: 0 }, None) => {}
                        other => panic!("{other:?}"),
                    }
                }
                Op::Free(a) => {
                    let a = a % (cap + 3);
                    assert_eq!(s.free(a), Ok(model.remove(&a).is_some()));
                }
                Op::Read(a) => {
                    let a = a % (cap + 3);
                    assert_eq!(s.read(a, |b| b.to_vec()).unwrap().as_ref(), model.get(&a));
                }
                Op::Scan { start, budget } => {
                    let start = start % (cap + 2);
                    let (v, next) = s.scan(start, budget, |b| b.to_vec()).unwrap();
                    let want: Vec<_> = model
                        .range(start..)
                        .take(v.len())
                        .map(|(a, d)| (*a, d.clone()))
                        .collect();
                    assert_eq!(v, want);
                    if next.is_none() {
                        assert_eq!(v.len(), model.range(start..).count());
                    }
                }
                Op::Repair { start, slots } => {
                    let start = start % (cap + 2);
                    let (_, rep) = s.repair(start, 1 + slots % cap).unwrap();
                    assert_eq!(rep.dropped, 0);
                }
            }
        }
        let got: BTreeMap<_, _> = all_blocks(&s).into_iter().collect();
        assert_eq!(got, model);
    }
}

#[test]
fn concurrent_stores_and_frees_never_share_a_slot() {
    let lay = Layout::new(32, 10_000).unwrap();
    let mut buf = buffer(&lay, 10_000);
    let s = fresh(&mut buf, lay);
    std::thread::scope(|sc| {
        for t in 0..4u8 {
            let s = &s;
            sc.spawn(move || {
                let mut mine = Vec::new();
                for i in 0..3000u32 {
                    let mut d = [t; 32];
                    d[..4].copy_from_slice(&i.to_le_bytes());
                    match s.store(&d).unwrap() {
                        Stored::At(a) => mine.push((a, d)),
                        Stored::Grow { .. } => panic!("sized for all"),
                    }
                    if i % 3 == 0 {
                        let (a, d) = mine.swap_remove(i as usize % mine.len());
                        assert_eq!(s.read(a, |b| b.to_vec()).unwrap(), Some(d.to_vec()));
                        assert_eq!(s.free(a), Ok(true));
                    }
                }
                for (a, d) in mine {
                    assert_eq!(s.read(a, |b| b.to_vec()).unwrap(), Some(d.to_vec()));
                }
            });
        }
    });
    assert_eq!(all_blocks(&s).len(), 4 * 2000);
    assert_eq!(s.repair(0, u64::MAX).unwrap().1.dropped, 0);
}

// ------------------------------------------------------------------------------ on a Mapping

fn opts(items: &[&str]) -> Options {
    let mut o = Options::default();
    for i in items {
        o.apply(i, None).unwrap();
    }
    o
}

#[test]
fn mapping_grows_persists_and_reopens() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("blocks");
    let o = opts(&["create", "write", "shared"]);
    let m = Mapping::open(Some(&p), 0, 1, o.clone()).unwrap();
    let c = Cache::default();
    assert_eq!(layout(&m, &c), Err(BlockError::NotInitialized));
    assert_eq!(
        read(&m, &c, 0, |b| b.to_vec()),
        Err(BlockError::NotInitialized)
    );
    let lay = init(&m, &c, 1531, None).unwrap();
    assert_eq!(lay.capacity, DEFAULT_CAPACITY);
    assert_eq!(m.size().unwrap() as u64, lay.data_off);
    assert_eq!(init(&m, &c, 1531, None), Ok(lay));
    assert_eq!(init(&m, &c, 1531, Some(DEFAULT_CAPACITY)), Ok(lay));
    assert_eq!(init(&m, &c, 1530, None), Err(BlockError::Mismatch));
    assert_eq!(init(&m, &c, 1531, Some(10)), Err(BlockError::Mismatch));
    assert_eq!(
        store(&m, &c, &[1; 1531], Growth::Refused),
        Err(BlockError::NeedsGrowth)
    );
    for i in 0..500u64 {
        let data = vec![i as u8; 1531];
        assert_eq!(store(&m, &c, &data, Growth::Allowed), Ok(i));
    }
    assert!(m.size().unwrap() as u64 >= lay.slot_end(499).unwrap());
    // A caller that cannot afford large blocks can look at the block size first.
    assert_eq!(
        with_storage(&m, &c, |s| Ok(s.layout().block_size)),
        Ok(1531)
    );
    assert_eq!(read(&m, &c, 7, |b| b.len()), Ok(Some(1531)));
    assert_eq!(free(&m, &c, 7), Ok(true));
    drop(m);
    let m = Mapping::open(Some(&p), 0, 0, opts(&["write", "shared"])).unwrap();
    let c = Cache::default();
    assert_eq!(read(&m, &c, 7, |b| b.to_vec()), Ok(None));
    assert_eq!(read(&m, &c, 499, |b| b.to_vec()), Ok(Some(vec![243; 1531])));
    let (v, next) = scan(&m, &c, 0, Budget::ALL, |b| b[0]).unwrap();
    assert_eq!(v.len(), 499);
    assert_eq!(next, None);
    assert_eq!(repair(&m, &c, 0, u64::MAX).map(|r| r.1.dropped), Ok(0));
    assert_eq!(store(&m, &c, &[0; 1531], Growth::Allowed), Ok(7));
    // Read-only handles read but neither store, free, repair nor init.
    let ro = Mapping::open(Some(&p), 0, 0, opts(&["shared"])).unwrap();
    let c = Cache::default();
    assert_eq!(read(&ro, &c, 7, |b| b.len()), Ok(Some(1531)));
    let eacces = Some(BlockError::Map(Error::Eacces));
    assert_eq!(store(&ro, &c, &[0; 1531], Growth::Allowed).err(), eacces);
    assert_eq!(free(&ro, &c, 7).err(), eacces);
    assert_eq!(init(&ro, &c, 1531, None).err(), eacces);
    assert_eq!(repair(&ro, &c, 0, 10).err(), eacces);
    m.close();
    assert_eq!(
        store(&m, &c, &[0; 1531], Growth::Allowed),
        Err(BlockError::Map(Error::Closed))
    );
}

#[test]
fn fixed_size_mappings_fill_up_and_bad_arguments_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("fixed");
    let lay = Layout::new(100, 50).unwrap();
    let size = lay.data_off + 10 * lay.stride + 5;
    let m = Mapping::open(
        Some(&p),
        0,
        size,
        opts(&["create", "write", "shared", "fixed_size"]),
    )
    .unwrap();
    let c = Cache::default();
    assert_eq!(
        init(&m, &c, 100, Some(0)),
        Err(BlockError::Map(Error::Einval))
    );
    assert_eq!(init(&m, &c, 0, None), Err(BlockError::Map(Error::Einval)));
    assert_eq!(
        init(&m, &c, 100, Some(MAX_CAPACITY + 1)),
        Err(BlockError::Map(Error::Einval))
    );
    // Too small for the default capacity's bitmap, and it may not grow.
    assert_eq!(
        init(&m, &c, 100, None),
        Err(BlockError::Map(Error::FixedSize))
    );
    assert_eq!(init(&m, &c, 100, Some(50)), Ok(lay));
    for a in 0..10 {
        assert_eq!(store(&m, &c, &[a as u8; 100], Growth::Allowed), Ok(a));
    }
    assert_eq!(
        store(&m, &c, &[0; 100], Growth::Allowed),
        Err(BlockError::Full)
    );
    assert_eq!(
        store(&m, &c, &[0; 100], Growth::Refused),
        Err(BlockError::Full)
    );
    assert_eq!(
        store(&m, &c, &[0; 99], Growth::Allowed),
        Err(BlockError::BadSize)
    );
    assert_eq!(free(&m, &c, 3), Ok(true));
    assert_eq!(store(&m, &c, &[0; 100], Growth::Allowed), Ok(3));
}

#[test]
fn anonymous_private_mappings_grow_by_copying() {
    let m = Mapping::open(None, 0, 4096, opts(&["anon", "write"])).unwrap();
    let c = Cache::default();
    init(&m, &c, 40, Some(5000)).unwrap();
    for i in 0..3000u64 {
        let data = [(i % 256) as u8; 40];
        assert_eq!(store(&m, &c, &data, Growth::Allowed), Ok(i));
    }
    for i in (0..3000u64).step_by(97) {
        assert_eq!(read(&m, &c, i, |b| b[0]), Ok(Some((i % 256) as u8)));
    }
    for _ in 0..2000 {
        assert_eq!(store(&m, &c, &[0; 40], Growth::Allowed).map(|_| ()), Ok(()));
    }
    assert_eq!(
        store(&m, &c, &[0; 40], Growth::Allowed),
        Err(BlockError::Full)
    );
}

/// Anonymous shared memory is never resized by block storage (in-place `mremap` growth of
/// it would leave pages past the shmem object, which raise SIGBUS): it acts as fixed-size.
#[test]
fn anonymous_shared_mappings_grow() {
    // Grown by a copy into new shared memory, never in place (which would SIGBUS).
    let m = Mapping::open(None, 0, 4096, opts(&["anon", "write", "shared"])).unwrap();
    let c = Cache::default();
    init(&m, &c, 40, Some(5000)).unwrap();
    for i in 0..5000u64 {
        assert_eq!(store(&m, &c, &[i as u8; 40], Growth::Allowed), Ok(i));
    }
    assert_eq!(
        store(&m, &c, &[1; 40], Growth::Allowed),
        Err(BlockError::Full)
    );
    for i in (0..5000u64).step_by(97) {
        let got = read(&m, &c, i, |b| b.to_vec()).unwrap().unwrap();
        assert_eq!(got, vec![i as u8; 40]);
    }
}

#[test]
fn direct_mode_reads_point_into_the_mapping_and_survive_growth() {
    let m = Mapping::open(None, 0, 4096, opts(&["anon", "write", "direct"])).unwrap();
    let c = Cache::default();
    init(&m, &c, 8, Some(100_000)).unwrap();
    assert_eq!(store(&m, &c, b"12345678", Growth::Allowed), Ok(0));
    let (p, n) = read(&m, &c, 0, |b| (b.as_ptr() as usize, b.len()))
        .unwrap()
        .unwrap();
    for _ in 0..50_000 {
        store(&m, &c, b"abcdefgh", Growth::Allowed).unwrap();
    }
    // SAFETY: direct mode with an exported region: the old region stays mapped until `m`
    // is dropped, which is after this read.
    let old = unsafe { std::slice::from_raw_parts(p as *const u8, n) };
    assert_eq!(old, b"12345678");
}

// ------------------------------------------------------------------------------ versions

/// The definition of a version 3 marker, from BLOCKS.md, bit by bit: the bare CRC-32C
/// register (no inversions) of the marker's own check, and the standard CRC of the data.
fn v3_marker_by_hand(addr: u64, block: &[u8]) -> u64 {
    fn reg(mut c: u32, bytes: &[u8]) -> u32 {
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
            }
        }
        c
    }
    let mut msg = addr.to_le_bytes().to_vec();
    msg.extend_from_slice(block);
    let crc = !reg(!0, &msg);
    let w = ((block.len() as u64) << 32) | u64::from(crc);
    let c = reg(reg(0x6d61_726b, &addr.to_le_bytes()), &w.to_le_bytes());
    let h = (c ^ (c >> 16)) & 0xFFFF;
    (0xB1C3u64 << 48) | (u64::from(h) << 32) | u64::from(crc)
}

/// Every layout version works the same; each writes its own markers: version 1 the
/// multiply hash, version 2 the CRC-32C of the address and the block, version 3 that CRC
/// with the marker's own check.
#[test]
fn every_version_stores_reads_and_frees_with_its_own_markers() {
    let mut rng = rng(6);
    for version in [VERSION_1, VERSION_2, VERSION_3] {
        for bs in [1, 7, 64, 200, 1531] {
            let lay = Layout::with_version(version, bs, 100).unwrap();
            assert_eq!(Layout::decode(&lay.encode()), Ok(lay));
            let mut buf = buffer(&lay, 100);
            let s = fresh(&mut buf, lay);
            let mut model = BTreeMap::new();
            for a in 0..40 {
                let d = block(&mut rng, &lay);
                assert_eq!(s.store(&d), Ok(Stored::At(a)));
                let m = s.marker(a).unwrap().load(Ordering::SeqCst);
                let want = match version {
                    VERSION_1 => commit_marker(a, &d),
                    VERSION_2 => {
                        let mut msg = a.to_le_bytes().to_vec();
                        msg.extend_from_slice(&d);
                        (u64::from(COMMIT_TAG) << 32) | u64::from(crc32c::crc32c(&msg))
                    }
                    _ => v3_marker_by_hand(a, &d),
                };
                assert_eq!(m, want, "v{version} bs {bs}");
                model.insert(a, d);
            }
            for a in (0..40).step_by(3) {
                assert_eq!(s.free(a), Ok(true));
                assert_eq!(s.free(a), Ok(false));
                model.remove(&a);
            }
            let got: BTreeMap<_, _> = all_blocks(&s).into_iter().collect();
            assert_eq!(got, model);
        }
    }
    assert_eq!(Layout::with_version(0, 8, 8), None);
    assert_eq!(Layout::with_version(4, 8, 8), None);
    assert_eq!(Layout::new(8, 8).unwrap().version, VERSION_3);
}

/// A version 3 free trusts the marker alone, and the marker is valid only in the slot and
/// the storage geometry it was written for: a marker copied to another slot, or into a
/// storage of another block size, or any single bit flipped in it, frees nothing. A block
/// whose bytes were damaged after its store is freed (it was stored there), and is no
/// block to reads.
#[test]
fn version_3_frees_check_the_marker_not_the_block() {
    let lay = Layout::new(100, 200).unwrap();
    let mut buf = buffer(&lay, 200);
    let s = fresh(&mut buf, lay);
    for i in 0..10u8 {
        assert_eq!(s.store(&[i; 100]), Ok(Stored::At(u64::from(i))));
    }
    // Damage the bytes of block 1: reads refuse it, free frees it.
    let off = lay.slot_off(1).unwrap() + 8 + 50;
    s.mem.write(off, &[0xEE]).unwrap();
    assert_eq!(s.read(1, |b| b.to_vec()), Ok(None));
    assert_eq!(s.free(1), Ok(true));
    assert_eq!(s.free(1), Ok(false));
    // Each single bit of block 2's marker flipped: not freed, and reads refuse it.
    let m2 = s.marker(2).unwrap();
    let good = m2.load(Ordering::SeqCst);
    for bit in 0..64 {
        m2.store(good ^ (1 << bit), Ordering::SeqCst);
        assert_eq!(s.free(2), Ok(false), "bit {bit}");
        assert_eq!(s.read(2, |b| b.to_vec()), Ok(None), "bit {bit}");
    }
    m2.store(good, Ordering::SeqCst);
    // Block 3's marker (and bytes) copied into slot 4: slot 4 is no block.
    let m3 = s.marker(3).unwrap().load(Ordering::SeqCst);
    s.marker(4).unwrap().store(m3, Ordering::SeqCst);
    assert_eq!(s.free(4), Ok(false));
    // Markers of random bits free nothing (the tag and the check: 2^-32 each).
    let mut rng = rng(11);
    for _ in 0..10_000 {
        let m = rng.next_u64();
        s.marker(5).unwrap().store(m, Ordering::SeqCst);
        assert_eq!(s.free(5), Ok(false));
    }
    // The same bytes in a storage of another block size: the check covers it.
    let other = Check::of(&Layout::new(101, 200).unwrap());
    let same = Check::of(&lay);
    assert_eq!(same.sealed_for(2, good), Some(true));
    assert_eq!(other.sealed_for(2, good), Some(false));
    // Older versions have no such check.
    assert_eq!(Check::V1.sealed_for(2, good), None);
    assert_eq!(s.free(2), Ok(true));
    assert_eq!(
        all_blocks(&s).iter().map(|b| b.0).collect::<Vec<_>>(),
        vec![0, 3, 6, 7, 8, 9]
    );
}

/// Versions 2 and 3 detect every change of up to 32 consecutive bits, and a block copied
/// with its marker to another slot never validates there.
#[test]
fn crc_markers_catch_bursts_and_moved_blocks() {
    for version in [VERSION_2, VERSION_3] {
        let lay = Layout::with_version(version, 64, 16).unwrap();
        let check = Check::of(&lay);
        let mut rng = rng(7);
        let d = block(&mut rng, &lay);
        let m = check.marker(3, &d);
        for start in 0..(64 * 8 - 32) {
            for len in [1, 2, 7, 8, 31, 32] {
                let mut bad = d.clone();
                let burst = (rng.next_u64() | 1 | (1 << (len - 1))) & (u64::MAX >> (64 - len));
                for i in 0..len {
                    if burst & (1 << i) != 0 {
                        let bit = start + i;
                        bad[bit / 8] ^= 1 << (bit % 8);
                    }
                }
                assert_ne!(check.marker(3, &bad), m);
            }
        }
        for other in (0..MAX_CAPACITY)
            .step_by(9973)
            .chain([2, 4, MAX_CAPACITY - 1])
        {
            if other != 3 {
                assert_ne!(check.marker(other, &d), m);
            }
        }
    }
}

/// The cache answers only for headers it validated, byte for byte: a storage
/// re-initialised with another geometry, a damaged header or a remapped region are
/// validated again.
#[test]
fn the_header_cache_trusts_only_identical_bytes() {
    let cache = Cache::default();
    let a = Layout::new(10, 100).unwrap();
    let b = Layout::with_version(VERSION_1, 12, 100).unwrap();
    let mut buf = buffer(&a, 100);
    Storage::format(Mem::from_words(&mut buf), a).unwrap();
    let s = Storage::open_cached(Mem::from_words(&mut buf), &cache).unwrap();
    assert_eq!(*s.layout(), a);
    assert_eq!(s.store(&[1; 10]), Ok(Stored::At(0)));
    assert_eq!(cache.len(), 1);
    // Another geometry in the same memory.
    Storage::format(Mem::from_words(&mut buf), b).unwrap();
    let s = Storage::open_cached(Mem::from_words(&mut buf), &cache).unwrap();
    assert_eq!((*s.layout(), *s.check()), (b, Check::V1));
    assert_eq!(s.store(&[1; 10]), Err(BlockError::BadSize));
    assert_eq!(cache.len(), 2);
    // Any change to the header is seen, cache or not.
    for i in 8..64 {
        let mut copy = buf.clone();
        copy[i / 8] ^= 1 << (i % 8 * 8);
        let e = Storage::open_cached(Mem::from_words(&mut copy), &cache).err();
        assert_eq!(e, Some(BlockError::Corrupt), "byte {i}");
    }
    let mut copy = buf.clone();
    copy[0] ^= 1;
    let e = Storage::open_cached(Mem::from_words(&mut copy), &cache).err();
    assert_eq!(e, Some(BlockError::NotInitialized));
    // A region too short for the bitmap is refused even with a known header.
    let e = Storage::open_cached(Mem::from_words(&mut buf[..10]), &cache).err();
    assert_eq!(e, Some(BlockError::Corrupt));
    // Back to the first geometry: found again, not added twice.
    Storage::format(Mem::from_words(&mut buf), a).unwrap();
    assert!(Storage::open_cached(Mem::from_words(&mut buf), &cache).is_ok());
    assert_eq!(cache.len(), 2);
    // Past its size the cache stops remembering but keeps answering right.
    for bs in 20..40 {
        let l = Layout::new(bs, 100).unwrap();
        let mut buf = buffer(&l, 1);
        Storage::format(Mem::from_words(&mut buf), l).unwrap();
        let s = Storage::open_cached(Mem::from_words(&mut buf), &cache).unwrap();
        assert_eq!(*s.layout(), l);
    }
    assert_eq!(cache.len(), 8);
}

/// A storage written as version 1 or 2 keeps its version on a mapping: init keeps it, and
/// new blocks get markers of that version.
#[test]
fn old_version_files_keep_their_version() {
    for version in [VERSION_1, VERSION_2] {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("old");
        let lay = Layout::with_version(version, 100, 1000).unwrap();
        let mut buf = buffer(&lay, 10);
        {
            let s = fresh(&mut buf, lay);
            for i in 0..10u8 {
                assert_eq!(s.store(&[i; 100]), Ok(Stored::At(u64::from(i))));
            }
            assert_eq!(s.free(4), Ok(true));
        }
        let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
        std::fs::write(&p, &bytes).unwrap();
        let m = Mapping::open(Some(&p), 0, 0, opts(&["read", "write", "shared"])).unwrap();
        let c = Cache::default();
        assert_eq!(init(&m, &c, 100, None), Ok(lay));
        assert_eq!(read(&m, &c, 3, |b| b.to_vec()), Ok(Some(vec![3; 100])));
        assert_eq!(store(&m, &c, &[42; 100], Growth::Allowed), Ok(4));
        for _ in 0..20 {
            store(&m, &c, &[43; 100], Growth::Allowed).unwrap();
        }
        assert_eq!(free(&m, &c, 5), Ok(true));
        drop(m);
        let mut after: Vec<u64> = std::fs::read(&p)
            .unwrap()
            .chunks_exact(8)
            .map(|w| u64::from_ne_bytes(w.try_into().unwrap()))
            .collect();
        let s = Storage::open(Mem::from_words(&mut after)).unwrap();
        assert_eq!(s.layout().version, version);
        let m4 = s.marker(4).unwrap().load(Ordering::SeqCst);
        assert_eq!(m4, Check::of(&lay).marker(4, &[42; 100]));
        if version == VERSION_1 {
            assert_eq!(m4, commit_marker(4, &[42; 100]));
        }
        let got = all_blocks(&s);
        assert_eq!(got.len(), 9 + 20);
        assert_eq!(got[0], (0, vec![0; 100]));
    }
}

/// Reading into a copy gives what `read` gives, for both versions; a store whose data
/// lies in the region itself (a direct binary), overlapping its own slot or not, stores
/// exactly those bytes.
#[test]
fn copies_and_stores_from_the_region_itself() {
    let mut rng = rng(8);
    for version in [VERSION_1, VERSION_2, VERSION_3] {
        let lay = Layout::with_version(version, 300, 64).unwrap();
        let mut buf = buffer(&lay, 64);
        let s = fresh(&mut buf, lay);
        let mut model = BTreeMap::new();
        for a in 0..20 {
            let d = block(&mut rng, &lay);
            assert_eq!(s.store(&d), Ok(Stored::At(a)));
            model.insert(a, d);
        }
        // Each call of the allocator must give fresh memory (a new binary in the NIF).
        let fresh_buf = |n: usize| {
            let b: &'static mut [u8] = Box::leak(vec![0u8; n].into_boxed_slice());
            let p = b.as_ptr() as usize;
            (p, b)
        };
        let view = |p: usize| {
            // SAFETY: `p` is a leaked 300-byte buffer from `fresh_buf`, never freed.
            unsafe { std::slice::from_raw_parts(p as *const u8, 300) }.to_vec()
        };
        for a in 0..25 {
            let got = s.read_copy(a, fresh_buf).unwrap();
            assert_eq!(got.map(view).as_ref(), model.get(&a));
        }
        // Damage one slot: the copy is refused (a version 3 free, which trusts the
        // marker, frees it; older versions see no block there either).
        let off = lay.slot_off(5).unwrap() + 8 + 17;
        let byte = s.mem.bytes(off, 1).unwrap()[0];
        s.mem.write(off, &[byte ^ 1]).unwrap();
        assert_eq!(s.read_copy(5, fresh_buf), Ok(None));
        assert_eq!(s.read(5, |b| b.to_vec()), Ok(None));
        assert_eq!(s.free(5), Ok(version == VERSION_3));
        s.repair(0, u64::MAX).unwrap();
        // Sources inside the region: slot 3's bytes, and bytes straddling slot 5's own
        // (the lowest free slot now), shifted by a few bytes.
        for (src_off, want_addr) in [(lay.slot_off(3).unwrap() + 8, 5), (off - 17 + 4, 20)] {
            let src = s.mem.bytes(src_off, 300).unwrap().to_vec();
            let data = s.mem.bytes(src_off, 300).unwrap();
            assert_eq!(s.store(data), Ok(Stored::At(want_addr)));
            assert_eq!(s.read(want_addr, |b| b.to_vec()), Ok(Some(src)));
        }
    }
}
