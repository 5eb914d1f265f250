//! The handle's resource type, registered directly with the VM, and kept usable across
//! reloads of the `emmap_nif` module (which loads this library) and of `emmap`.
//!
//! rustler's `ResourceArc` looks the resource type up in a hash map on every decode; on a
//! ~50 ns call that lookup is a large share. Registering the type ourselves keeps its
//! pointer in one static, so decoding a handle is a single `enif_get_resource`.
//!
//! Reloading. When the `emmap_nif` module is loaded again (`c:l/1`, `code:load_file/1`,
//! rebar3's `r3:compile()`, IEx `recompile`), the VM calls `load_nif` again. (Reloading
//! `emmap` alone does not touch the library: handles are just terms to it.) The OS hands
//! back this same library (same path, already loaded), so the statics below survive and
//! the new module instance runs exactly this code. Two cases:
//!
//! - upgrade (the old module instance is still there): opening our type with
//!   `ERL_NIF_RT_TAKEOVER` returns the same type; nothing changes for existing handles.
//! - load after the old instance was purged (rebar3 deletes and purges modules with an
//!   `on_load` before loading them again): the VM dropped the old type from its table
//!   but keeps it alive while handles of it exist, so the new load creates another type.
//!   We remember every type of ours that still has live objects, and `get` accepts them
//!   too: handles opened before the reload keep working, and their destructor (this code)
//!   still runs when they are collected.
//!
//! The type's name contains the address of a static of this library instance. A library
//! loaded from another path (another release) is another instance with other code; it
//! gets a type of its own and never takes over ours (whose objects it could not read):
//! handles from before such a reload are `badarg` to the new code and are still released
//! by the old library, which the VM keeps loaded until they are gone.

use std::ffi::{c_void, CString};
use std::mem::{align_of, size_of, MaybeUninit};
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::Mutex;

use emmap_core::blocks::Cache;
use emmap_core::queue::Queue;
use emmap_core::Mapping;
use rustler::sys::{
    enif_alloc_resource, enif_get_resource, enif_make_resource, enif_make_resource_binary,
    enif_open_resource_type, enif_release_resource, ErlNifEnv, ErlNifResourceFlags,
    ErlNifResourceType,
};

use crate::term::{self, Env, Stop, Term};

/// What an Erlang handle refers to: the mapping, the VM's pointer to the resource object
/// holding it (needed to make resource binaries) and the type it was allocated with.
pub struct Handle {
    pub mapping: Mapping,
    /// Serialises this handle's queue operations (`emmap_queue`).
    pub queue: Queue,
    /// The block storage headers this handle has validated (`emmap_blocks`).
    pub blocks: Cache,
    raw: *const c_void,
    ty: *mut ErlNifResourceType,
}

// SAFETY: `raw` and `ty` are opaque VM pointers used only as identifiers passed back to
// the VM or compared; `Mapping` is Send + Sync.
unsafe impl Send for Handle {}
// SAFETY: see `Send`.
unsafe impl Sync for Handle {}

/// The type new handles are made with (the decode fast path reads only this).
static CURRENT: AtomicPtr<ErlNifResourceType> = AtomicPtr::new(ptr::null_mut());
/// How many older types with live objects `TYPES` holds (0: skip the slow path).
static OLDER: AtomicUsize = AtomicUsize::new(0);
/// Every type of this library instance that may still be alive, as (address, live
/// objects). An entry other than `CURRENT` always has live objects, and each of them keeps
/// the VM's type alive: comparing against such an entry never meets a freed (and perhaps
/// reused) address.
static TYPES: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

fn types() -> std::sync::MutexGuard<'static, Vec<(usize, usize)>> {
    // The lock is never held across a call that can panic, so poisoning cannot happen;
    // recover anyway rather than panic in a destructor.
    TYPES.lock().unwrap_or_else(|e| e.into_inner())
}

fn count_older(v: &[(usize, usize)]) {
    let cur = CURRENT.load(Ordering::Relaxed) as usize;
    OLDER.store(v.iter().filter(|e| e.0 != cur).count(), Ordering::Release);
}

