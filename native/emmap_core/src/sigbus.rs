//! Surviving a mapped file cut short by someone else: the process-wide SIGBUS handler.
//!
//! When another process (or a raw file handle) shrinks a file, every access to a mapped page
//! past its new end makes the kernel send SIGBUS to the accessing thread, whose default
//! action kills the whole VM. The handler installed here looks the faulting address up in
//! the table of emmap's mappings (`registry.rs`). If it is emmap memory, it records in the
//! mapping that bytes from that page on are gone, maps private zero pages over them (what
//! `Region::detach_tail` does for emmap's own `truncate`), and returns: the access is
//! retried and completes on zeros. The emmap call that made it then reads the record and
//! answers an error instead of `ok` (see `Access::check` in `mapping.rs`); a direct binary
//! read by anyone just sees zeros. Every other SIGBUS goes to whatever handled it before.
//!
//! One handler and one table per OS process, even when the library is loaded twice (a
//! release upgrade loads the same library from another path: a second copy with its own
//! statics). The first copy to initialise becomes the owner: it pins itself in memory (it
//! may never be unloaded while its handler is installed or its table is in use) and
//! exports [`SYMBOL`], a function returning [`ApiV1`]. A later copy finds a loaded library
//! exporting that symbol and registers its mappings in the owner's table through it.
//! Whatever changes in how the table or the handler work must change the symbol's name.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::mem::MaybeUninit;
use std::ptr::{self, NonNull};
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::registry::{self, HandlerGuard, Slot};

/// The symbol an owner exports (a `extern "C" fn() -> *const ApiV1`, null until that
/// library has decided which table it uses).
pub const SYMBOL: &CStr = c"emmap_fault_registry_v1";

/// What one copy of the library offers another. Version 1; `size` allows growth at the end.
#[repr(C)]
pub struct ApiV1 {
    pub size: usize,
    /// `(map_start, map_len, base, align, prot, tail) -> damage word` (see [`register`]).
    pub register:
        unsafe extern "C" fn(usize, usize, usize, usize, c_int, c_int) -> *const AtomicUsize,
    pub resize: unsafe extern "C" fn(*const AtomicUsize, usize),
    pub unregister: unsafe extern "C" fn(*const AtomicUsize),
    /// Turns the handler on (installing it the first time) or off; returns whether it is on.
    pub configure: unsafe extern "C" fn(c_int) -> c_int,
    /// Whether the handler is installed and on.
    pub active: unsafe extern "C" fn() -> c_int,
    /// Path of the owner library (NUL-terminated, static), or null if it has not installed
    /// the handler.
    pub library: unsafe extern "C" fn() -> *const c_char,
}

static OWN: ApiV1 = ApiV1 {
    size: std::mem::size_of::<ApiV1>(),
    register: own_register,
    resize: own_resize,
    unregister: own_unregister,
    configure: own_configure,
    active: own_active,
    library: own_library,
};

fn slot_of(word: *const AtomicUsize) -> &'static Slot {
    // SAFETY: every damage word handed out by `own_register` is the first field of a
    // `#[repr(C)]` registry slot, and slots are never freed.
    unsafe { &*(word as *const Slot) }
}

unsafe extern "C" fn own_register(
    start: usize,
    len: usize,
    base: usize,
    align: usize,
    prot: c_int,
    tail: c_int,
) -> *const AtomicUsize {
    let s = registry::register(start, len, base, align, prot, tail != 0);
    &s.vanished
}

unsafe extern "C" fn own_resize(word: *const AtomicUsize, len: usize) {
    registry::resize(slot_of(word), len)
}

unsafe extern "C" fn own_unregister(word: *const AtomicUsize) {
    registry::unregister(slot_of(word))
}

unsafe extern "C" fn own_configure(on: c_int) -> c_int {
    c_int::from(configure_here(on != 0))
}

unsafe extern "C" fn own_active() -> c_int {
    c_int::from(INSTALLED.load(Ordering::Acquire) && ENABLED.load(Ordering::Acquire))
}

