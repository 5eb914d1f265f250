use emmap_core::atomics::Op;
use emmap_core::{Error, Line, Mapping, Options, Whence};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

fn opts(items: &[&str]) -> Options {
    let mut o = Options::default();
    for i in items {
        o.apply(i, None).unwrap();
    }
    o
}

fn file_with(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn read_write_round_trip_and_bounds() {
    let d = tempfile::tempdir().unwrap();
    let p = file_with(d.path(), "a", b"hello world!");
    let m = Mapping::open(Some(&p), 0, 0, opts(&["read", "write", "shared"])).unwrap();
    assert_eq!(m.size().unwrap(), 12);
    assert_eq!(
        m.pread(6, 5, |b| b.to_vec()).unwrap(),
        Some(b"world".to_vec())
    );
    assert_eq!(
        m.pread(10, 100, |b| b.to_vec()).unwrap(),
        Some(b"d!".to_vec())
    );
    assert_eq!(m.pread(12, 1, |b| b.to_vec()).unwrap(), None);
    assert_eq!(m.pwrite(0, b"HELLO").unwrap(), ());
    assert_eq!(m.pwrite(10, b"xyz"), Err(Error::Einval));
    assert_eq!(m.pwrite(u64::MAX, b"x"), Err(Error::Einval));
    m.sync(true, false).unwrap();
    drop(m);
    assert_eq!(std::fs::read(&p).unwrap(), b"HELLO world!");
}

#[test]
fn read_only_mapping_refuses_writes_and_atomics() {
    let d = tempfile::tempdir().unwrap();
    let p = file_with(d.path(), "ro", &[0u8; 16]);
    let m = Mapping::open(Some(&p), 0, 0, opts(&["shared"])).unwrap();
    assert_eq!(m.pwrite(0, b"x"), Err(Error::Eacces));
    assert_eq!(m.atomic(0, Op::Add, 1), Err(Error::Eacces));
    assert_eq!(m.atomic_load(0), Ok(0));
}

#[test]
fn new_files_need_create_and_a_size_and_get_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("new");
    assert_eq!(
        Mapping::open(Some(&p), 0, 8, opts(&["write"]))
            .unwrap_err()
            .atom(),
        "enoent"
    );
    assert_eq!(
        Mapping::open(Some(&p), 0, 0, opts(&["create", "write"])).unwrap_err(),
        Error::Einval
    );
    let m = Mapping::open(Some(&p), 0, 8, opts(&["create", "write", "shared"])).unwrap();
    assert!(!m.info().exist);
    let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let m2 = Mapping::open(Some(&p), 0, 8, opts(&["create", "write", "shared"])).unwrap();
    assert!(m2.info().exist);
    assert_eq!(
        Mapping::open(Some(&p), 0, 4, opts(&["write"])).unwrap_err(),
        Error::Einval
    );
    assert_eq!(
        Mapping::open(Some(&p), 0, 16, opts(&["write"])).unwrap_err(),
        Error::Einval
    );
    let m3 = Mapping::open(Some(&p), 0, 16, opts(&["write", "fit"])).unwrap();
    assert_eq!(m3.size().unwrap(), 16);
    let m4 = Mapping::open(Some(&p), 0, 4, opts(&["fit"])).unwrap();
    assert_eq!(m4.size().unwrap(), 16);
}

#[test]
fn unaligned_offsets_map_the_right_bytes() {
    let d = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..10000u32).map(|i| (i % 251) as u8).collect();
    let p = file_with(d.path(), "off", &data);
    let m = Mapping::open(Some(&p), 4099, 100, opts(&[])).unwrap();
    assert_eq!(
        m.pread(0, 100, |b| b.to_vec()).unwrap().unwrap(),
        data[4099..4199].to_vec()
    );
    // address of byte 0 is 4099 mod page: atomics at pos 0 are misaligned
    assert_eq!(m.atomic_load(0), Err(Error::Alignment));
    assert_eq!(
        m.atomic_load(5),
        Ok(i64::from_ne_bytes(data[4104..4112].try_into().unwrap()))
    );
}