const ALLOC: usize = size_of::<Handle>() + align_of::<Handle>();

fn aligned(obj: *const c_void) -> *mut Handle {
    let off = (align_of::<Handle>() - (obj as usize) % align_of::<Handle>()) % align_of::<Handle>();
    (obj as usize + off) as *mut Handle
}

unsafe extern "C" fn destructor(_env: *mut ErlNifEnv, obj: *mut c_void) {
    let h = aligned(obj);
    // SAFETY: the VM calls this once, after the last reference (handle term or resource
    // binary) is gone; `obj` holds a `Handle` written by `new_term`, dropped only below.
    let ty = unsafe { (*h).ty } as usize;
    // SAFETY: as above; nothing uses the `Handle` after this.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
        ptr::drop_in_place(h)
    }));
    // Even if the drop panicked: the object is gone, and its type must be accounted for.
    let _ = std::panic::catch_unwind(|| object_gone(ty));
}

/// One object of type `ty` is gone.
fn object_gone(ty: usize) {
    let mut v = types();
    if let Some(i) = v.iter().position(|e| e.0 == ty) {
        v[i].1 = v[i].1.saturating_sub(1);
        // The VM frees a type that left its table once its last object is gone: forget
        // it now, while it still exists.
        if v[i].1 == 0 && ty != CURRENT.load(Ordering::Relaxed) as usize {
            v.swap_remove(i);
            count_older(&v);
        }
    }
}

/// The name of our type: unique to this library instance (see the module comment).
fn type_name() -> CString {
    let me = &TYPES as *const _ as usize;
    CString::new(format!("emmap_handle@{me:x}")).expect("no NUL in a formatted address")
}

/// Opens (creates, or takes over) the resource type. Only valid in the NIF `load` and
/// `upgrade` callbacks, which the VM never runs concurrently with each other.
pub fn register(env: *mut ErlNifEnv) -> bool {
    let name = type_name();
    // Take over our type if the VM still has it in its table, else create it. (The two
    // flags are tried one at a time: rustler declares them as a Rust enum, in which their
    // union is not a valid value.)
    let mut t = ptr::null();
    for flags in [
        ErlNifResourceFlags::ERL_NIF_RT_TAKEOVER,
        ErlNifResourceFlags::ERL_NIF_RT_CREATE,
    ] {
        let mut tried = MaybeUninit::uninit();
        // SAFETY: called from `load`/`upgrade` with their env; the name is NUL-terminated
        // and the VM copies it.
        t = unsafe {
            enif_open_resource_type(
                env,
                ptr::null(),
                name.as_ptr(),
                Some(destructor),
                flags,
                tried.as_mut_ptr(),
            )
        };
        if !t.is_null() {
            break;
        }
    }
    if t.is_null() {
        return false;
    }
    let t = t as *mut ErlNifResourceType;
    let mut v = types();
    let prev = CURRENT.load(Ordering::Relaxed) as usize;
    if prev != 0 && prev != t as usize {
        // `prev` left the VM's table (a takeover would have returned it). Without live
        // objects it is already freed: forget it before remembering `t`, which may even
        // have the same address.
        if let Some(i) = v.iter().position(|e| e.0 == prev && e.1 == 0) {
            v.swap_remove(i);
        }
    }
    if !v.iter().any(|e| e.0 == t as usize) {
        v.push((t as usize, 0));
    }
    CURRENT.store(t, Ordering::Release);
    count_older(&v);
    true
}

/// Wraps a new mapping in a resource and returns the handle term.
pub fn new_term(env: Env<'_>, mapping: Mapping) -> Term {
    let t = {
        let mut v = types();
        let t = CURRENT.load(Ordering::Acquire);
        if let Some(e) = v.iter_mut().find(|e| e.0 == t as usize) {
            e.1 += 1;
        }
        t
    };
    // SAFETY: `t` was registered at load; the allocation is large enough for an aligned
    // `Handle`; the VM owns the memory and runs `destructor` when its refcount drops to 0.
    // `enif_make_resource` takes its own reference, so we release ours.
    unsafe {
        let obj = enif_alloc_resource(t, ALLOC);
        ptr::write(
            aligned(obj),
            Handle {
                mapping,
                queue: Queue::default(),
                blocks: Cache::default(),
                raw: obj,
                ty: t,
            },
        );
        let term = enif_make_resource(env.raw(), obj);
        enif_release_resource(obj);
        term
    }
}

