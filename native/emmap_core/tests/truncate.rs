//! `truncate`, `allocate` and `stat`: the file-like size operations on a mapping.

use emmap_core::{Error, Mapping, Options, Whence};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn opts(items: &[&str]) -> Options {
    let mut o = Options::default();
    for i in items {
        o.apply(i, None).unwrap();
    }
    o
}

fn file_with(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8 + 1).collect()
}

#[test]
fn shrinking_a_shared_file_cuts_it_and_old_pointers_read_zeros() {
    let d = tempfile::tempdir().unwrap();
    let data = pattern(5 * 4096 + 100);
    let p = file_with(d.path(), "f", &data);
    let m = Mapping::open(Some(&p), 0, 0, opts(&["read", "write", "shared", "direct"])).unwrap();
    // A direct pointer into the last page, as a binary handed out earlier would hold.
    let (ptr, n) = m.pread_direct(5 * 4096, 100).unwrap().unwrap();
    assert_eq!(n, 100);
    assert_eq!(m.truncate(4096 + 10), Ok(4096 + 10));
    assert_eq!(m.size(), Ok(4096 + 10));
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 4096 + 10);
    assert_eq!(m.pread(4096 + 10, 1, |b| b.to_vec()), Ok(None));
    assert_eq!(m.pwrite(4096 + 5, b"xxxxxx"), Err(Error::Einval));
    // SAFETY: the handle is alive and never unmaps while direct binaries may exist.
    let tail = unsafe { std::slice::from_raw_parts(ptr, n) };
    assert!(tail.iter().all(|&b| b == 0), "a detached page reads zeros");
    // Growing again gives zeros past the cut, in memory and in the file.
    assert_eq!(m.truncate(3 * 4096), Ok(3 * 4096));
    let now = m.pread(0, 3 * 4096, |b| b.to_vec()).unwrap().unwrap();
    assert_eq!(&now[..4096 + 10], &data[..4096 + 10]);
    assert!(now[4096 + 10..].iter().all(|&b| b == 0));
    m.pwrite(3 * 4096 - 3, b"end").unwrap();
    m.sync(true, false).unwrap();
    let disk = std::fs::read(&p).unwrap();
    assert_eq!(disk.len(), 3 * 4096);
    assert_eq!(&disk[3 * 4096 - 3..], b"end");
    assert_eq!(&disk[..4096 + 10], &data[..4096 + 10]);
}

#[test]
fn truncate_to_zero_and_back() {
    let d = tempfile::tempdir().unwrap();
    let p = file_with(d.path(), "z", b"some bytes");
    let m = Mapping::open(Some(&p), 0, 0, opts(&["read", "write", "shared"])).unwrap();
    assert_eq!(m.truncate(0), Ok(0));
    assert_eq!(m.size(), Ok(0));
    assert_eq!(m.position(Whence::Eof, 0), Ok(0));
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
    assert_eq!(
        m.resize(0),
        Ok(4096),
        "resize/1 grows an empty mapping by a page"
    );
    m.pwrite(0, b"again").unwrap();
    drop(m);
    assert_eq!(&std::fs::read(&p).unwrap()[..5], b"again");
}

#[test]
fn truncate_is_refused_where_it_would_hurt() {
    let d = tempfile::tempdir().unwrap();
    let p = file_with(d.path(), "r", &pattern(8192));
    // Another handle maps the same file: cutting it could crash that one.
    let a = Mapping::open(Some(&p), 0, 0, opts(&["read", "write", "shared"])).unwrap();
    let b = Mapping::open(Some(&p), 0, 0, opts(&["read", "private"])).unwrap();
    assert_eq!(a.truncate(10), Err(Error::Os(libc::EBUSY)));
    assert_eq!(a.size(), Ok(8192));
    b.close();
    assert_eq!(a.truncate(10), Ok(10));
    drop(a);
    // A window that does not reach the end of the file.
    let p = file_with(d.path(), "w", &pattern(8192));
    let w = Mapping::open(Some(&p), 100, 1000, opts(&["read", "write", "shared"])).unwrap();
    assert_eq!(w.truncate(10), Err(Error::Einval));
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 8192);
    drop(w);
    // fixed_size: only a truncate that changes nothing.
    let f = Mapping::open(
        Some(&p),
        0,
        0,
        opts(&["read", "write", "shared", "fixed_size"]),
    )
    .unwrap();
    assert_eq!(f.truncate(8192), Ok(8192));
    assert_eq!(f.truncate(10), Err(Error::FixedSize));
    assert_eq!(f.allocate(8100, 100), Err(Error::FixedSize));
    assert_eq!(f.allocate(0, 100), Ok(()));
    drop(f);
    // Read-only.
    let r = Mapping::open(Some(&p), 0, 0, opts(&["read", "shared"])).unwrap();
    assert_eq!(r.truncate(10), Err(Error::Eacces));
    assert_eq!(r.allocate(0, 1), Err(Error::Eacces));
    drop(r);
    assert_eq!(std::fs::read(&p).unwrap(), pattern(8192));
}

