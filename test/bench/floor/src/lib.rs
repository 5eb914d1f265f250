//! NIFs for the floors of emmap's benchmark (`make bench`), loaded by the Erlang module
//! `emmap_bench_floor` (test/bench/). Each takes and returns the terms of an emmap call
//! and does nothing else (the `map_*` ones also copy the bytes, into or out of a mapping
//! of their own), so the difference between an emmap row and its floor is what emmap
//! itself costs. Built like the real library (release, thin LTO, arguments read
//! from the VM's array), with the `enif_*` functions it needs declared by hand, so it has
//! no dependencies.
//!
//! - `new()`: a resource of this library's own type (the floors decode it as emmap's
//!   NIFs decode a handle: one `enif_get_resource`);
//! - `int(Res, I, J)`: `I` (the shape of the NIF under `inc_counter`);
//! - `ok_int(Res, I, J)`: `{ok, I}` (the shape of an atomic operation, `patomic/4`);
//! - `bin40(Res, I, J)`: `{ok, Bin}`, `Bin` a 40-byte resource binary (a `direct` read);
//! - `copy40(Res, I, J)`: `{ok, Bin}`, `Bin` a new 40-byte binary (a copying read);
//! - `write(Res, I, Bin)`: `ok` after looking at `Bin`'s bytes (a `pwrite`);
//! - `map(Path, Size)`: a resource that holds a shared mapping of the first `Size` bytes
//!   of the file at `Path` (as `emmap:open(Path, [read, write, shared])` maps it);
//! - `map_write(Res, I, Bin)`: `ok` after copying `Bin` to offset `I` of that mapping
//!   (a `pwrite`, the bytes really stored);
//! - `map_copy(Res, I, N)`: `{ok, Bin}`, `Bin` a new binary of the `N` bytes at offset
//!   `I` of that mapping (a copying read, the bytes really read). These two are the
//!   floors of the rows at random offsets, whose cost is mostly the memory access
//!   itself (a TLB and a cache miss), paid by any code that touches those bytes;
//! - `mark()`: `ok`; the callgrind runs dump a profile at each call of its symbol
//!   (`--dump-before=emmap_bench_mark`), which separates the phases of a run.

#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_long, c_uint, c_void};
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::Relaxed};

type Env = *mut c_void;
type Term = usize;
type NifFn = unsafe extern "C" fn(Env, c_int, *const Term) -> Term;

#[repr(C)]
struct ErlNifFunc {
    name: *const c_char,
    arity: c_uint,
    function: NifFn,
    flags: c_uint,
}

#[repr(C)]
pub struct ErlNifEntry {
    major: c_int,
    minor: c_int,
    name: *const c_char,
    num_of_funcs: c_int,
    funcs: *const ErlNifFunc,
    load: Option<unsafe extern "C" fn(Env, *mut *mut c_void, Term) -> c_int>,
    reload: *const c_void,
    upgrade: Option<unsafe extern "C" fn(Env, *mut *mut c_void, *mut *mut c_void, Term) -> c_int>,
    unload: *const c_void,
    vm_variant: *const c_char,
    options: c_uint,
    sizeof_resource_type_init: usize,
    min_erts: *const c_char,
}

/// `ErlNifBinary` of erl_nif.h: size and data first, then fields only the VM reads.
#[repr(C)]
struct ErlNifBinary {
    size: usize,
    data: *mut u8,
    ref_bin: *mut c_void,
    spare: [*mut c_void; 2],
}

const RT_CREATE: c_int = 1;
const RT_TAKEOVER: c_int = 2;

extern "C" {
    fn enif_open_resource_type(
        env: Env,
        module: *const c_char,
        name: *const c_char,
        dtor: Option<unsafe extern "C" fn(Env, *mut c_void)>,
        flags: c_int,
        tried: *mut c_int,
    ) -> *mut c_void;
    fn enif_alloc_resource(ty: *mut c_void, size: usize) -> *mut c_void;
    fn enif_make_resource(env: Env, obj: *mut c_void) -> Term;
    fn enif_release_resource(obj: *mut c_void);
    fn enif_get_resource(env: Env, t: Term, ty: *mut c_void, obj: *mut *mut c_void) -> c_int;
    fn enif_make_resource_binary(
        env: Env,
        obj: *mut c_void,
        data: *const c_void,
        size: usize,
    ) -> Term;
    fn enif_make_new_binary(env: Env, size: usize, t: *mut Term) -> *mut u8;
    fn enif_inspect_binary(env: Env, t: Term, bin: *mut ErlNifBinary) -> c_int;
    fn enif_get_long(env: Env, t: Term, v: *mut c_long) -> c_int;
    fn enif_make_long(env: Env, v: c_long) -> Term;
    fn enif_make_tuple_from_array(env: Env, arr: *const Term, cnt: c_uint) -> Term;
    fn enif_make_atom(env: Env, name: *const c_char) -> Term;
    fn enif_make_badarg(env: Env) -> Term;
}

