//! The handle's resource type, registered directly with the VM.
//!
//! rustler's `ResourceArc` looks the resource type up in a hash map on every decode; on a
//! ~50 ns call that lookup is a large share. Registering the type ourselves keeps its
//! pointer in one static, so decoding a handle is a single `enif_get_resource`.

use std::ffi::c_void;
use std::mem::{align_of, size_of, MaybeUninit};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

use emmap_core::Mapping;
use rustler::sys::{
    enif_alloc_resource, enif_get_resource, enif_make_resource, enif_make_resource_binary,
    enif_open_resource_type, enif_release_resource, ErlNifEnv, ErlNifResourceFlags,
    ErlNifResourceType, ErlNifTerm,
};
use rustler::{Decoder, Env, NifResult, Term};

/// What an Erlang handle refers to: the mapping, and the VM's pointer to the resource
/// object holding it (needed to make resource binaries).
pub struct Handle {
    pub mapping: Mapping,
    raw: *const c_void,
}

// SAFETY: `raw` is an opaque VM pointer used only as an identifier passed back to the VM;
// `Mapping` is Send + Sync.
unsafe impl Send for Handle {}
// SAFETY: see `Send`.
unsafe impl Sync for Handle {}

static TYPE: AtomicPtr<ErlNifResourceType> = AtomicPtr::new(ptr::null_mut());

const ALLOC: usize = size_of::<Handle>() + align_of::<Handle>();

fn aligned(obj: *const c_void) -> *mut Handle {
    let off = (align_of::<Handle>() - (obj as usize) % align_of::<Handle>()) % align_of::<Handle>();
    (obj as usize + off) as *mut Handle
}

unsafe extern "C" fn destructor(_env: *mut ErlNifEnv, obj: *mut c_void) {
    // SAFETY: the VM calls this once, after the last reference (handle term or resource
    // binary) is gone; `obj` holds a `Handle` written by `new_term`.
    let _ = std::panic::catch_unwind(|| unsafe { ptr::drop_in_place(aligned(obj)) });
}

/// Registers the resource type. Only valid in the NIF `load` callback.
pub fn register(env: Env) -> bool {
    let mut tried = MaybeUninit::uninit();
    // SAFETY: called from `load` with the load env; the name is NUL-terminated and static.
    let t = unsafe {
        enif_open_resource_type(
            env.as_c_arg(),
            ptr::null(),
            c"emmap_handle".as_ptr(),
            Some(destructor),
            ErlNifResourceFlags::ERL_NIF_RT_CREATE,
            tried.as_mut_ptr(),
        )
    };
    if t.is_null() {
        return false;
    }
    TYPE.store(t as *mut ErlNifResourceType, Ordering::Release);
    true
}

/// Wraps a new mapping in a resource and returns the handle term.
pub fn new_term(env: Env<'_>, mapping: Mapping) -> Term<'_> {
    let t = TYPE.load(Ordering::Acquire);
    // SAFETY: `t` was registered at load; the allocation is large enough for an aligned
    // `Handle`; the VM owns the memory and runs `destructor` when its refcount drops to 0.
    // `enif_make_resource` takes its own reference, so we release ours.
    unsafe {
        let obj = enif_alloc_resource(t, ALLOC);
        ptr::write(aligned(obj), Handle { mapping, raw: obj });
        let term = enif_make_resource(env.as_c_arg(), obj);
        enif_release_resource(obj);
        Term::new(env, term)
    }
}

/// The handle behind a term, if it is one.
#[inline]
pub fn get<'a>(env: *mut ErlNifEnv, term: ErlNifTerm) -> Option<&'a Handle> {
    let t = TYPE.load(Ordering::Relaxed);
    let mut obj: *const c_void = ptr::null();
    // SAFETY: `env` and `term` come from the current NIF call; `t` is our registered type.
    let ok = unsafe { enif_get_resource(env, term, t, &mut obj) };
    if ok == 0 || obj.is_null() {
        return None;
    }
    // SAFETY: the resource holds a live `Handle` for as long as the term is reachable,
    // which includes this NIF call.
    Some(unsafe { &*aligned(obj) })
}

impl<'a> Decoder<'a> for &'a Handle {
    fn decode(term: Term<'a>) -> NifResult<Self> {
        get(term.get_env().as_c_arg(), term.as_c_arg()).ok_or(rustler::Error::BadArg)
    }
}

/// A resource binary over `n` bytes at `p` inside `h`'s mapping.
///
/// # Safety
/// `p..p+n` must stay mapped for as long as the resource lives, which
/// `Mapping::pread_direct`/`Mapping::read` guarantee for the bytes they hand out.
#[inline]
pub unsafe fn direct_binary(env: *mut ErlNifEnv, h: &Handle, p: *const u8, n: usize) -> ErlNifTerm {
    // SAFETY: per the function contract; the binary keeps a reference to the resource.
    unsafe { enif_make_resource_binary(env, h.raw, p as *const c_void, n) }
}