unsafe extern "C" fn own_library() -> *const c_char {
    if !INSTALLED.load(Ordering::Acquire) {
        return ptr::null();
    }
    LIBRARY.get().map_or(ptr::null(), |c| c.as_ptr())
}

/// The table this copy uses: its own, or the one of a copy loaded earlier.
static OWNER: OnceLock<&'static ApiV1> = OnceLock::new();
/// This copy's path, once known.
static LIBRARY: OnceLock<CString> = OnceLock::new();

fn owner() -> &'static ApiV1 {
    OWNER.get_or_init(|| {
        let _ = LIBRARY.set(own_path().unwrap_or_default());
        match find_other() {
            Some(api) => api,
            None => {
                pin_self();
                &OWN
            }
        }
    })
}

/// What the exported [`SYMBOL`] returns: the table this copy uses, or null while it has
/// not decided yet (so two copies initialising can never end up waiting on each other).
pub fn exported() -> *const ApiV1 {
    OWNER.get().map_or(ptr::null(), |a| *a as *const ApiV1)
}

/// This library's file, from the address of one of its functions.
fn own_path() -> Option<CString> {
    let mut info = MaybeUninit::<libc::Dl_info>::zeroed();
    // SAFETY: dladdr only reads the loader's tables and fills `info`.
    let ok = unsafe { libc::dladdr(on_sigbus as *const c_void, info.as_mut_ptr()) };
    if ok == 0 {
        return None;
    }
    // SAFETY: filled in by a successful dladdr.
    let info = unsafe { info.assume_init() };
    if info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dli_fname is a NUL-terminated string owned by the loader.
    Some(unsafe { CStr::from_ptr(info.dli_fname) }.to_owned())
}

/// Keeps this library loaded for the life of the process: its handler code and its table
/// may be in use by the kernel (an installed handler) and by other copies.
fn pin_self() {
    if let Some(p) = LIBRARY.get().filter(|p| !p.is_empty()) {
        // SAFETY: RTLD_NOLOAD only looks the already loaded object up; RTLD_NODELETE marks
        // it never to be unloaded. The handle is deliberately never closed.
        unsafe {
            libc::dlopen(
                p.as_ptr(),
                libc::RTLD_LAZY | libc::RTLD_NOLOAD | libc::RTLD_NODELETE,
            )
        };
    }
}

/// Another loaded copy of this library that has chosen its table.
fn find_other() -> Option<&'static ApiV1> {
    unsafe extern "C" fn collect(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: the loader passes a valid `info`; `data` is the Vec below.
        let (info, names) = unsafe { (&*info, &mut *(data as *mut Vec<CString>)) };
        if !info.dlpi_name.is_null() {
            // SAFETY: a NUL-terminated name owned by the loader.
            let n = unsafe { CStr::from_ptr(info.dlpi_name) };
            if !n.is_empty() {
                names.push(n.to_owned());
            }
        }
        0
    }
    let mut names: Vec<CString> = Vec::new();
    // SAFETY: the callback only copies names; dlopen is called after the walk, never
    // inside it (where the loader's lock is held).
    unsafe { libc::dl_iterate_phdr(Some(collect), &mut names as *mut _ as *mut c_void) };
    for n in names {
        // SAFETY: RTLD_NOLOAD never loads anything; the handle is closed below.
        let h = unsafe { libc::dlopen(n.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD) };
        if h.is_null() {
            continue;
        }
        // SAFETY: `h` is a valid handle; the symbol name is NUL-terminated.
        let sym = unsafe { libc::dlsym(h, SYMBOL.as_ptr()) };
        let api = if sym.is_null() {
            ptr::null()
        } else {
            // SAFETY: a library exporting SYMBOL is a copy of emmap, where it is an
            // `extern "C" fn() -> *const ApiV1`.
            let f: extern "C" fn() -> *const ApiV1 = unsafe { std::mem::transmute(sym) };
            f()
        };
        // SAFETY: `h` came from dlopen above. The owner pinned itself, so `api` stays valid.
        unsafe { libc::dlclose(h) };
        if api.is_null() || ptr::eq(api, &OWN) {
            continue;
        }
        // SAFETY: a non-null answer points at the owner's static API, and the owner is
        // pinned in memory for the life of the process.
        let api = unsafe { &*api };
        if api.size >= std::mem::size_of::<ApiV1>() {
            return Some(api);
        }
    }
    None
}