#[test]
fn read_advances_and_lines_split() {
    let d = tempfile::tempdir().unwrap();
    let p = file_with(d.path(), "l", b"ab\r\ncd\nef");
    let m = Mapping::open(Some(&p), 0, 0, opts(&[])).unwrap();
    let line = |m: &Mapping| m.read_line(1 << 16, |b, crlf| (b.to_vec(), crlf)).unwrap();
    assert_eq!(line(&m), Line::Found((b"ab\r\n".to_vec(), true)));
    assert_eq!(line(&m), Line::Found((b"cd\n".to_vec(), false)));
    assert_eq!(line(&m), Line::Found((b"ef".to_vec(), false)));
    assert_eq!(line(&m), Line::Eof);
    assert_eq!(m.position(Whence::Bof, 0), Ok(0));
    assert_eq!(m.read_line(2, |b, _| b.to_vec()).unwrap(), Line::TooLong);
    assert_eq!(m.read(3, |b| b.to_vec()).unwrap(), Some(b"ab\r".to_vec()));
    assert_eq!(m.position(Whence::Cur, -1), Ok(2));
    assert_eq!(m.position(Whence::Eof, -20), Err(Error::Einval));
    assert_eq!(m.position(Whence::Eof, 5), Ok(14));
    assert_eq!(m.read(1, |b| b.to_vec()).unwrap(), None);
}

#[test]
fn closed_handles_answer_closed() {
    let m = Mapping::open(None, 0, 4096, opts(&["anon", "write"])).unwrap();
    m.close();
    m.close();
    assert_eq!(m.pread(0, 1, |_| ()), Err(Error::Closed));
    assert_eq!(m.pwrite(0, b"x"), Err(Error::Closed));
    assert_eq!(m.atomic(0, Op::Add, 1), Err(Error::Closed));
    assert_eq!(m.resize(0), Err(Error::Closed));
    assert_eq!(m.sync(false, false), Err(Error::Closed));
    assert_eq!(m.position(Whence::Bof, 0), Err(Error::Closed));
    assert!(m.info().closed);
}

#[test]
fn direct_bytes_survive_close_and_resize() {
    for lock in [true, false] {
        let mut o = opts(&["anon", "write", "direct"]);
        o.apply(if lock { "lock" } else { "nolock" }, None).unwrap();
        let m = Mapping::open(None, 0, 4096, o).unwrap();
        m.pwrite(0, b"keep").unwrap();
        let (p, n) = m.pread_direct(0, 4).unwrap().unwrap();
        m.resize(1 << 20).unwrap();
        m.resize(1 << 24).unwrap();
        m.close();
        // SAFETY: direct slices stay valid until the mapping is dropped.
        assert_eq!(unsafe { std::slice::from_raw_parts(p, n) }, b"keep");
    }
}

#[test]
fn resize_keeps_contents_and_refuses_what_it_must() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("grow");
    let m = Mapping::open(Some(&p), 0, 4096, opts(&["create", "write", "shared"])).unwrap();
    m.pwrite(4000, b"tail").unwrap();
    assert_eq!(m.resize(0), Ok(8192));
    assert_eq!(m.resize(100), Err(Error::Einval));
    assert_eq!(m.pread(4000, 4, |b| b.to_vec()).unwrap().unwrap(), b"tail");
    m.pwrite(8188, b"end!").unwrap();
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 8192);
    let mut o = opts(&["anon", "write", "private"]);
    o.apply("fixed_size", None).unwrap();
    let f = Mapping::open(None, 0, 4096, o).unwrap();
    assert_eq!(f.resize(0), Err(Error::FixedSize));
    let mut o = opts(&["anon", "write"]);
    o.apply("max_inc_size", Some(4096)).unwrap();
    let g = Mapping::open(None, 0, 8192, o).unwrap();
    assert_eq!(g.resize(0), Ok(12288));
    let pv = Mapping::open(Some(&p), 0, 0, opts(&["write", "private"])).unwrap();
    pv.pwrite(0, b"mine").unwrap();
    assert_eq!(pv.resize(1 << 16), Ok(1 << 16));
    assert_eq!(pv.pread(0, 4, |b| b.to_vec()).unwrap().unwrap(), b"mine");
    assert_eq!(pv.pread(8188, 4, |b| b.to_vec()).unwrap().unwrap(), b"end!");
    assert_eq!(
        std::fs::metadata(&p).unwrap().len(),
        8192,
        "private growth leaves the file alone"
    );
}