// The few libc functions and constants the mapping floors need (Linux; the values are
// those of every Linux architecture emmap builds on).
extern "C" {
    fn open(path: *const c_char, flags: c_int, ...) -> c_int;
    fn close(fd: c_int) -> c_int;
    fn mmap(
        addr: *mut c_void,
        len: usize,
        prot: c_int,
        flags: c_int,
        fd: c_int,
        off: i64,
    ) -> *mut c_void;
    fn munmap(addr: *mut c_void, len: usize) -> c_int;
}

const O_RDWR: c_int = 2;
const O_CLOEXEC: c_int = 0o2000000;
const PROT_READ: c_int = 1;
const PROT_WRITE: c_int = 2;
const MAP_SHARED: c_int = 1;
const MAP_FAILED: *mut c_void = usize::MAX as *mut c_void;

/// The object behind every resource of this library: a mapping made by `map/2`, or none
/// (null, 0) for the resources of `new/0`.
#[repr(C)]
struct Region {
    ptr: *mut u8,
    len: usize,
}

static TYPE: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());
static OK: AtomicUsize = AtomicUsize::new(0);
static BYTES: [u8; 40] = [b'x'; 40];

/// The resource object behind `t`, if it is one of ours.
#[inline(always)]
fn resource(env: Env, t: Term) -> Option<*mut c_void> {
    let mut obj = ptr::null_mut();
    // SAFETY: `env` and `t` come from the running NIF call; `obj` is a valid out-pointer;
    // the type was registered at load.
    (unsafe { enif_get_resource(env, t, TYPE.load(Relaxed), &mut obj) } != 0).then_some(obj)
}

fn empty_binary() -> ErlNifBinary {
    ErlNifBinary {
        size: 0,
        data: ptr::null_mut(),
        ref_bin: ptr::null_mut(),
        spare: [ptr::null_mut(); 2],
    }
}

/// The integer argument `t`.
#[inline(always)]
fn int(env: Env, t: Term) -> Option<c_long> {
    let mut v = 0;
    // SAFETY: as in `resource`.
    (unsafe { enif_get_long(env, t, &mut v) } != 0).then_some(v)
}

#[inline(always)]
fn ok(env: Env, v: Term) -> Term {
    let items = [OK.load(Relaxed), v];
    // SAFETY: two terms valid in this call's env.
    unsafe { enif_make_tuple_from_array(env, items.as_ptr(), 2) }
}

/// Defines a NIF whose body sees the env and the arguments and answers a term, or `None`
/// for `badarg`.
macro_rules! nif {
    ($name:ident, |$env:ident, $a:ident| $body:block) => {
        unsafe extern "C" fn $name(env: Env, argc: c_int, argv: *const Term) -> Term {
            fn body($env: Env, $a: &[Term]) -> Option<Term> {
                $body
            }
            // SAFETY: the VM passes `argc` valid terms at `argv` for the call's duration.
            let args = unsafe { std::slice::from_raw_parts(argv, argc as usize) };
            match body(env, args) {
                Some(t) => t,
                // SAFETY: `env` is the running call's env.
                None => unsafe { enif_make_badarg(env) },
            }
        }
    };
}

/// The symbol callgrind dumps a profile at.
#[no_mangle]
#[inline(never)]
pub extern "C" fn emmap_bench_mark(_env: Env, _argc: c_int, _argv: *const Term) -> Term {
    std::hint::black_box(OK.load(Relaxed))
}

/// A new resource holding `region`, or `None` when the VM is out of memory (the caller
/// then still owns the mapping).
fn make_region(env: Env, region: Region) -> Option<Term> {
    // SAFETY: the type was registered at load with objects of `Region`'s size in mind;
    // the object is written before the VM or the destructor can see it; the term holds
    // the reference we release.
    unsafe {
        let obj = enif_alloc_resource(TYPE.load(Relaxed), std::mem::size_of::<Region>());
        if obj.is_null() {
            return None;
        }
        obj.cast::<Region>().write(region);
        let t = enif_make_resource(env, obj);
        enif_release_resource(obj);
        Some(t)
    }
}

/// The mapped bytes `[off, off + n)` of the resource `t`, as a pointer, if `t` is one of
/// ours holding a mapping and the range lies inside it.
#[inline(always)]
fn mapped(env: Env, t: Term, off: c_long, n: usize) -> Option<*mut u8> {
    let obj = resource(env, t)?.cast::<Region>();
    // SAFETY: every object of our type is a `Region`, written when it was made and never
    // changed; the resource term keeps it alive for this call.
    let r = unsafe { &*obj };
    let off = usize::try_from(off).ok()?;
    if r.ptr.is_null() || off.checked_add(n)? > r.len {
        return None;
    }
    // SAFETY: `off + n <= len`, so the pointer stays inside the mapping.
    Some(unsafe { r.ptr.add(off) })
}