// ------------------------------------------------------------------------ regions' view

/// A registered kernel mapping, as its `Region` descriptors hold it: the word where the
/// handler records damage (in the owner's table), which is all the hot path reads.
#[derive(Debug, Clone, Copy)]
pub struct Mark(NonNull<AtomicUsize>);

// SAFETY: the word is an atomic in a table that is never freed; any thread may read it.
unsafe impl Send for Mark {}
// SAFETY: see `Send`.
unsafe impl Sync for Mark {}

impl Mark {
    /// Offset (from the user's byte 0) of the first byte that no longer comes from the
    /// file, or `usize::MAX`. The compiler fence keeps the load after the memory accesses
    /// made before it on this thread (a fault in them runs the handler, on this thread,
    /// before the load).
    #[inline]
    pub fn vanished(&self) -> usize {
        compiler_fence(Ordering::SeqCst);
        // SAFETY: see `Send`.
        unsafe { self.0.as_ref() }.load(Ordering::Acquire)
    }

    /// Records damage from `offset` on (for a region whose contents were copied from a
    /// damaged one).
    pub fn record(&self, offset: usize) {
        // SAFETY: see `Send`.
        unsafe { self.0.as_ref() }.fetch_min(offset, Ordering::SeqCst);
    }
}

/// Registers the kernel mapping `[start, start + len)` whose user byte 0 is at `base`,
/// replaced at a fault in units of `align` bytes with protection `prot`, from the faulting
/// page to the end (`tail`) or one unit only. The caller unregisters it before unmapping.
pub fn register(
    start: usize,
    len: usize,
    base: usize,
    align: usize,
    prot: c_int,
    tail: bool,
) -> Mark {
    let o = owner();
    // SAFETY: plain values; the owner's function returns a pointer into its table.
    let w = unsafe { (o.register)(start, len, base, align, prot, c_int::from(tail)) };
    Mark(NonNull::new(w as *mut AtomicUsize).expect("a registry slot"))
}

/// The mapping of `m` was grown in place to `len` bytes.
pub fn resize(m: Mark, len: usize) {
    // SAFETY: `m` came from `register` on the same owner.
    unsafe { (owner().resize)(m.0.as_ptr(), len) }
}

/// Forgets the mapping of `m`; returns once no handler can touch its addresses any more.
pub fn unregister(m: Mark) {
    // SAFETY: `m` came from `register` on the same owner and is unregistered once.
    unsafe { (owner().unregister)(m.0.as_ptr()) }
}

/// Turns the handler on (installing it in the process the first time) or off (every SIGBUS
/// then goes where it would go without emmap: the old behaviour). Returns whether it is on.
pub fn configure(on: bool) -> bool {
    // SAFETY: a plain value in, a plain value out.
    unsafe { (owner().configure)(c_int::from(on)) != 0 }
}

/// Whether the handler is installed and on, and the library that installed it (if any).
pub fn status() -> (bool, Option<String>) {
    let o = owner();
    // SAFETY: plain calls into the owner, which returns a static string or null.
    let (on, lib) = unsafe { ((o.active)() != 0, (o.library)()) };
    let lib = (!lib.is_null())
        .then(|| {
            // SAFETY: a NUL-terminated string the owner keeps for the life of the process.
            unsafe { CStr::from_ptr(lib) }
                .to_string_lossy()
                .into_owned()
        })
        .filter(|s| !s.is_empty());
    (on, lib)
}

// ------------------------------------------------------------------------ the handler

static ENABLED: AtomicBool = AtomicBool::new(false);
static INSTALLED: AtomicBool = AtomicBool::new(false);
static INSTALL: Mutex<()> = Mutex::new(());