#[test]
fn auto_unlink_removes_only_a_file_it_created() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("tmp");
    let m = Mapping::open(
        Some(&p),
        0,
        64,
        opts(&["create", "write", "shared", "auto_unlink"]),
    )
    .unwrap();
    let other = Mapping::open(Some(&p), 0, 64, opts(&["write", "shared", "auto_unlink"])).unwrap();
    drop(other);
    assert!(p.exists());
    m.close();
    assert!(!p.exists());
}

#[test]
fn fixed_address_never_replaces_existing_memory() {
    let a = Mapping::open(None, 0, 4096, opts(&["anon"])).unwrap();
    let addr = a.info().address as u64;
    let mut o = opts(&["anon"]);
    o.apply("address", Some(addr)).unwrap();
    assert_eq!(Mapping::open(None, 0, 4096, o).unwrap_err(), Error::Eexist);
}

#[test]
fn atomics_are_exact_across_threads() {
    let m = std::sync::Arc::new(
        Mapping::open(None, 0, 4096, opts(&["anon", "write", "shared"])).unwrap(),
    );
    let hs: Vec<_> = (0..4)
        .map(|_| {
            let m = m.clone();
            std::thread::spawn(move || {
                for _ in 0..50_000 {
                    m.atomic(8, Op::Add, 1).unwrap();
                }
            })
        })
        .collect();
    hs.into_iter().for_each(|h| h.join().unwrap());
    assert_eq!(m.atomic_load(8), Ok(200_000));
    assert_eq!(m.cas(8, 1, 2).unwrap(), Err(200_000));
    assert_eq!(m.cas(8, 200_000, 2).unwrap(), Ok(200_000));
}

/// `write` reserves its range with a compare-and-swap of the shared position: threads
/// writing through one handle each get bytes of their own, no advance is lost, and a write
/// that does not fit changes nothing.
#[test]
fn concurrent_writes_reserve_their_own_bytes() {
    for (threads, width) in [(2usize, 1usize), (4, 1), (4, 3)] {
        let per = 20_000;
        let total = threads * per * width;
        let m = std::sync::Arc::new(
            Mapping::open(None, 0, total as u64, opts(&["anon", "write", "shared"])).unwrap(),
        );
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let m = m.clone();
                std::thread::spawn(move || {
                    let rec = vec![b'a' + t as u8; width];
                    for _ in 0..per {
                        m.write(&rec).unwrap();
                    }
                })
            })
            .collect();
        hs.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(m.position(Whence::Cur, 0), Ok(total as u64));
        let all = m.pread(0, total as u64, |b| b.to_vec()).unwrap().unwrap();
        for t in 0..threads {
            let n = all.iter().filter(|&&c| c == b'a' + t as u8).count();
            assert_eq!(n, per * width, "bytes of thread {t} ({threads} x {width})");
        }
        // Every record is whole: no two writers shared a range.
        assert!(all.chunks(width).all(|r| r.iter().all(|&c| c == r[0])));
        // Full: a write that does not fit answers einval and leaves the position alone.
        assert_eq!(m.write(b"x"), Err(Error::Einval));
        assert_eq!(m.position(Whence::Cur, 0), Ok(total as u64));
    }
}

