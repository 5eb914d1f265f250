//! A mapped file cut shorter by someone else: the SIGBUS handler keeps the process alive,
//! the calls say what happened, and every other SIGBUS goes where it went before.
//!
//! The handler is process-wide and cargo runs the tests of this file as threads of one
//! process: every test here that faults installs it first (`on()`), and nothing here
//! turns it off in this process. Scenarios that must end differently (killed by SIGBUS, a
//! handler installed before ours, the handler switched off) run in a child process: the
//! test runs this test binary again, filtered to itself, with `EMMAP_SIGBUS_CHILD` set.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use emmap_core::atomics::Op;
use emmap_core::growth::Growth;
use emmap_core::{blocks, sigbus, Error, Line, Mapping, Options, Whence};

const PAGE: u64 = 4096;
const SIZE: u64 = 16 * PAGE;

fn opts(items: &[&str]) -> Options {
    let mut o = Options::default();
    for i in items {
        o.apply(i, None).unwrap();
    }
    o
}

fn on() {
    assert!(sigbus::configure(true), "the handler installs");
}

fn file_of(dir: &Path, name: &str, len: u64) -> PathBuf {
    let p = dir.join(name);
    let bytes: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Cuts the file as another process would: through its own descriptor.
fn cut(p: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// Where the mapping stopped reaching the file, if it did.
fn lost(m: &Mapping) -> Option<u64> {
    m.info().lost_from.map(|v| v as u64)
}

fn len_of(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

/// Every kind of call past the cut answers `truncated`, changes nothing in the file, and
/// the rest of the mapping keeps working.
fn calls_after_a_cut(mode: &[&str]) {
    on();
    let d = tempfile::tempdir().unwrap();
    let p = file_of(d.path(), "f", SIZE);
    let mut o = vec!["read", "write", "shared"];
    o.extend_from_slice(mode);
    let m = Mapping::open(Some(&p), 0, 0, opts(&o)).unwrap();
    // A pointer into a page that is about to vanish, as a direct binary holds.
    let (ptr, n) = pointer(&m, 12 * PAGE, 16);
    cut(&p, 100);
    assert_eq!(
        m.pread(10 * PAGE, 16, |b| b.to_vec()),
        Err(Error::Truncated)
    );
    assert_eq!(m.pwrite(9 * PAGE, b"x"), Err(Error::Truncated));
    assert_eq!(m.atomic(8 * PAGE, Op::Add, 1), Err(Error::Truncated));
    assert_eq!(m.cas(8 * PAGE, 0, 1), Err(Error::Truncated));
    assert_eq!(m.atomic_load(7 * PAGE), Err(Error::Truncated));
    assert_eq!(m.atomic_store(7 * PAGE, 5), Err(Error::Truncated));
    m.position(Whence::Bof, 6 * PAGE as i64).unwrap();
    assert_eq!(m.read(10, |b| b.to_vec()), Err(Error::Truncated));
    assert_eq!(
        m.read_line(1 << 20, |b, _| b.to_vec()),
        Err(Error::Truncated)
    );
    assert_eq!(
        m.position(Whence::Cur, 0),
        Ok(6 * PAGE),
        "a failed read leaves the position where it was"
    );
    assert_eq!(m.write(b"y"), Err(Error::Truncated));
    // The old pointer reads zeros instead of killing the process.
    // SAFETY: the mapping is alive and never unmapped while it is.
    let tail = unsafe { std::slice::from_raw_parts(ptr, n) };
    assert!(tail.iter().all(|&b| b == 0));
    // The rest of the page holding the new end reads zeros without any fault: that cannot
    // be told apart from a file that has zeros there.
    assert_eq!(m.pread(200, 4, |b| b.to_vec()), Ok(Some(vec![0; 4])));
    assert_eq!(m.pread(0, 4, |b| b.to_vec()), Ok(Some(b"abcd".to_vec())));
    assert_eq!(len_of(&p), 100, "nothing written to the file");
    let lost = lost(&m).expect("the damage is reported");
    assert!((PAGE..=6 * PAGE).contains(&lost), "{lost}");
    // Grown back by its owner: the bytes there are not the file's any more in this
    // mapping (its pages were replaced), and the answer says the file is long enough.
    cut(&p, SIZE);
    assert_eq!(
        m.pread(10 * PAGE, 16, |b| b.to_vec()),
        Err(Error::Os(libc::EIO))
    );
    m.close();
}

/// A pointer to `len` bytes at `pos` inside the mapping, as a direct binary holds one.
fn pointer(m: &Mapping, pos: u64, len: u64) -> (*const u8, usize) {
    m.pread(pos, len, |b| (b.as_ptr(), b.len()))
        .unwrap()
        .unwrap()
}

#[test]
fn lock_copy_calls_answer_truncated() {
    calls_after_a_cut(&[]);
}

#[test]
fn nolock_direct_calls_answer_truncated() {
    calls_after_a_cut(&["nolock", "direct"]);
}

#[test]
fn a_window_at_an_offset_counts_from_its_own_start() {
    on();
    let d = tempfile::tempdir().unwrap();
    let p = file_of(d.path(), "w", SIZE);
    // bytes [2 pages + 100, 12 pages + 100) of the file
    let m = Mapping::open(
        Some(&p),
        2 * PAGE + 100,
        10 * PAGE,
        opts(&["read", "write", "shared"]),
    )
    .unwrap();
    cut(&p, 6 * PAGE);
    assert_eq!(m.pread(0, 8, |b| b.to_vec()).unwrap().unwrap().len(), 8);
    assert_eq!(
        m.pread(4 * PAGE - 100 - 8, 8, |b| b.len()),
        Ok(Some(8)),
        "the last bytes before the cut are there"
    );
    assert_eq!(m.pread(4 * PAGE, 8, |b| b.len()), Err(Error::Truncated));
    assert!(lost(&m).unwrap() <= 4 * PAGE);
}

#[test]
fn growth_after_damage_maps_afresh_or_carries_the_damage() {
    on();
    let d = tempfile::tempdir().unwrap();
    let p = file_of(d.path(), "g", SIZE);
    let m = Mapping::open(Some(&p), 0, 0, opts(&["read", "write", "shared"])).unwrap();
    cut(&p, 100);
    assert_eq!(m.pread(8 * PAGE, 1, |b| b.len()), Err(Error::Truncated));
    let first = lost(&m).unwrap();
    assert!(first <= 8 * PAGE);
    // resize extends the file again. The replaced pages split the kernel mapping, so it
    // cannot grow in place: the new mapping reads the file again (zeros past the cut),
    // without damage.
    assert_eq!(m.resize(2 * SIZE).map(|n| n as u64), Ok(2 * SIZE));
    assert_eq!(lost(&m), None);
    assert_eq!(m.pread(8 * PAGE, 1, |b| b.to_vec()), Ok(Some(vec![0])));

    // A private mapping: only the faulting page is replaced (the kernel itself drops the
    // private copies of pages past the new end; the copy of the page holding the end
    // stays). Growing copies into new memory, and the damage goes along.
    let q = file_of(d.path(), "q", SIZE);
    let m = Mapping::open(Some(&q), 0, 0, opts(&["read", "write", "private"])).unwrap();
    m.pwrite(2000, b"mine").unwrap();
    cut(&q, 100);
    assert_eq!(m.pread(5 * PAGE, 1, |b| b.len()), Err(Error::Truncated));
    assert_eq!(lost(&m), Some(5 * PAGE));
    assert_eq!(m.pread(4 * PAGE, 1, |b| b.len()), Err(Error::Truncated));
    assert_eq!(lost(&m), Some(4 * PAGE));
    assert_eq!(m.pread(2000, 4, |b| b.to_vec()), Ok(Some(b"mine".to_vec())));
    // The copy read every page: those from the page after the new end on were cut.
    assert_eq!(m.resize(2 * SIZE).map(|n| n as u64), Ok(2 * SIZE));
    assert_eq!(lost(&m), Some(PAGE));
    assert!(m.pread(PAGE, 1, |b| b.len()).is_err());
    assert_eq!(m.pread(2000, 4, |b| b.to_vec()), Ok(Some(b"mine".to_vec())));
    assert_eq!(m.pread(0, 4, |b| b.to_vec()), Ok(Some(b"abcd".to_vec())));
}

#[test]
fn read_line_stops_at_the_damage() {
    on();
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("l");
    let mut text = b"first\n".to_vec();
    text.resize(SIZE as usize, b'x');
    std::fs::write(&p, &text).unwrap();
    let m = Mapping::open(Some(&p), 0, 0, opts(&["read", "write", "shared"])).unwrap();
    cut(&p, 3 * PAGE);
    let line = |m: &Mapping| m.read_line(1 << 20, |b, _| b.to_vec());
    assert_eq!(line(&m), Ok(Line::Found(b"first\n".to_vec())));
    // No newline before the cut: the scan runs into the vanished part.
    assert_eq!(line(&m), Err(Error::Truncated));
    // With a small limit the scan stops before it (the caller would retry with more).
    assert!(matches!(
        m.read_line(100, |b, _| b.len()),
        Ok(Line::TooLong)
    ));
}

#[test]
fn block_storage_calls_answer_truncated() {
    on();
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("b");
    let m = Mapping::open(
        Some(&p),
        0,
        0,
        opts(&["read", "write", "shared", "create", "fit"]).with_size(64 * 1024),
    )
    .unwrap();
    let cache = blocks::Cache::default();
    blocks::init(&m, &cache, 1000, Some(64)).unwrap();
    let data = vec![7u8; 1000];
    let mut addrs = Vec::new();
    for _ in 0..40 {
        addrs.push(blocks::store(&m, &cache, &data, Growth::Allowed).unwrap());
    }
    cut(&p, 8 * PAGE);
    let last = *addrs.last().unwrap();
    let r = blocks::read(&m, &cache, last, |b| b.to_vec());
    assert_eq!(r, Err(blocks::BlockError::Map(Error::Truncated)));
    assert!(blocks::store(&m, &cache, &data, Growth::Allowed).is_err());
    assert!(blocks::free(&m, &cache, last).is_err());
}

trait WithSize {
    fn with_size(self, n: u64) -> Options;
}
impl WithSize for Options {
    fn with_size(mut self, n: u64) -> Options {
        self.apply("size", Some(n)).unwrap();
        self
    }
}

/// Mappings come and go on some threads while others fault in mappings of their own and
/// in one shared mapping, all at once: every faulting call answers `truncated` or `eio`,
/// none of them ever a success past the cut, and the process lives.
#[test]
fn faults_while_mappings_come_and_go() {
    on();
    let d = Arc::new(tempfile::tempdir().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let churned = Arc::new(AtomicU64::new(0));
    let churn: Vec<_> = (0..3)
        .map(|t| {
            let (d, stop, churned) = (d.clone(), stop.clone(), churned.clone());
            std::thread::spawn(move || {
                let p = file_of(d.path(), &format!("churn{t}"), 2 * PAGE);
                while !stop.load(Ordering::Relaxed) {
                    let a = Mapping::open(Some(&p), 0, 0, opts(&["read", "write", "shared"]));
                    let b =
                        Mapping::open(None, 0, PAGE, opts(&["read", "write", "anon", "shared"]));
                    let (a, b) = (a.unwrap(), b.unwrap());
                    a.pwrite(PAGE, b"z").unwrap();
                    b.pwrite(0, b"z").unwrap();
                    assert_eq!(a.resize(3 * PAGE).map(|n| n as u64), Ok(3 * PAGE));
                    drop((a, b));
                    cut(&p, 2 * PAGE);
                    churned.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // One mapping that several threads fault in at the same moment.
    let shared_file = file_of(d.path(), "shared", SIZE);
    let shared = Arc::new(
        Mapping::open(
            Some(&shared_file),
            0,
            0,
            opts(&["read", "write", "shared", "nolock"]),
        )
        .unwrap(),
    );
    let faulters: Vec<_> = (0..3)
        .map(|t| {
            let (d, shared) = (d.clone(), shared.clone());
            std::thread::spawn(move || {
                for i in 0..150 {
                    let p = file_of(d.path(), &format!("f{t}_{i}"), SIZE);
                    let m =
                        Mapping::open(Some(&p), 0, 0, opts(&["read", "write", "shared"])).unwrap();
                    cut(&p, 100);
                    assert_eq!(m.pread(9 * PAGE, 8, |b| b.len()), Err(Error::Truncated));
                    assert_eq!(m.pwrite(3 * PAGE, b"q"), Err(Error::Truncated));
                    assert_eq!(m.atomic(5 * PAGE, Op::Add, 1), Err(Error::Truncated));
                    drop(m);
                    std::fs::remove_file(&p).unwrap();
                    // The shared mapping: past the cut every answer is an error.
                    match shared.pread(12 * PAGE + i, 8, |b| b.len()) {
                        Ok(Some(8)) => {} // before the first cut below
                        Err(Error::Truncated) | Err(Error::Os(libc::EIO)) => {}
                        other => panic!("unexpected {other:?}"),
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(20));
    cut(&shared_file, 100);
    for f in faulters {
        f.join().unwrap();
    }
    let t0 = Instant::now();
    while churned.load(Ordering::Relaxed) < 50 && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    for c in churn {
        c.join().unwrap();
    }
    assert!(churned.load(Ordering::Relaxed) >= 50);
    assert!(lost(&shared).is_some());
}

// ------------------------------------------------------------------ in child processes

/// Runs `scenario` in a child process (this test binary, filtered to the test `name`) and
/// returns how the child ended. In the child itself, runs it and exits with status 0.
fn in_child(name: &str, scenario: impl FnOnce()) -> ExitStatus {
    if std::env::var("EMMAP_SIGBUS_CHILD").as_deref() == Ok(name) {
        scenario();
        std::process::exit(0);
    }
    Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env("EMMAP_SIGBUS_CHILD", name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
}

/// A fault on a mapping that is not emmap's: cut a file mapped with plain mmap and read
/// past the new end.
fn foreign_fault() {
    let d = tempfile::tempdir().unwrap();
    let p = file_of(d.path(), "foreign", SIZE);
    let f = std::fs::File::open(&p).unwrap();
    // SAFETY: a fresh shared read-only mapping of our own file.
    let m = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            SIZE as usize,
            libc::PROT_READ,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
        )
    };
    assert_ne!(m, libc::MAP_FAILED);
    cut(&p, 100);
    // SAFETY: inside the mapping; the page is gone, so this faults with SIGBUS.
    let v = unsafe { std::ptr::read_volatile((m as *const u8).add(10 * PAGE as usize)) };
    // Only reached if a handler made the access succeed.
    std::process::exit(i32::from(v) + 100);
}

/// A fault emmap survives (run first in each child: the handler is in the chain).
fn emmap_fault_survived() {
    let d = tempfile::tempdir().unwrap();
    let p = file_of(d.path(), "ours", SIZE);
    let m = Mapping::open(Some(&p), 0, 0, opts(&["read", "write", "shared"])).unwrap();
    cut(&p, 100);
    assert_eq!(m.pread(10 * PAGE, 1, |b| b.len()), Err(Error::Truncated));
}

/// Rust's runtime installs a SIGBUS handler of its own (stack overflow detection) that
/// drops a `kill -BUS`; the VM has none. Children that check the default action start from
/// the VM's situation.
fn as_in_the_vm() {
    install(libc::SIG_DFL, 0);
}

fn install(handler: usize, flags: libc::c_int) {
    // SAFETY: installing a process-wide disposition in a child process made for this.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler;
        sa.sa_flags = flags;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut()), 0);
    }
}

extern "C" fn exit_42(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel's siginfo for a fault; _exit is async-signal-safe.
    unsafe {
        let ok = (*info).si_code == libc::BUS_ADRERR && !(*info).si_addr().is_null();
        libc::_exit(if ok { 42 } else { 41 });
    }
}

extern "C" fn exit_43(sig: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(if sig == libc::SIGBUS { 43 } else { 41 }) };
}

#[test]
fn a_siginfo_handler_installed_before_still_gets_foreign_faults() {
    let s = in_child(
        "a_siginfo_handler_installed_before_still_gets_foreign_faults",
        || {
            install(exit_42 as *const () as usize, libc::SA_SIGINFO);
            on();
            emmap_fault_survived();
            foreign_fault();
        },
    );
    assert_eq!(s.code(), Some(42), "{s:?}");
}

#[test]
fn a_plain_handler_installed_before_still_gets_foreign_faults() {
    let s = in_child(
        "a_plain_handler_installed_before_still_gets_foreign_faults",
        || {
            install(exit_43 as *const () as usize, 0);
            on();
            emmap_fault_survived();
            foreign_fault();
        },
    );
    assert_eq!(s.code(), Some(43), "{s:?}");
}

#[test]
fn a_foreign_fault_still_kills_with_sigbus() {
    let s = in_child("a_foreign_fault_still_kills_with_sigbus", || {
        as_in_the_vm();
        on();
        emmap_fault_survived();
        foreign_fault();
    });
    assert_eq!(s.signal(), Some(libc::SIGBUS), "{s:?}");
}

#[test]
fn kill_bus_still_kills() {
    let s = in_child("kill_bus_still_kills", || {
        as_in_the_vm();
        on();
        emmap_fault_survived();
        // SAFETY: signals this very (child) process.
        unsafe { libc::kill(libc::getpid(), libc::SIGBUS) };
        std::thread::sleep(Duration::from_secs(5));
    });
    assert_eq!(s.signal(), Some(libc::SIGBUS), "{s:?}");
}

#[test]
fn an_ignored_kill_stays_ignored_but_a_foreign_fault_kills() {
    let s = in_child(
        "an_ignored_kill_stays_ignored_but_a_foreign_fault_kills",
        || {
            install(libc::SIG_IGN, 0);
            on();
            // SAFETY: signals this very (child) process, which ignores SIGBUS.
            unsafe { libc::kill(libc::getpid(), libc::SIGBUS) };
            emmap_fault_survived();
            foreign_fault();
        },
    );
    assert_eq!(s.signal(), Some(libc::SIGBUS), "{s:?}");
}

#[test]
fn switched_off_the_old_behaviour_is_back() {
    let s = in_child("switched_off_the_old_behaviour_is_back", || {
        as_in_the_vm();
        on();
        emmap_fault_survived();
        assert!(!sigbus::configure(false));
        assert!(!sigbus::status().0);
        emmap_fault_survived();
    });
    assert_eq!(s.signal(), Some(libc::SIGBUS), "{s:?}");
}
