//! Queue tests: the bytes a push writes, growth, the repairs at open, crafted and damaged
//! headers and frames (never a panic, never a write), a model test against `VecDeque`,
//! and several threads sharing one handle.
//!
//! Terms are opaque to the core; these tests encode a "term" as a 4-byte little-endian
//! length and that many bytes, which, like the external term format, says by itself how
//! many bytes it uses.

use super::*;
use crate::options::Options;
use proptest::prelude::*;
use std::collections::VecDeque;

fn opts(items: &[&str]) -> Options {
    let mut o = Options::default();
    for i in items {
        o.apply(i, None).unwrap();
    }
    o
}

fn enc(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

/// Decodes `enc`'s format from the start of `b`: the payload and the bytes used.
fn dec_raw(b: &[u8]) -> Option<(Vec<u8>, usize)> {
    let n = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let p = b.get(4..4usize.checked_add(n)?)?;
    Some((p.to_vec(), 4 + n))
}

fn dec(b: &[u8]) -> Option<Decoded<Vec<u8>>> {
    dec_raw(b).map(|(v, n)| Decoded::Term(v, n))
}

fn term(d: Decoded<Vec<u8>>) -> Vec<u8> {
    match d {
        Decoded::Term(v, _) | Decoded::Unchecked(v) => v,
    }
}

/// The frame of an encoded term, by the format's rule, written out independently.
fn spec_frame(term: &[u8]) -> Vec<u8> {
    let sz0 = term.len() + 8;
    let pad = sz0 % 8;
    let sz = (sz0 + pad) as u32;
    let mut v = sz.to_be_bytes().to_vec();
    v.extend_from_slice(term);
    v.extend(std::iter::repeat_n(0, pad));
    v.extend_from_slice(&sz.to_be_bytes());
    v
}

fn spec_header(size: u32, head: u32, tail: u32, next: u32) -> Vec<u8> {
    [size, head, tail, next]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect()
}

/// A file of `size` bytes: header, body, zeros.
fn spec_file(size: u32, h: [u32; 4], body: &[u8]) -> Vec<u8> {
    let mut v = spec_header(h[0], h[1], h[2], h[3]);
    v.extend_from_slice(body);
    v.resize(size as usize, 0);
    v
}

struct File {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

fn file_with(bytes: &[u8]) -> File {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q");
    std::fs::write(&path, bytes).unwrap();
    File { _dir: dir, path }
}

fn open(f: &File, extra: &[&str]) -> Mapping {
    let mut o = vec!["read", "write", "shared"];
    o.extend_from_slice(extra);
    Mapping::open(Some(&f.path), 0, 0, opts(&o)).unwrap()
}

fn bytes(f: &File) -> Vec<u8> {
    std::fs::read(&f.path).unwrap()
}

/// Pops through `Locked::pop` (what the NIF uses), checking on a copy of the file's
/// state that `front` + `take` would have answered the same.
fn pop(q: &Locked<'_>, purge: bool) -> Result<Option<Vec<u8>>> {
    let two_steps = q.front();
    match q.pop(purge, u64::MAX, dec) {
        Ok(Popped::Empty) => {
            assert_eq!(two_steps, Ok(None));
            Ok(None)
        }
        Ok(Popped::Took(f, d)) => {
            assert_eq!(two_steps.map(|fr| fr.map(|fr| fr.frame)), Ok(Some(f)));
            Ok(Some(term(d)))
        }
        Ok(Popped::TooLarge) => unreachable!("no limit"),
        Err(e) => Err(e),
    }
}

fn all(q: &Locked<'_>) -> Result<Vec<Vec<u8>>> {
    let h = q.header()?;
    let mut out = vec![];
    let mut pos = h.head;
    while pos != h.tail {
        let f = q.frame_at(pos, h.tail)?;
        out.push(term(q.peek(f, dec)?));
        pos = f.end();
    }
    Ok(out)
}

fn header(size: u32, head: u32, tail: u32, next_tail: u32) -> Header {
    Header {
        size,
        head,
        tail,
        next_tail,
    }
}

#[test]
fn pushes_write_the_documented_bytes() {
    let f = file_with(&spec_file(4096, [4096, 16, 16, 16], &[]));
    let m = open(&f, &[]);
    let qu = Queue::default();
    let q = qu.lock(&m);
    q.attach().unwrap();
    let terms: Vec<Vec<u8>> = (0..20).map(|i| vec![i as u8; i * 7]).collect();
    let mut body = vec![];
    for t in &terms {
        q.push(&enc(t), Growth::Refused).unwrap();
        body.extend(spec_frame(&enc(t)));
    }
    let end = 16 + body.len() as u32;
    assert_eq!(q.header(), Ok(header(4096, 16, end, end)));
    drop(q);
    m.sync(true, false).unwrap();
    assert_eq!(bytes(&f), spec_file(4096, [4096, 16, end, end], &body));
    let q = qu.lock(&m);
    assert_eq!(all(&q), Ok(terms.clone()));
    assert_eq!(q.count(16, end, u64::MAX), Ok((20, end)));
    assert_eq!(q.count(16, end, 3).map(|r| r.0), Ok(3));
    // The newest, walking back.
    let b = q.back().unwrap().unwrap();
    assert_eq!(q.peek(b, dec).map(term), Ok(terms[19].clone()));
    for (i, t) in terms.iter().enumerate() {
        assert_eq!(pop(&q, true), Ok(Some(t.clone())));
        if i < 19 {
            assert!(q.header().unwrap().head > 16);
        }
    }
    assert_eq!(q.header(), Ok(header(4096, 16, 16, 16)));
    assert_eq!(pop(&q, true), Ok(None));
}

#[test]
fn pop_without_purge_leaves_head_and_purge_reclaims() {
    let m = Mapping::open(None, 0, 256, opts(&["anon", "write"])).unwrap();
    let qu = Queue::default();
    let q = qu.lock(&m);
    q.attach().unwrap();
    assert_eq!(q.header(), Ok(header(256, 16, 16, 16)));
    q.push(&enc(b"a"), Growth::Refused).unwrap();
    q.push(&enc(b"b"), Growth::Refused).unwrap();
    assert_eq!(q.purge(), Ok(false));
    assert_eq!(pop(&q, false), Ok(Some(b"a".to_vec())));
    assert_eq!(pop(&q, false), Ok(Some(b"b".to_vec())));
    assert_eq!(q.header(), Ok(header(256, 52, 52, 52))); // frames of 18 bytes
    assert_eq!(q.purge(), Ok(true));
    assert_eq!(q.header(), Ok(header(256, 16, 16, 16)));
    q.push(&enc(b"c"), Growth::Refused).unwrap();
    q.erase().unwrap();
    assert_eq!(q.header(), Ok(header(256, 16, 16, 16)));
}

#[test]
fn growth_follows_the_rule_and_fixed_size_is_full() {
    let mut o = opts(&["anon", "write"]);
    o.apply("max_inc_size", Some(3000)).unwrap();
    let m = Mapping::open(None, 0, 1000, o).unwrap();
    let qu = Queue::default();
    let q = qu.lock(&m);
    q.attach().unwrap();
    let t = enc(&[7; 892]); // a 904-byte frame
    assert_eq!(spec_frame(&t).len(), 904);
    assert_eq!(q.push(&t, Growth::Allowed), Ok(()));
    assert_eq!(q.header(), Ok(header(1000, 16, 920, 920)));
    // Needs growth: refused, nothing changes; allowed, it doubles.
    assert_eq!(q.push(&t, Growth::Refused), Err(QueueError::NeedsGrowth));
    assert_eq!(q.header(), Ok(header(1000, 16, 920, 920)));
    let mut sizes = vec![];
    for _ in 0..11 {
        q.push(&t, Growth::Allowed).unwrap();
        sizes.push(q.header().unwrap().size);
    }
    assert_eq!(
        sizes,
        // tails 1824, 2728, ... 10864: doubling to 4000, then 3000 at a time
        [2000, 4000, 4000, 7000, 7000, 7000, 10_000, 10_000, 10_000, 10_000, 13_000]
    );
    assert_eq!(m.size().unwrap(), 13_000);
    assert_eq!(all(&q).unwrap().len(), 12);

    drop(q);
    let f = file_with(&spec_file(256, [256, 16, 16, 16], &[]));
    let m = open(&f, &["fixed_size"]);
    let q = qu.lock(&m);
    let mut n = 0;
    while q.push(&enc(b"0123456789"), Growth::Allowed).is_ok() {
        n += 1;
    }
    assert_eq!(n, 8);
    let full = q.header().unwrap();
    assert_eq!(q.push(&enc(b"x"), Growth::Allowed), Err(QueueError::Full));
    assert_eq!(q.push(&enc(b"x"), Growth::Refused), Err(QueueError::Full));
    assert_eq!(q.header(), Ok(full));
}

#[test]
fn the_4_gib_limit_is_full() {
    assert_eq!(frame_size(u32::MAX as usize), None);
    assert_eq!(frame_size(0), Some(8));
    assert_eq!(frame_size(3), Some(14));
    assert_eq!(frame_size(4), Some(16));
    // A segment of 4 GiB - 1 bytes (anonymous, only the touched pages are real).
    let m = Mapping::open(None, 0, MAX_OFFSET, opts(&["anon", "write", "noreserve"])).unwrap();
    let qu = Queue::default();
    let q = qu.lock(&m);
    q.attach().unwrap();
    let tail = u32::MAX - 33;
    mem::with_mem(&m, |mem| put(mem, 8, tail, tail)).unwrap();
    assert_eq!(q.push(&enc(&[1; 20]), Growth::Allowed), Ok(())); // a 32-byte frame fits
    assert_eq!(q.push(&enc(&[]), Growth::Allowed), Err(QueueError::Full));
    assert_eq!(
        q.header(),
        Ok(header(u32::MAX, 16, u32::MAX - 1, u32::MAX - 1))
    );
    let back = q.back().unwrap().unwrap();
    assert_eq!(q.peek(back, dec).map(term), Ok(vec![1; 20]));
}

#[test]
fn read_only_handles_cannot_change_the_queue() {
    let f = file_with(&spec_file(512, [512, 16, 16, 16], &[]));
    {
        let m = open(&f, &[]);
        Queue::default()
            .lock(&m)
            .push(&enc(b"kept"), Growth::Refused)
            .unwrap();
    }
    let before = bytes(&f);
    let m = Mapping::open(Some(&f.path), 0, 0, opts(&["read", "shared"])).unwrap();
    let qu = Queue::default();
    let q = qu.lock(&m);
    let eacces = Some(QueueError::Map(Error::Eacces));
    assert_eq!(q.push(&enc(b"x"), Growth::Allowed).err(), eacces);
    assert_eq!(pop(&q, true).err(), eacces);
    assert_eq!(q.purge().err(), eacces);
    assert_eq!(q.erase().err(), eacces);
    assert_eq!(all(&q), Ok(vec![b"kept".to_vec()]));
    drop(q);
    assert_eq!(bytes(&f), before);
    m.close();
    assert_eq!(qu.lock(&m).header(), Err(QueueError::Map(Error::Closed)));
}

#[test]
fn attach_repairs_what_interrupted_operations_leave() {
    let fr = spec_frame(&enc(b"hello"));
    let body: Vec<u8> = [fr.clone(), fr.clone()].concat();
    let t = 16 + body.len() as u32;
    let cases: Vec<(&str, Vec<u8>, Header, usize)> = vec![
        (
            "size below file",
            spec_file(1024, [512, 16, t, t], &body),
            header(1024, 16, t, t),
            2,
        ),
        (
            "next tail ahead",
            spec_file(1024, [1024, 16, t, t + 100], &body),
            header(1024, 16, t, t),
            2,
        ),
        (
            "purge half done",
            spec_file(1024, [1024, t, 16, 16], &body),
            header(1024, 16, 16, 16),
            0,
        ),
        ("all zero", vec![0; 1024], header(1024, 16, 16, 16), 0),
        (
            "half header",
            spec_file(1024, [1024, 16, 0, 0], &[]),
            header(1024, 16, 16, 16),
            0,
        ),
    ];
    for (name, file, want, n) in cases {
        let f = file_with(&file);
        let m = open(&f, &[]);
        let qu = Queue::default();
        let q = qu.lock(&m);
        assert_eq!(q.attach(), Ok(()), "{name}");
        assert_eq!(q.header(), Ok(want), "{name}");
        assert_eq!(all(&q).map(|v| v.len()), Ok(n), "{name}");
        q.push(&enc(b"more"), Growth::Refused).unwrap();
    }
}

#[test]
fn attach_refuses_corrupt_files_and_changes_nothing() {
    let fr = spec_frame(&enc(b"hello"));
    let body: Vec<u8> = [fr.clone(), fr.clone()].concat();
    let cases = vec![
        spec_file(1024, [1024, 8, 64, 64], &body),
        spec_file(1024, [1024, 64, 40, 40], &body),
        spec_file(1024, [1024, 16, 64, 40], &body),
        spec_file(1024, [1024, 16, 64, 2000], &body),
        spec_file(1024, [1024, 16, 2000, 2000], &body),
        spec_file(1024, [2048, 16, 64, 64], &body),
        spec_file(1024, [1024, 0, 0, 0], &body),
        spec_file(1024, [1024, 16, 0, 0], &body),
        vec![0xFF; 1024],
        b"not a queue\n".repeat(100),
        vec![0, 0, 4, 0, 0, 0],
        spec_file(1024, [u32::MAX, 16, 64, 64], &body),
    ];
    for (i, file) in cases.into_iter().enumerate() {
        let f = file_with(&file);
        let m = open(&f, &[]);
        let qu = Queue::default();
        assert_eq!(
            qu.lock(&m).attach(),
            Err(QueueError::CorruptHeader),
            "case {i}"
        );
        drop(m);
        assert_eq!(bytes(&f), file, "case {i}");
    }
}

/// Frames that lie about their size, or whose term does not decode, are corrupt for
/// every reader, and nothing is written.
#[test]
fn damaged_frames_are_reported_and_never_consumed() {
    let good = spec_frame(&enc(b"hello"));
    let len = good.len() as u32;
    let inner = &good[4..good.len() - 4];
    let with = |lead: u32, mid: &[u8], trail: u32| {
        [&lead.to_be_bytes()[..], mid, &trail.to_be_bytes()[..]].concat()
    };
    let bad = [
        with(4, inner, 4),
        with(0, inner, 0),
        with(1000, inner, 1000),
        with(len, inner, len - 8),
        with(len, &enc(b"hel")[..], len), // decodes, but uses fewer bytes than the frame
        with(len, &vec![0xFF; inner.len()], len), // does not decode
    ];
    for (i, frame) in bad.iter().enumerate() {
        let mut frame = frame.clone();
        frame.resize(good.len().max(frame.len()), 0);
        let body = [frame.clone(), good.clone()].concat();
        let t = 16 + body.len() as u32;
        let f = file_with(&spec_file(1024, [1024, 16, t, t], &body));
        let m = open(&f, &[]);
        let qu = Queue::default();
        let q = qu.lock(&m);
        let before = bytes(&f);
        assert_eq!(pop(&q, true), Err(QueueError::CorruptHeader), "case {i}");
        assert_eq!(pop(&q, false), Err(QueueError::CorruptHeader), "case {i}");
        assert_eq!(all(&q), Err(QueueError::CorruptHeader), "case {i}");
        drop(q);
        assert_eq!(bytes(&f), before, "case {i}");
    }
}

/// A decoder that cannot check a term gets it back unchecked, and nothing is removed
/// until `advance`.
/// Terms on both sides of the size up to which a frame is copied to the stack (and far
/// past it) come back whole, from pops and peeks.
#[test]
fn small_and_large_frames_decode_from_their_copies() {
    let f = file_with(&spec_file(64, [64, 16, 16, 16], &[]));
    let m = open(&f, &[]);
    let qu = Queue::default();
    let q = qu.lock(&m);
    let sizes = [
        0, 1, 500, 507, 508, 509, 4096, 8180, 8183, 8184, 8185, 8192, 20_000, 100_000,
    ];
    let payloads: Vec<Vec<u8>> = sizes
        .iter()
        .map(|&n| (0..n).map(|i| (i * 7 + n) as u8).collect())
        .collect();
    for p in &payloads {
        q.push(&enc(p), Growth::Allowed).unwrap();
    }
    assert_eq!(all(&q), Ok(payloads.clone()));
    for p in &payloads {
        assert_eq!(pop(&q, true), Ok(Some(p.clone())));
    }
    assert_eq!(pop(&q, true), Ok(None));
}

/// A pop with a limit below the oldest message's frame does nothing; an unchecked term is
/// handed out and not removed.
#[test]
fn pops_over_the_limit_or_unchecked_change_nothing() {
    let f = file_with(&spec_file(512, [512, 16, 16, 16], &[]));
    let m = open(&f, &[]);
    let qu = Queue::default();
    let q = qu.lock(&m);
    q.push(&enc(b"twenty bytes of term"), Growth::Refused)
        .unwrap();
    let before = q.raw_header().unwrap();
    let size = q.front().unwrap().unwrap().frame.size;
    assert_eq!(q.pop(true, u64::from(size) - 1, dec), Ok(Popped::TooLarge));
    let got = q.pop(true, u64::MAX, |b| Some(Decoded::Unchecked(b.len())));
    assert!(matches!(got, Ok(Popped::Took(_, Decoded::Unchecked(_)))));
    assert_eq!(q.raw_header(), Ok(before));
    assert_eq!(pop(&q, true), Ok(Some(b"twenty bytes of term".to_vec())));
    assert_eq!(q.pop(true, 0, dec), Ok(Popped::Empty));
}

#[test]
fn unchecked_terms_are_not_committed() {
    let m = Mapping::open(None, 0, 4096, opts(&["anon", "write"])).unwrap();
    let qu = Queue::default();
    let q = qu.lock(&m);
    q.attach().unwrap();
    q.push(&enc(b"zipped"), Growth::Refused).unwrap();
    let before = q.header().unwrap();
    let front = q.front().unwrap().unwrap();
    let d = q.take(&front, true, |b| Some(Decoded::Unchecked(b.to_vec())));
    assert_eq!(d.map(term), Ok([enc(b"zipped"), vec![0; 2]].concat()));
    assert_eq!(q.header(), Ok(before));
    let (h, next) = (front.frame.start, front.frame.end());
    assert_eq!(q.advance(h, next, true), Ok(Advanced::Done));
    assert_eq!(q.header(), Ok(header(4096, 16, 16, 16)));
}

#[test]
fn advance_takes_only_the_current_front() {
    let m = Mapping::open(None, 0, 4096, opts(&["anon", "write"])).unwrap();
    let qu = Queue::default();
    let q = qu.lock(&m);
    q.attach().unwrap();
    for t in [b"a", b"b", b"c"] {
        q.push(&enc(t), Growth::Refused).unwrap();
    }
    let front = q.front().unwrap().unwrap();
    let (h, next) = (front.frame.start, front.frame.end());
    assert_eq!(q.advance(h, next + 1, false), Ok(Advanced::Moved));
    assert_eq!(q.advance(h + 1, next, false), Ok(Advanced::Moved));
    assert_eq!(q.advance(h, next, false), Ok(Advanced::Done));
    // The same message again: it is gone.
    assert_eq!(q.advance(h, next, false), Ok(Advanced::Moved));
    assert_eq!(all(&q), Ok(vec![b"b".to_vec(), b"c".to_vec()]));
    let f = q.front().unwrap().unwrap();
    let _ = pop(&q, false).unwrap();
    let last = q.front().unwrap().unwrap();
    assert_eq!(
        q.advance(last.frame.start, last.frame.end(), true),
        Ok(Advanced::Done)
    );
    assert_eq!(q.header(), Ok(header(4096, 16, 16, 16)));
    assert_eq!(
        q.advance(f.frame.start, f.frame.end(), true),
        Ok(Advanced::Moved)
    );
}

#[test]
fn threads_sharing_one_handle_take_every_message_once() {
    let m = Mapping::open(None, 0, 4096, opts(&["anon", "write"])).unwrap();
    let qu = Queue::default();
    qu.lock(&m).attach().unwrap();
    let per = 2000u32;
    let got: Vec<Vec<u32>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4u32)
            .map(|t| {
                let (m, qu) = (&m, &qu);
                s.spawn(move || {
                    let mut got = vec![];
                    for i in 0..per {
                        let v = (t << 16) | i;
                        qu.lock(m)
                            .push(&enc(&v.to_le_bytes()), Growth::Allowed)
                            .unwrap();
                        if i % 2 == 1 {
                            if let Some(b) = pop(&qu.lock(m), true).unwrap() {
                                got.push(u32::from_le_bytes(b.try_into().unwrap()));
                            }
                        }
                    }
                    got
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all_got: Vec<u32> = got.iter().flatten().copied().collect();
    let q = qu.lock(&m);
    while let Some(b) = pop(&q, true).unwrap() {
        all_got.push(u32::from_le_bytes(b.try_into().unwrap()));
    }
    // Each consumer saw each producer's messages in push order.
    for g in &got {
        for t in 0..4 {
            let mine: Vec<u32> = g.iter().filter(|v| *v >> 16 == t).copied().collect();
            assert!(mine.windows(2).all(|w| w[0] < w[1]));
        }
    }
    all_got.sort_unstable();
    let want: Vec<u32> = (0..4u32)
        .flat_map(|t| (0..per).map(move |i| (t << 16) | i))
        .collect();
    assert_eq!(all_got, want);
    assert_eq!(q.header().unwrap().tail, 16);
}

// ------------------------------------------------------------------------------ properties

#[derive(Debug, Clone)]
enum Op {
    Push(Vec<u8>),
    Pop(bool),
    PeekFront,
    PeekBack,
    Count,
    Purge,
    Erase,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..300).prop_map(Op::Push),
        3 => any::<bool>().prop_map(Op::Pop),
        1 => Just(Op::PeekFront),
        1 => Just(Op::PeekBack),
        1 => Just(Op::Count),
        1 => Just(Op::Purge),
        1 => Just(Op::Erase),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Every operation against a `VecDeque`, with the header the file must have after it.
    #[test]
    fn matches_a_model(size in 16u32..3000, fixed in any::<bool>(), ops in proptest::collection::vec(op(), 1..60)) {
        let mut o = opts(&["anon", "write"]);
        if fixed {
            o.apply("fixed_size", None).unwrap();
        }
        let m = Mapping::open(None, 0, u64::from(size), o).unwrap();
        let qu = Queue::default();
        let q = qu.lock(&m);
        q.attach().unwrap();
        let mut model: VecDeque<(Vec<u8>, u32)> = VecDeque::new();
        let (mut head, mut tail, mut sz) = (16u32, 16u32, size);
        for op in ops {
            match op {
                Op::Push(p) => {
                    let e = enc(&p);
                    let fs = frame_size(e.len()).unwrap();
                    let r = q.push(&e, Growth::Allowed);
                    if tail + fs <= sz {
                        prop_assert_eq!(r, Ok(()));
                    } else if fixed {
                        prop_assert_eq!(r, Err(QueueError::Full));
                        continue;
                    } else {
                        prop_assert_eq!(r, Ok(()));
                        sz = growth::target(u64::from(sz), u64::from(tail + fs), 64 << 20, 1).unwrap() as u32;
                    }
                    model.push_back((p, fs));
                    tail += fs;
                }
                Op::Pop(purge) => {
                    let r = pop(&q, purge).unwrap();
                    let want = model.pop_front();
                    prop_assert_eq!(r, want.as_ref().map(|w| w.0.clone()));
                    if let Some((_, fs)) = want {
                        head += fs;
                        if purge && model.is_empty() {
                            head = 16;
                            tail = 16;
                        }
                    }
                }
                Op::PeekFront => {
                    let r = q.front().unwrap().map(|f| term(q.peek(f.frame, dec).unwrap()));
                    prop_assert_eq!(r, model.front().map(|w| w.0.clone()));
                }
                Op::PeekBack => {
                    let r = q.back().unwrap().map(|f| term(q.peek(f, dec).unwrap()));
                    prop_assert_eq!(r, model.back().map(|w| w.0.clone()));
                }
                Op::Count => {
                    prop_assert_eq!(q.count(head, tail, u64::MAX), Ok((model.len() as u64, tail)));
                }
                Op::Purge => {
                    let empty = model.is_empty();
                    prop_assert_eq!(q.purge(), Ok(empty));
                    if empty {
                        head = 16;
                        tail = 16;
                    }
                }
                Op::Erase => {
                    q.erase().unwrap();
                    model.clear();
                    head = 16;
                    tail = 16;
                }
            }
            prop_assert_eq!(q.header(), Ok(header(sz, head, tail, tail)));
        }
    }

    /// Any header over any bytes: every operation answers (mostly `corrupt_header`), none
    /// panics or reads outside the mapping, and the ones that fail write nothing.
    #[test]
    fn crafted_files_never_panic(
        h in proptest::array::uniform4(prop_oneof![0u32..64, 0u32..600, any::<u32>()]),
        body in proptest::collection::vec(prop_oneof![Just(0u8), any::<u8>(), 0u8..16], 0..600),
        pos in 0u32..700,
        limit in 0u32..700,
    ) {
        let file = spec_file(16 + body.len() as u32, h, &body);
        let f = file_with(&file);
        let m = open(&f, &[]);
        let qu = Queue::default();
        let q = qu.lock(&m);
        let same = |b: &Vec<u8>| bytes(&f) == *b;
        let before = bytes(&f);
        let r = q.attach();
        prop_assert!(matches!(r, Ok(()) | Err(QueueError::CorruptHeader)));
        prop_assert!(r.is_ok() || same(&before));
        let _ = q.raw_header();
        let _ = q.frame_at(pos, limit).map(|fr| q.peek(fr, dec));
        let _ = q.frame_before(pos, limit).map(|fr| q.peek(fr, dec));
        let _ = q.count(pos, limit, 1000);
        let before = bytes(&f);
        let r = pop(&q, true);
        prop_assert!(r.is_ok() || same(&before));
        let before = bytes(&f);
        let r = q.advance(pos, limit, true);
        prop_assert!(matches!(r, Ok(Advanced::Done)) || same(&before));
        let before = bytes(&f);
        let r = q.push(&enc(&body[..body.len().min(40)]), Growth::Refused);
        prop_assert!(r.is_ok() || same(&before));
        let _ = all(&q);
        let _ = q.back();
        let _ = q.purge();
        q.erase().unwrap();
        q.push(&enc(b"fresh"), Growth::Allowed).unwrap();
        prop_assert_eq!(all(&q), Ok(vec![b"fresh".to_vec()]));
    }
}
