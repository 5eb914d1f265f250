//! Term helpers on raw VM handles, shared by the hot-path NIFs (`hot.rs`) and the rustler
//! NIFs (`lib.rs`). Everything here only reads its arguments and builds new terms.

use std::mem::MaybeUninit;

use emmap_core::Error;
use rustler::sys::{
    enif_get_long, enif_get_ulong, enif_inspect_binary, enif_make_list_from_array, enif_make_long,
    enif_make_new_binary, enif_make_tuple_from_array, enif_make_uint64, ErlNifBinary, ErlNifEnv,
    ErlNifTerm,
};
use rustler::{Atom, Encoder, Env};

use crate::atoms;

pub type Raw = *mut ErlNifEnv;

#[inline]
pub fn get_u64(env: Raw, t: ErlNifTerm) -> Option<u64> {
    let mut v: std::ffi::c_ulong = 0;
    // SAFETY: `env`/`t` belong to the running NIF call; `v` is a valid out-pointer.
    (unsafe { enif_get_ulong(env, t, &mut v) } != 0).then_some(v as u64)
}

#[inline]
pub fn get_i64(env: Raw, t: ErlNifTerm) -> Option<i64> {
    let mut v: std::ffi::c_long = 0;
    // SAFETY: as in `get_u64`.
    (unsafe { enif_get_long(env, t, &mut v) } != 0).then_some(v as i64)
}

/// The bytes of a binary term, valid for the duration of the NIF call.
#[inline]
pub fn get_bin<'a>(env: Raw, t: ErlNifTerm) -> Option<&'a [u8]> {
    let mut b = MaybeUninit::<ErlNifBinary>::uninit();
    // SAFETY: on success the VM fills `b`; its data stays valid while the term is alive,
    // i.e. for this NIF call.
    unsafe {
        if enif_inspect_binary(env, t, b.as_mut_ptr()) == 0 {
            return None;
        }
        let b = b.assume_init();
        Some(if b.size == 0 {
            &[]
        } else {
            std::slice::from_raw_parts(b.data, b.size)
        })
    }
}

#[inline]
pub fn atom(a: Atom) -> ErlNifTerm {
    a.as_c_arg()
}

#[inline]
pub fn int(env: Raw, v: i64) -> ErlNifTerm {
    // SAFETY: plain value conversion in the current env.
    unsafe { enif_make_long(env, v as std::ffi::c_long) }
}

#[inline]
pub fn tuple2(env: Raw, a: ErlNifTerm, b: ErlNifTerm) -> ErlNifTerm {
    let arr = [a, b];
    // SAFETY: `arr` holds two valid terms of this env.
    unsafe { enif_make_tuple_from_array(env, arr.as_ptr(), 2) }
}

/// A tuple of the terms in `items` (all of this env).
#[inline]
pub fn tuple(env: Raw, items: &[ErlNifTerm]) -> ErlNifTerm {
    // SAFETY: `items` holds `items.len()` valid terms of this env.
    unsafe { enif_make_tuple_from_array(env, items.as_ptr(), items.len() as _) }
}

/// A list of the terms in `items` (all of this env).
#[inline]
pub fn list(env: Raw, items: &[ErlNifTerm]) -> ErlNifTerm {
    // SAFETY: `items` holds `items.len()` valid terms of this env.
    unsafe { enif_make_list_from_array(env, items.as_ptr(), items.len() as _) }
}

#[inline]
pub fn uint(env: Raw, v: u64) -> ErlNifTerm {
    // SAFETY: plain value conversion in the current env.
    unsafe { enif_make_uint64(env, v) }
}

/// `true` or `false` as a bool; `None` for any other term.
#[inline]
pub fn get_bool(t: ErlNifTerm) -> Option<bool> {
    if t == atom(atoms::true_()) {
        Some(true)
    } else if t == atom(atoms::false_()) {
        Some(false)
    } else {
        None
    }
}

#[inline]
pub fn ok(env: Raw, v: ErlNifTerm) -> ErlNifTerm {
    tuple2(env, atom(atoms::ok()), v)
}

/// A fresh binary holding a copy of `bytes` (a heap binary up to 64 bytes).
#[inline]
pub fn copy(env: Raw, bytes: &[u8]) -> ErlNifTerm {
    let mut term = MaybeUninit::<ErlNifTerm>::uninit();
    // SAFETY: the VM returns a writable buffer of `bytes.len()` bytes for the new binary
    // and fills in `term`.
    unsafe {
        let p = enif_make_new_binary(env, bytes.len(), term.as_mut_ptr());
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
        term.assume_init()
    }
}

/// `{error, Reason}`.
pub fn error(env: Raw, e: Error) -> ErlNifTerm {
    let marker = ();
    // SAFETY: `env` is the current NIF env; the `Env` does not outlive this call.
    let e2 = unsafe { Env::new(&marker, env) };
    let reason = Atom::from_str(e2, e.atom()).unwrap_or_else(|_| atoms::error());
    tuple2(env, atom(atoms::error()), reason.encode(e2).as_c_arg())
}