/// The handle behind a term of the call whose env is `env`, if it is one. The reference
/// borrows the call (see `term::Env`): the term, an argument of the call, keeps the
/// resource alive until the call returns.
#[inline(always)]
pub fn get<'a>(env: Env<'a>, term: Term) -> Option<&'a Handle> {
    let t = CURRENT.load(Ordering::Relaxed);
    let mut obj: *const c_void = ptr::null();
    // SAFETY: `env` and `term` come from the current NIF call; `t` is our registered type.
    let ok = unsafe { enif_get_resource(env.raw(), term, t, &mut obj) };
    if ok == 0 || obj.is_null() {
        return get_older(env, term);
    }
    // SAFETY: the resource holds a live `Handle` for as long as the term is reachable,
    // which includes this NIF call.
    Some(unsafe { &*aligned(obj) })
}

/// The handle an argument names; `badarg` for anything else.
#[inline(always)]
pub fn handle<'a>(env: Env<'a>, t: Term) -> Result<&'a Handle, Stop> {
    get(env, t).ok_or(Stop::Badarg)
}

/// A handle made before the module was reloaded (see the module comment).
#[cold]
fn get_older<'a>(env: Env<'a>, term: Term) -> Option<&'a Handle> {
    if OLDER.load(Ordering::Acquire) == 0 {
        return None;
    }
    let v = types();
    let cur = CURRENT.load(Ordering::Relaxed) as usize;
    for &(t, _) in v.iter().filter(|e| e.0 != cur) {
        let mut obj: *const c_void = ptr::null();
        // SAFETY: `t` has live objects (the lock keeps it so during this loop), so it is a
        // valid type of ours; `env` and `term` come from the current NIF call.
        let ok =
            unsafe { enif_get_resource(env.raw(), term, t as *mut ErlNifResourceType, &mut obj) };
        if ok != 0 && !obj.is_null() {
            // SAFETY: objects of our types hold a live `Handle` while the term is
            // reachable, which includes this NIF call.
            return Some(unsafe { &*aligned(obj) });
        }
    }
    None
}

impl Handle {
    /// Bytes `b` of this handle's mapping as a binary: in `direct` mode a resource binary
    /// pointing at them (it keeps the handle alive), else a copy.
    ///
    /// # Safety
    /// In `direct` mode, `b` must stay mapped for as long as the resource lives, which the
    /// core guarantees for the bytes it hands out after marking the mapping exported
    /// (`Mapping::pread`, `read`, `read_line` in direct mode, `blocks::mark_exported`).
    #[inline(always)]
    pub unsafe fn binary(&self, env: Env<'_>, b: &[u8]) -> Term {
        if self.mapping.options().direct {
            // SAFETY: per this function's contract; the binary keeps a reference to the
            // resource.
            unsafe { enif_make_resource_binary(env.raw(), self.raw, b.as_ptr().cast(), b.len()) }
        } else {
            term::copy(env, b)
        }
    }

    /// The `n` bytes at `p` of this handle's `direct` mapping as a resource binary (which
    /// keeps the handle alive): [`Handle::binary`] for a caller that knows the mapping is
    /// direct.
    ///
    /// # Safety
    /// The mapping is `direct`, and the `n` bytes at `p` stay mapped for as long as the
    /// resource lives (as for [`Handle::binary`]).
    #[inline(always)]
    pub unsafe fn direct_binary(&self, env: Env<'_>, p: *const u8, n: usize) -> Term {
        debug_assert!(self.mapping.options().direct);
        // SAFETY: per this function's contract; the binary keeps a reference to the
        // resource.
        unsafe { enif_make_resource_binary(env.raw(), self.raw, p.cast(), n) }
    }
}