/// No position exceeds 2^63 - 1, whatever the base (`{eof, 2^63 - 1}` went past it), and
/// an empty write needs no room: `ok` at every file position, as for a raw file.
#[test]
fn positions_stop_at_the_largest_file_offset_and_empty_writes_fit_anywhere() {
    let max = i64::MAX as u64;
    let m = Mapping::open(None, 0, 4096, opts(&["anon", "write"])).unwrap();
    assert_eq!(m.position(Whence::Eof, i64::MAX), Err(Error::Einval));
    assert_eq!(m.position(Whence::Eof, i64::MAX - 4096), Ok(max));
    assert_eq!(m.position(Whence::Cur, 1), Err(Error::Einval));
    assert_eq!(m.position(Whence::Cur, 0), Ok(max));
    assert_eq!(m.write(b""), Ok(()));
    assert_eq!(m.write(b"x"), Err(Error::Einval));
    assert_eq!(m.position(Whence::Cur, 0), Ok(max));
    assert_eq!(m.position(Whence::Bof, i64::MAX), Ok(max));
    assert_eq!(m.position(Whence::Eof, 0), Ok(4096));
    assert_eq!(m.position(Whence::Cur, i64::MAX), Err(Error::Einval));
    assert_eq!(m.position(Whence::Cur, 0), Ok(4096));
    for pos in [0, 4095, 4096, 4097, 1 << 40, max] {
        assert_eq!(m.pwrite(pos, b""), Ok(()), "empty write at {pos}");
    }
    for pos in [max + 1, u64::MAX] {
        assert_eq!(
            m.pwrite(pos, b""),
            Err(Error::Einval),
            "empty write at {pos}"
        );
    }
    assert_eq!(m.pwrite(4096, b"x"), Err(Error::Einval));
    let ro = Mapping::open(None, 0, 4096, opts(&["anon"])).unwrap();
    assert_eq!(ro.pwrite(0, b""), Err(Error::Eacces));
    assert_eq!(ro.write(b""), Err(Error::Eacces));
}

/// A directory on tmpfs (whose files take any size up to 2^63 - 1 without using space,
/// so growing the file succeeds and only the mapping can fail), if there is one.
fn tmpfs_dir() -> Option<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    let c = std::ffi::CString::new("/dev/shm").unwrap();
    // SAFETY: statfs writes into `st`, a buffer of the right type; the path is a C string.
    let ok = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) } == 0;
    // SAFETY: initialised by the successful call above.
    let tmpfs = ok && unsafe { st.assume_init() }.f_type == libc::TMPFS_MAGIC;
    tmpfs.then(|| tempfile::tempdir_in(shm).ok()).flatten()
}

/// A grow that fails changes nothing: not the file's size on disk, not the mapping
/// (`resize(1 << 47)` on tmpfs used to leave a 2^47-byte file behind).
#[test]
fn failed_growth_leaves_file_and_mapping_as_they_were() {
    let Some(d) = tmpfs_dir() else {
        eprintln!("no tmpfs at /dev/shm: skipped");
        return;
    };
    let p = file_with(d.path(), "big", &[7u8; 4096]);
    for o in [&["write", "shared"][..], &["write", "shared", "nolock"][..]] {
        let m = Mapping::open(Some(&p), 0, 0, opts(o)).unwrap();
        assert!(m.resize(1 << 47).is_err());
        assert!(m.truncate(1 << 47).is_err());
        assert!(m.allocate(0, 1 << 47).is_err());
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 4096, "{o:?}");
        assert_eq!(m.size(), Ok(4096));
        assert_eq!(m.pread(4095, 1, |b| b.to_vec()).unwrap().unwrap(), [7]);
        m.pwrite(4095, b"x").unwrap();
        assert_eq!(m.resize(8192), Ok(8192));
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 8192);
        m.pwrite(8191, b"y").unwrap();
        m.close();
        std::fs::write(&p, [7u8; 4096]).unwrap();
    }
}

/// `allocate` whose disk reservation fails after the new mapping was made (past the
/// largest file on ext4: efbig; past the size of a tmpfs: enospc): the mapping is given
/// back and the file keeps its size.
#[test]
fn failed_allocation_leaves_file_and_mapping_as_they_were() {
    let d = tempfile::tempdir().unwrap();
    let p = file_with(d.path(), "alloc", &[5u8; 4096]);
    let m = Mapping::open(Some(&p), 0, 0, opts(&["write", "shared"])).unwrap();
    let e = m.allocate(4096, 1 << 45).unwrap_err();
    assert!(
        [
            Error::Os(libc::EFBIG),
            Error::Os(libc::ENOSPC),
            Error::Os(libc::ENOMEM)
        ]
        .contains(&e),
        "{e:?}"
    );
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 4096);
    assert_eq!(m.size(), Ok(4096));
    assert_eq!(
        m.pread(0, 4096, |b| b.to_vec()).unwrap().unwrap(),
        [5u8; 4096]
    );
    assert_eq!(m.allocate(4096, 4096), Ok(()));
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 8192);
    m.pwrite(8191, b"z").unwrap();
}