/// Unmaps a resource's mapping when the VM frees the resource.
unsafe extern "C" fn region_dtor(_env: Env, obj: *mut c_void) {
    // SAFETY: the VM calls this once per object of our type, each a `Region`, when
    // nothing references it any more, so the mapping is no longer used.
    unsafe {
        let r = &*obj.cast::<Region>();
        if !r.ptr.is_null() {
            munmap(r.ptr.cast(), r.len);
        }
    }
}

nif!(new, |env, _a| {
    make_region(
        env,
        Region {
            ptr: ptr::null_mut(),
            len: 0,
        },
    )
});

nif!(map, |env, a| {
    let mut bin = empty_binary();
    // SAFETY: `bin` is a valid out-pointer; the term is an argument of this call.
    if unsafe { enif_inspect_binary(env, a[0], &mut bin) } == 0 {
        return None;
    }
    // SAFETY: the VM gave `size` readable bytes at `data`, valid during this call.
    let path = unsafe { std::slice::from_raw_parts(bin.data, bin.size) };
    let path = std::ffi::CString::new(path).ok()?;
    let len = usize::try_from(int(env, a[1])?).ok().filter(|&n| n > 0)?;
    // SAFETY: `path` is NUL-terminated; the flags create nothing, so no mode is needed.
    let fd = unsafe { open(path.as_ptr(), O_RDWR | O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a null hint lets the kernel pick a free range, so no existing mapping is
    // touched; the result is checked against MAP_FAILED; the mapping outlives the fd.
    let p = unsafe {
        let p = mmap(
            ptr::null_mut(),
            len,
            PROT_READ | PROT_WRITE,
            MAP_SHARED,
            fd,
            0,
        );
        close(fd);
        p
    };
    if p == MAP_FAILED {
        return None;
    }
    let t = make_region(env, Region { ptr: p.cast(), len });
    if t.is_none() {
        // SAFETY: the mapping was made above and nothing else refers to it.
        unsafe { munmap(p, len) };
    }
    t
});

nif!(map_write, |env, a| {
    let mut bin = empty_binary();
    // SAFETY: `bin` is a valid out-pointer; the term is an argument of this call.
    if unsafe { enif_inspect_binary(env, a[2], &mut bin) } == 0 {
        return None;
    }
    let dst = mapped(env, a[0], int(env, a[1])?, bin.size)?;
    // SAFETY: `mapped` checked that `bin.size` bytes at `dst` lie inside a live, writable
    // mapping; the source is the binary's bytes, valid during this call; a file mapping
    // and a VM binary never overlap. (A truncated file could raise SIGBUS: the bench
    // never truncates the files it maps.)
    unsafe { ptr::copy_nonoverlapping(bin.data, dst, bin.size) };
    Some(OK.load(Relaxed))
});

nif!(map_copy, |env, a| {
    let n = usize::try_from(int(env, a[2])?).ok()?;
    let src = mapped(env, a[0], int(env, a[1])?, n)?;
    let mut t = 0;
    // SAFETY: `mapped` checked that `n` bytes at `src` lie inside a live mapping; the VM
    // answers a writable buffer of `n` bytes (or null), which nothing else sees before
    // this call returns `t`. (SIGBUS: as in `map_write`.)
    unsafe {
        let p = enif_make_new_binary(env, n, &mut t);
        if p.is_null() {
            return None;
        }
        ptr::copy_nonoverlapping(src, p, n);
    }
    Some(ok(env, t))
});

nif!(int_, |env, a| {
    resource(env, a[0])?;
    int(env, a[2])?;
    // SAFETY: plain value construction in this call's env.
    Some(unsafe { enif_make_long(env, int(env, a[1])?) })
});

nif!(ok_int, |env, a| {
    resource(env, a[0])?;
    int(env, a[2])?;
    // SAFETY: as in `int_`.
    let v = unsafe { enif_make_long(env, int(env, a[1])?) };
    Some(ok(env, v))
});

nif!(bin40, |env, a| {
    let obj = resource(env, a[0])?;
    int(env, a[1])?;
    int(env, a[2])?;
    // SAFETY: `BYTES` is a static, so it outlives the binary; the binary keeps a
    // reference to the resource `obj`, a live object of ours.
    let b = unsafe { enif_make_resource_binary(env, obj, BYTES.as_ptr().cast(), BYTES.len()) };
    Some(ok(env, b))
});

nif!(copy40, |env, a| {
    resource(env, a[0])?;
    int(env, a[1])?;
    int(env, a[2])?;
    let mut t = 0;
    // SAFETY: `t` is a valid out-pointer; the VM answers a writable buffer of
    // `BYTES.len()` bytes (or null when out of memory), which nothing else sees before
    // this call returns `t`.
    unsafe {
        let p = enif_make_new_binary(env, BYTES.len(), &mut t);
        if p.is_null() {
            return None;
        }
        ptr::copy_nonoverlapping(BYTES.as_ptr(), p, BYTES.len());
    }
    Some(ok(env, t))
});

nif!(write, |env, a| {
    resource(env, a[0])?;
    int(env, a[1])?;
    let mut bin = empty_binary();
    // SAFETY: `bin` is a valid out-pointer of the layout erl_nif.h declares; the term
    // is an argument of this call.
    if unsafe { enif_inspect_binary(env, a[2], &mut bin) } == 0 {
        return None;
    }
    // The bytes are looked at (as a copy into the mapping would), not kept.
    std::hint::black_box((bin.data, bin.size));
    Some(OK.load(Relaxed))
});

unsafe extern "C" fn on_load(env: Env, _priv: *mut *mut c_void, _info: Term) -> c_int {
    let mut tried = 0;
    let mut t = ptr::null_mut();
    for flags in [RT_TAKEOVER, RT_CREATE] {
        // SAFETY: called by the VM as this library's load/upgrade; the name is a
        // NUL-terminated literal; the destructor takes `Region` objects, as every
        // object of the type is.
        t = unsafe {
            enif_open_resource_type(
                env,
                ptr::null(),
                c"emmap_bench_floor".as_ptr(),
                Some(region_dtor),
                flags,
                &mut tried,
            )
        };
        if !t.is_null() {
            break;
        }
    }
    if t.is_null() {
        return 1;
    }
    TYPE.store(t, Relaxed);
    // SAFETY: the env of this callback; atoms are global.
    OK.store(unsafe { enif_make_atom(env, c"ok".as_ptr()) }, Relaxed);
    0
}

unsafe extern "C" fn upgrade(
    env: Env,
    p: *mut *mut c_void,
    _old: *mut *mut c_void,
    info: Term,
) -> c_int {
    // SAFETY: the same contract as `load`.
    unsafe { on_load(env, p, info) }
}

const NFUNCS: usize = 10;

struct Funcs([ErlNifFunc; NFUNCS]);
// SAFETY: the names point at string literals; nothing is ever changed.
unsafe impl Sync for Funcs {}

static FUNCS: Funcs = Funcs([
    ErlNifFunc {
        name: c"mark".as_ptr(),
        arity: 0,
        function: emmap_bench_mark,
        flags: 0,
    },
    ErlNifFunc {
        name: c"new".as_ptr(),
        arity: 0,
        function: new,
        flags: 0,
    },
    ErlNifFunc {
        name: c"int".as_ptr(),
        arity: 3,
        function: int_,
        flags: 0,
    },
    ErlNifFunc {
        name: c"ok_int".as_ptr(),
        arity: 3,
        function: ok_int,
        flags: 0,
    },
    ErlNifFunc {
        name: c"bin40".as_ptr(),
        arity: 3,
        function: bin40,
        flags: 0,
    },
    ErlNifFunc {
        name: c"copy40".as_ptr(),
        arity: 3,
        function: copy40,
        flags: 0,
    },
    ErlNifFunc {
        name: c"write".as_ptr(),
        arity: 3,
        function: write,
        flags: 0,
    },
    ErlNifFunc {
        name: c"map".as_ptr(),
        arity: 2,
        function: map,
        flags: 0,
    },
    ErlNifFunc {
        name: c"map_write".as_ptr(),
        arity: 3,
        function: map_write,
        flags: 0,
    },
    ErlNifFunc {
        name: c"map_copy".as_ptr(),
        arity: 3,
        function: map_copy,
        flags: 0,
    },
]);

struct Entry(ErlNifEntry);
// SAFETY: every pointer in the entry points at statics that are never changed.
unsafe impl Sync for Entry {}

static ENTRY: Entry = Entry(ErlNifEntry {
    major: 2,
    minor: 16,
    name: c"emmap_bench_floor".as_ptr(),
    num_of_funcs: NFUNCS as c_int,
    funcs: FUNCS.0.as_ptr(),
    load: Some(on_load),
    reload: ptr::null(),
    upgrade: Some(upgrade),
    unload: ptr::null(),
    vm_variant: c"beam.vanilla".as_ptr(),
    options: 1,
    sizeof_resource_type_init: 5 * std::mem::size_of::<usize>(),
    min_erts: c"erts-12.0".as_ptr(),
});

/// The symbol the VM looks up in a NIF library.
#[no_mangle]
pub extern "C" fn nif_init() -> *const ErlNifEntry {
    &ENTRY.0
}