/// The disposition found when installing, in one of two buffers, each written once before
/// `PREV_AT` points at it and never again (see `install`).
struct PrevCell(std::cell::UnsafeCell<MaybeUninit<libc::sigaction>>);
// SAFETY: each buffer is written once, under `INSTALL`, before it is published through
// `PREV_AT` (Release); readers only read it after loading `PREV_AT` (Acquire).
unsafe impl Sync for PrevCell {}
static PREV: [PrevCell; 2] = [
    PrevCell(std::cell::UnsafeCell::new(MaybeUninit::uninit())),
    PrevCell(std::cell::UnsafeCell::new(MaybeUninit::uninit())),
];
static PREV_AT: AtomicPtr<libc::sigaction> = AtomicPtr::new(ptr::null_mut());
/// Set once a previous handler installed with `SA_RESETHAND` has been called: from then
/// on the default action applies, as the kernel would have arranged.
static PREV_RESET: AtomicBool = AtomicBool::new(false);

fn configure_here(on: bool) -> bool {
    let _g = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    ENABLED.store(on, Ordering::Release);
    if on && !INSTALLED.load(Ordering::Acquire) && install() {
        INSTALLED.store(true, Ordering::Release);
    }
    on && INSTALLED.load(Ordering::Acquire)
}

/// Installs the handler, keeping what was there to chain to. Under `INSTALL`.
fn install() -> bool {
    // SAFETY: sigaction with a null new action only reads the current one into PREV[0],
    // which nothing reads before PREV_AT is set below.
    unsafe {
        let p0 = (*PREV[0].0.get()).as_mut_ptr();
        ptr::write_bytes(p0, 0, 1);
        if libc::sigaction(libc::SIGBUS, ptr::null(), p0) != 0 {
            return false;
        }
        PREV_AT.store(p0, Ordering::Release);
    }
    // SAFETY: an all-zero sigaction is a valid value to fill in.
    let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
    new.sa_sigaction = on_sigbus as *const () as usize;
    // SA_NODEFER: SIGBUS is not blocked while the handler runs, so a `kill -BUS` arriving
    // then is handled (chained) at once, and a chained handler gets exactly the mask it
    // asked for (see `chain`). SA_ONSTACK: use the thread's alternate stack if it has one.
    new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER | libc::SA_RESTART;
    // SAFETY: initialises the mask field in place.
    unsafe { libc::sigemptyset(&mut new.sa_mask) };
    // SAFETY: PREV[1] is written here only, before being published.
    unsafe {
        let p1 = (*PREV[1].0.get()).as_mut_ptr();
        ptr::write_bytes(p1, 0, 1);
        if libc::sigaction(libc::SIGBUS, &new, p1) != 0 {
            return false;
        }
        // Someone changed the disposition between the two calls: chain to what we
        // actually displaced.
        if (*p1).sa_sigaction != (*PREV_AT.load(Ordering::Relaxed)).sa_sigaction {
            PREV_AT.store(p1, Ordering::Release);
        }
    }
    true
}

/// The SIGBUS handler.
///
/// # Safety
/// Called by the kernel with a valid `siginfo_t` and context. Async-signal-safe: it reads
/// atomics and the never-freed registry, and makes system calls (mmap, sigaction,
/// pthread_sigmask, raise); it allocates nothing and takes no lock, so it cannot deadlock
/// with the thread it interrupted, whatever that thread holds.
unsafe extern "C" fn on_sigbus(sig: c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    // SAFETY: errno is this thread's; the interrupted code must find it unchanged.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: `info` comes from the kernel.
    let repaired = ENABLED.load(Ordering::Acquire) && unsafe { repair(info) };
    if !repaired {
        // SAFETY: forwarding the kernel's own arguments.
        unsafe { chain(sig, info, ctx) };
    }
    // SAFETY: see above.
    unsafe { *libc::__errno_location() = errno };
}