#[test]
fn private_and_anonymous_mappings_shrink_in_memory_only() {
    let d = tempfile::tempdir().unwrap();
    let p = file_with(d.path(), "p", &pattern(3000));
    let m = Mapping::open(Some(&p), 0, 0, opts(&["read", "write", "private"])).unwrap();
    m.pwrite(0, b"changed").unwrap();
    assert_eq!(m.truncate(5), Ok(5));
    assert_eq!(m.pread(0, 100, |b| b.to_vec()), Ok(Some(b"chang".to_vec())));
    assert_eq!(m.truncate(9), Ok(9));
    assert_eq!(
        m.pread(0, 100, |b| b.to_vec()),
        Ok(Some(b"chang\0\0\0\0".to_vec()))
    );
    drop(m);
    assert_eq!(std::fs::read(&p).unwrap(), pattern(3000));
    let a = Mapping::open(None, 0, 100, opts(&["anon", "read", "write", "shared"])).unwrap();
    a.pwrite(0, &pattern(100)).unwrap();
    assert_eq!(a.truncate(50), Ok(50));
    assert_eq!(a.truncate(200), Ok(200));
    let v = a.pread(0, 200, |b| b.to_vec()).unwrap().unwrap();
    assert_eq!(&v[..50], &pattern(100)[..50]);
    assert!(v[50..].iter().all(|&b| b == 0));
}

#[test]
fn allocate_grows_and_reserves() {
    let d = tempfile::tempdir().unwrap();
    let p = file_with(d.path(), "a", b"0123456789");
    let m = Mapping::open(Some(&p), 0, 0, opts(&["read", "write", "shared"])).unwrap();
    assert_eq!(m.allocate(0, 0), Err(Error::Einval));
    assert_eq!(m.allocate(u64::MAX, 2), Err(Error::Einval));
    assert_eq!(m.allocate(2, 3), Ok(()));
    assert_eq!(m.size(), Ok(10));
    assert_eq!(m.allocate(5, 1 << 20), Ok(()));
    assert_eq!(m.size(), Ok(5 + (1 << 20)));
    let meta = std::fs::metadata(&p).unwrap();
    assert_eq!(meta.len(), 5 + (1 << 20));
    use std::os::unix::fs::MetadataExt;
    assert!(
        meta.blocks() * 512 >= 1 << 20,
        "blocks are reserved: {}",
        meta.blocks()
    );
    let s = m.stat().unwrap().unwrap();
    assert_eq!(s.ino(), meta.ino());
    m.close();
    assert_eq!(m.allocate(0, 1), Err(Error::Closed));
    assert_eq!(m.truncate(1), Err(Error::Closed));
    assert_eq!(m.stat().unwrap_err(), Error::Closed);
}

#[test]
fn readers_never_fault_while_a_nolock_mapping_is_cut_and_regrown() {
    let d = tempfile::tempdir().unwrap();
    let p = file_with(d.path(), "c", &pattern(64 * 4096));
    let m = Arc::new(
        Mapping::open(Some(&p), 0, 0, opts(&["read", "write", "shared", "nolock"])).unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|i| {
            let (m, stop) = (m.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let pos = (n * 4093 + i * 7) % (64 * 4096);
                    let _ = m.pread(pos, 4096, |b| b.iter().map(|&x| x as u64).sum::<u64>());
                    let _ = m.pwrite(pos, b"w");
                    n += 1;
                }
                n
            })
        })
        .collect();
    for round in 0..200u64 {
        let cut = (round * 7919) % (64 * 4096);
        m.truncate(cut).unwrap();
        m.truncate(64 * 4096).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 64 * 4096);
}

#[test]
fn opening_with_truncate_is_refused_while_the_file_is_mapped() {
    let d = tempfile::tempdir().unwrap();
    let p = file_with(d.path(), "t", &pattern(4096));
    let a = Mapping::open(Some(&p), 0, 0, opts(&["read", "shared"])).unwrap();
    let t = opts(&["read", "write", "shared", "truncate"]);
    let e = Mapping::open(Some(&p), 0, 100, t.clone()).unwrap_err();
    assert_eq!(e, Error::Os(libc::EBUSY));
    assert_eq!(
        a.pread(4000, 10, |b| b.to_vec()).unwrap().unwrap().len(),
        10
    );
    drop(a);
    let b = Mapping::open(Some(&p), 0, 100, t).unwrap();
    assert_eq!(b.size(), Ok(100));
}