/// An `{address, A}` mapping with a neighbour right after it cannot grow (it may not
/// move): `enomem`, and the file is not grown either (it was: 4096 -> 8192 bytes).
#[test]
fn boxed_in_fixed_mapping_refuses_to_grow_and_changes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let p = file_with(d.path(), "boxed", &[3u8; 4096]);
    let page = 4096u64;
    let (m, _neighbour) = (0..20)
        .find_map(|_| {
            let probe = Mapping::open(None, 0, 4 * page, opts(&["anon"])).unwrap();
            let a = probe.info().address as u64;
            probe.close();
            drop(probe);
            let mut o = opts(&["write", "shared"]);
            o.apply("address", Some(a)).unwrap();
            let m = Mapping::open(Some(&p), 0, 0, o).ok()?;
            let mut n = opts(&["anon"]);
            n.apply("address", Some(a + page)).unwrap();
            let neighbour = Mapping::open(None, 0, page, n).ok()?;
            Some((m, neighbour))
        })
        .expect("a free address for the test");
    assert_eq!(m.resize(2 * page), Err(Error::Os(libc::ENOMEM)));
    assert_eq!(m.truncate(2 * page), Err(Error::Os(libc::ENOMEM)));
    assert_eq!(m.allocate(0, 2 * page), Err(Error::Os(libc::ENOMEM)));
    assert_eq!(std::fs::metadata(&p).unwrap().len(), page);
    assert_eq!(m.size(), Ok(page as usize));
    assert_eq!(
        m.pread(0, page, |b| b.to_vec()).unwrap().unwrap(),
        [3u8; 4096]
    );
}

/// `{address, A}` below `vm.mmap_min_addr` (page 0 included) is `einval`: running as root,
/// `{address, 1}` mapped the file at address 0, the null page, and `info` then reported
/// address 0 as for a closed handle.
#[test]
fn fixed_addresses_below_the_kernel_minimum_are_refused() {
    let min = emmap_core::region::min_fixed_address() as u64;
    for a in [1, 4095, min - 1] {
        let mut o = opts(&["anon", "write"]);
        o.apply("address", Some(a)).unwrap();
        assert_eq!(
            Mapping::open(None, 0, 4096, o).unwrap_err(),
            Error::Einval,
            "address {a:#x}"
        );
    }
    let m = Mapping::open(None, 0, 4096, opts(&["anon"])).unwrap();
    assert!(m.info().address as u64 >= min);
}

/// Files that cannot be mapped are `einval` at once, whatever the options: a FIFO (whose
/// read-only open waited for a writer, holding the calling thread), a socket, character
/// devices, `/proc` and `/sys` files. Each open runs in a thread, so a blocked one fails
/// the test (after a generous wait) instead of hanging it.
#[test]
fn special_files_are_refused_without_blocking() {
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads a C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let sock = d.path().join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let mut paths = vec![
        fifo.clone(),
        sock,
        "/dev/zero".into(),
        "/dev/null".into(),
        "/proc/self/status".into(),
        "/proc/self/maps".into(),
    ];
    let sys = Path::new("/sys/kernel/mm/transparent_hugepage/enabled");
    if sys.exists() {
        paths.push(sys.into());
    }
    let sets: [&[&str]; 4] = [
        &["read"],
        &["write", "shared"],
        &["write", "shared", "create"],
        &["write", "shared", "fit"],
    ];
    let (tx, rx) = std::sync::mpsc::channel();
    let mut n = 0;
    for p in &paths {
        for set in sets {
            let (tx, p) = (tx.clone(), p.clone());
            let o = opts(set);
            n += 1;
            std::thread::spawn(move || {
                let len = if o.create || o.fit { 4096 } else { 0 };
                let r = Mapping::open(Some(&p), 0, len, o).map(|_| ());
                let _ = tx.send((p, set, r));
            });
        }
    }
    for _ in 0..n {
        let (p, set, r) = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("an open of a special file blocked");
        assert_eq!(r, Err(Error::Einval), "{p:?} {set:?}");
    }
    // Nothing was created or changed.
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
}