/// Maps zero pages over the vanished part of the emmap mapping that `info` faulted in, and
/// records the damage. False if the signal is not such a fault (or the repair failed).
///
/// # Safety
/// `info` is null or points at the kernel's siginfo for this signal.
unsafe fn repair(info: *const libc::siginfo_t) -> bool {
    if info.is_null() {
        return false;
    }
    // SAFETY: non-null, from the kernel.
    let info = unsafe { &*info };
    // Only a fault on a mapped page the kernel could not provide (past the end of the
    // file, or an I/O error). Not `kill -BUS` (SI_USER), sigqueue, tgkill (si_code <= 0),
    // not a misaligned access (BUS_ADRALN), not a hardware memory error (BUS_MCEERR_*).
    if info.si_code != libc::BUS_ADRERR {
        return false;
    }
    // SAFETY: for a BUS_ADRERR fault the kernel fills in si_addr.
    let addr = unsafe { info.si_addr() } as usize;
    let _inside = HandlerGuard::enter();
    let Some(f) = registry::lookup(addr) else {
        return false;
    };
    if !f.align.is_power_of_two() {
        return false;
    }
    let page = addr & !(f.align - 1);
    let from = page.max(f.start);
    let to = if f.tail {
        f.end
    } else {
        page.saturating_add(f.align).min(f.end)
    };
    if to <= from {
        return false;
    }
    // Record first, map after: a thread that reads one of the new zero pages then finds
    // the record when it checks (see native/README.md).
    registry::record(f.slot, from.saturating_sub(f.base));
    // SAFETY: [from, to) lies inside the kernel mapping `f` describes (page aligned; `end`
    // is the mapping's end rounded up to the unit the kernel rounded it to), which emmap
    // owns and which stays mapped until we leave: it is unregistered, and waits for
    // `_inside` to be dropped, before it is ever unmapped. MAP_FIXED therefore replaces
    // only emmap's own pages. A raw system call: no libc state is touched.
    let p = unsafe {
        libc::syscall(
            libc::SYS_mmap,
            from,
            to - from,
            f.prot as libc::c_long,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE)
                as libc::c_long,
            -1 as libc::c_long,
            0 as libc::c_long,
        )
    };
    p as usize == from
}

/// Hands the signal to what was installed before emmap, as if emmap were not there.
///
/// # Safety
/// Arguments as the kernel passed them to `on_sigbus`.
unsafe fn chain(sig: c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    // SAFETY: `info` is null or the kernel's siginfo.
    let user_sent = info.is_null() || unsafe { (*info).si_code } <= 0;
    let prev = PREV_AT.load(Ordering::Acquire);
    let prev = if prev.is_null() || PREV_RESET.load(Ordering::Acquire) {
        None
    } else {
        // SAFETY: published once fully written; never written again.
        Some(unsafe { &*prev })
    };
    let handler = prev.map_or(libc::SIG_DFL, |p| p.sa_sigaction);
    if handler == libc::SIG_IGN && user_sent {
        return; // ignored, as it would have been
    }
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // The default action (termination with a core dump). A fault cannot be ignored:
        // the kernel applies the default to it whatever the disposition.
        // SAFETY: an all-zero sigaction is SIG_DFL with an empty mask.
        let dfl: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: sigaction and raise are async-signal-safe.
        unsafe {
            libc::sigaction(libc::SIGBUS, &dfl, ptr::null_mut());
            if user_sent {
                // SIGBUS is not blocked here (SA_NODEFER): delivered, and fatal, at once.
                libc::raise(libc::SIGBUS);
            }
        }
        // A fault: returning retries the access, which faults again and now kills the
        // process exactly as it would have without emmap.
        return;
    }
    let Some(p) = prev else {
        return; // unreachable: without PREV the handler is SIG_DFL
    };
    if p.sa_flags & libc::SA_RESETHAND != 0 {
        PREV_RESET.store(true, Ordering::Release);
    }
    // Run it with the mask the kernel would have given it.
    let mut block = p.sa_mask;
    let mut old = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigaddset/pthread_sigmask are async-signal-safe and only touch these sets
    // and this thread's mask; `handler` was installed for SIGBUS by the process, with the
    // signature its SA_SIGINFO flag says.
    unsafe {
        if p.sa_flags & libc::SA_NODEFER == 0 {
            libc::sigaddset(&mut block, libc::SIGBUS);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &block, old.as_mut_ptr());
        if p.sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) =
                std::mem::transmute(handler);
            f(sig, info, ctx);
        } else {
            let f: extern "C" fn(c_int) = std::mem::transmute(handler);
            f(sig);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, old.as_ptr(), ptr::null_mut());
    }
}
