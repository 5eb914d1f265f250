//! Terms: reading the arguments a NIF gets and building what it answers.
//!
//! Every NIF works on the raw NIF interface (no rustler encoders or decoders on any path);
//! the helpers here are the only place that does. [`Stop`] with [`stopped`] is the one way
//! a call ends in `{error, Reason}`, `badarg` or a move to a dirty scheduler. (The one way
//! bytes of a mapping become a binary, a resource binary into the mapping in `direct`
//! mode or a copy, is `Handle::binary` in `resource.rs`: it needs the handle.)
//!
//! Integers: a NIF decodes its integer arguments itself, so Erlang clauses carry no range
//! guards. [`int`] tells apart a non-integer (`badarg`) from an integer outside the
//! unsigned 64-bit range ([`Int::Neg`], [`Int::Over`]), which each call then answers the
//! way it documents (usually `{error, einval}`).

use std::ffi::{c_int, c_uint};
use std::marker::PhantomData;
use std::mem::MaybeUninit;

use emmap_core::Error;
use rustler::sys::{
    enif_compare, enif_get_atom, enif_get_int64, enif_get_list_cell, enif_get_tuple,
    enif_get_uint64, enif_inspect_binary, enif_is_empty_list, enif_make_atom_len, enif_make_int,
    enif_make_int64, enif_make_list_from_array, enif_make_map_from_arrays, enif_make_new_binary,
    enif_make_tuple_from_array, enif_make_uint64, enif_term_type, ErlNifBinary, ErlNifCharEncoding,
    ErlNifEnv, ErlNifTerm, ErlNifTermType,
};
use rustler::Atom;

use crate::atoms;

/// A term of the running NIF call.
pub type Term = ErlNifTerm;

/// The env of one NIF call. References made from it (a handle, a binary's bytes) borrow
/// it, so they cannot outlive the call: a NIF body gets an `Env<'a>` for a lifetime `'a`
/// it cannot name outside (see `schedule.rs`).
#[derive(Clone, Copy)]
pub struct Env<'a> {
    raw: *mut ErlNifEnv,
    call: PhantomData<&'a ()>,
}

impl<'a> Env<'a> {
    /// # Safety
    /// `raw` must be the env of the NIF call running now, and `'a` must end before the
    /// call returns.
    #[inline(always)]
    pub unsafe fn new(raw: *mut ErlNifEnv) -> Env<'a> {
        Env {
            raw,
            call: PhantomData,
        }
    }

    #[inline(always)]
    pub fn raw(self) -> *mut ErlNifEnv {
        self.raw
    }
}

/// How a NIF body ends when it does not produce its answer.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// Raise `badarg` (a wrong type; the Erlang function adds what explains it).
    Badarg,
    /// Answer `{error, Reason}` with an error of the core.
    Error(Error),
    /// Answer `{error, Reason}` with one of the containers' own reasons.
    Reason(Atom),
    /// Nothing done yet: run again on a dirty I/O scheduler (`schedule.rs`).
    Dirty,
}

impl From<Error> for Stop {
    #[inline]
    fn from(e: Error) -> Stop {
        Stop::Error(e)
    }
}

/// What a NIF body returns.
pub type Answer = Result<Term, Stop>;

/// The term a [`Stop`] other than `Dirty` answers with; `None` for `badarg`.
#[cold]
pub fn stopped(env: Env<'_>, s: Stop) -> Option<Term> {
    match s {
        Stop::Error(e) => Some(error(env, e)),
        Stop::Reason(a) => Some(tuple2(env, atom(atoms::error()), atom(a))),
        Stop::Badarg | Stop::Dirty => None,
    }
}

/// `{error, Reason}` for an error of the core.
#[cold]
pub fn error(env: Env<'_>, e: Error) -> Term {
    let name = e.atom();
    // SAFETY: `name` is valid for `name.len()` bytes; the atom is made in the call's env.
    let reason = unsafe { enif_make_atom_len(env.raw, name.as_ptr().cast(), name.len()) };
    tuple2(env, atom(atoms::error()), reason)
}

// ------------------------------------------------------------------------ reading

/// An integer argument, which may lie outside the unsigned 64-bit range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int {
    Fits(u64),
    /// Below 0.
    Neg,
    /// Above 2^64 - 1.
    Over,
}

impl Int {
    /// A position or length where the call documents `{error, einval}` outside `u64`.
    #[inline(always)]
    pub fn or_einval(self) -> Result<u64, Stop> {
        match self {
            Int::Fits(v) => Ok(v),
            _ => Err(Stop::Error(Error::Einval)),
        }
    }

    /// A length: negative is `badarg`, anything past `u64` means "all there is".
    #[inline(always)]
    pub fn len(self) -> Result<u64, Stop> {
        match self {
            Int::Fits(v) => Ok(v),
            Int::Over => Ok(u64::MAX),
            Int::Neg => Err(Stop::Badarg),
        }
    }
}

// ------------------------------------------------------------------------ small integers
//
// The VM stores an integer of 60 bits or less as an immediate term: the value shifted
// left by 4 over the tag 0b1111 (ERTS's `_TAG_IMMED1_SMALL` on 64-bit machines). Reading
// and making those inline saves a call into the VM (and its range checks) per integer,
// a tenth of a short NIF. The encoding is the VM's, not the NIF API's: `check_small`
// verifies it when the library is loaded, and without that confirmation every integer
// goes through the API as before.

#[cfg(not(target_pointer_width = "64"))]
compile_error!("the small-integer shortcut assumes 64-bit terms");

const SMALL_TAG: usize = 0xF;
const SMALL_BITS: u32 = 60;
static SMALL_OK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A term's machine word.
#[inline(always)]
fn word_of(t: Term) -> usize {
    // SAFETY: `ErlNifTerm` is a `#[repr(transparent)]` wrapper of a `usize`.
    unsafe { std::mem::transmute::<Term, usize>(t) }
}

/// The small-integer immediate for `v`, if `v` has one (60-bit signed).
#[inline(always)]
fn small_term(v: i64) -> Option<Term> {
    let lim = 1i64 << (SMALL_BITS - 1);
    // SAFETY: `ErlNifTerm` is a `#[repr(transparent)]` wrapper of a `usize`; the word is
    // an immediate (no pointer), valid in any env, when the encoding is the VM's, which
    // callers establish with `small_ok` first.
    ((-lim..lim).contains(&v))
        .then(|| unsafe { std::mem::transmute::<usize, Term>(((v << 4) as usize) | SMALL_TAG) })
}

/// The value of `t` if it is a small-integer immediate.
#[inline(always)]
fn small_value(t: Term) -> Option<i64> {
    let w = word_of(t);
    (w & 0xF == SMALL_TAG).then_some((w as i64) >> 4)
}

#[inline(always)]
fn small_ok() -> bool {
    SMALL_OK.load(std::sync::atomic::Ordering::Relaxed)
}

/// Compares the shortcut with what the VM makes and reads, for values around every edge;
/// turns it on if they agree everywhere. Called from the library's load callbacks.
pub fn check_small(env: *mut ErlNifEnv) {
    let lim = 1i64 << (SMALL_BITS - 1);
    let probes = [
        0,
        1,
        -1,
        5,
        -3,
        1 << 40,
        -(1 << 40),
        lim - 1,
        -lim,
        i64::from(i32::MAX),
    ];
    let agrees = probes.iter().all(|&v| {
        // SAFETY: plain value construction and reading in the load callback's env.
        let (made, back) = unsafe {
            let t = enif_make_int64(env, v);
            let mut back = 0i64;
            let ok = enif_get_int64(env, t, &mut back) != 0;
            (t, ok.then_some(back))
        };
        small_term(v) == Some(made) && small_value(made) == Some(v) && back == Some(v)
    });
    // Values just past the range must not look small.
    // SAFETY: as above.
    let big = unsafe { [enif_make_int64(env, lim), enif_make_int64(env, -lim - 1)] };
    let agrees = agrees && big.iter().all(|&t| small_value(t).is_none());
    SMALL_OK.store(agrees, std::sync::atomic::Ordering::Relaxed);
}

/// An integer argument; `badarg` for anything else.
#[inline(always)]
pub fn int(env: Env<'_>, t: Term) -> Result<Int, Stop> {
    if small_ok() {
        if let Some(v) = small_value(t) {
            return Ok(if v < 0 { Int::Neg } else { Int::Fits(v as u64) });
        }
    }
    let mut v = 0u64;
    // SAFETY: `t` is a term of this call; `v` is a valid out-pointer.
    if unsafe { enif_get_uint64(env.raw, t, &mut v) } != 0 {
        return Ok(Int::Fits(v));
    }
    int_slow(env, t)
}

#[cold]
#[inline(never)]
fn int_slow(env: Env<'_>, t: Term) -> Result<Int, Stop> {
    // SAFETY: a type query on a term of this call.
    let ty = unsafe { enif_term_type(env.raw, t) };
    if !matches!(ty, ErlNifTermType::ERL_NIF_TERM_TYPE_INTEGER) {
        return Err(Stop::Badarg);
    }
    // SAFETY: plain value construction and comparison in this call's env.
    let negative = unsafe { enif_compare(t, enif_make_int(env.raw, 0)) } < 0;
    Ok(if negative { Int::Neg } else { Int::Over })
}

/// A 64-bit value for the atomics: an integer in `[-2^63, 2^64)`, the unsigned half
/// stored as the signed value with the same bits; `badarg` otherwise.
#[inline(always)]
pub fn word(env: Env<'_>, t: Term) -> Result<i64, Stop> {
    if small_ok() {
        if let Some(v) = small_value(t) {
            return Ok(v);
        }
    }
    let mut v = 0i64;
    // SAFETY: `t` is a term of this call; `v` is a valid out-pointer.
    if unsafe { enif_get_int64(env.raw, t, &mut v) } != 0 {
        return Ok(v);
    }
    match int(env, t)? {
        Int::Fits(u) => Ok(u as i64),
        _ => Err(Stop::Badarg),
    }
}

/// A signed 64-bit offset (`position/2`): `{error, einval}` for other integers.
#[inline]
pub fn offset(env: Env<'_>, t: Term) -> Result<i64, Stop> {
    let mut v = 0i64;
    // SAFETY: `t` is a term of this call; `v` is a valid out-pointer.
    if unsafe { enif_get_int64(env.raw, t, &mut v) } != 0 {
        return Ok(v);
    }
    int(env, t)?;
    Err(Stop::Error(Error::Einval))
}

/// The bytes of a binary argument; they live as long as the call.
#[inline(always)]
pub fn bin<'a>(env: Env<'a>, t: Term) -> Result<&'a [u8], Stop> {
    let mut b = MaybeUninit::<ErlNifBinary>::uninit();
    // SAFETY: `t` is a term of this call and `b` a valid out-pointer.
    if unsafe { enif_inspect_binary(env.raw, t, b.as_mut_ptr()) } == 0 {
        return Err(Stop::Badarg);
    }
    // SAFETY: filled in by the successful call above.
    let b = unsafe { b.assume_init() };
    Ok(if b.size == 0 {
        &[]
    } else {
        // SAFETY: the VM keeps a binary's bytes while the term is reachable, which the
        // call's arguments are until it returns, and `'a` ends before that.
        unsafe { std::slice::from_raw_parts(b.data, b.size) }
    })
}

/// `true` or `false`.
#[inline]
pub fn boolean(t: Term) -> Result<bool, Stop> {
    if t == atom(atoms::true_()) {
        Ok(true)
    } else if t == atom(atoms::false_()) {
        Ok(false)
    } else {
        Err(Stop::Badarg)
    }
}

/// The name of an atom argument, if it is an atom of at most 63 ASCII characters.
pub fn atom_name<'b>(env: Env<'_>, t: Term, buf: &'b mut [u8; 64]) -> Option<&'b str> {
    // SAFETY: `t` is a term of this call; the VM writes at most `buf.len()` bytes, the
    // name and a NUL, and answers how many (0 if `t` is no atom or the name does not fit).
    let n = unsafe {
        enif_get_atom(
            env.raw,
            t,
            buf.as_mut_ptr().cast(),
            buf.len() as c_uint,
            ErlNifCharEncoding::ERL_NIF_LATIN1,
        )
    };
    let n = usize::try_from(n).ok()?.checked_sub(1)?;
    std::str::from_utf8(&buf[..n]).ok()
}

/// The elements of a tuple argument.
pub fn tuple_items<'a>(env: Env<'a>, t: Term) -> Result<&'a [Term], Stop> {
    let mut n: c_int = 0;
    let mut items: *const Term = std::ptr::null();
    // SAFETY: `t` is a term of this call; `n` and `items` are valid out-pointers.
    if unsafe { enif_get_tuple(env.raw, t, &mut n, &mut items) } == 0 {
        return Err(Stop::Badarg);
    }
    Ok(if n == 0 {
        &[]
    } else {
        // SAFETY: the VM points `items` at the tuple's `n` elements, which live as long
        // as the tuple, an argument of this call.
        unsafe { std::slice::from_raw_parts(items, n as usize) }
    })
}

/// Calls `f` on each element of a proper list; `badarg` for anything else.
pub fn each(
    env: Env<'_>,
    mut list: Term,
    mut f: impl FnMut(Term) -> Result<(), Stop>,
) -> Result<(), Stop> {
    loop {
        // SAFETY: a type query on a term of this call.
        if unsafe { enif_is_empty_list(env.raw, list) } != 0 {
            return Ok(());
        }
        let (mut head, mut tail) = (Term::default(), Term::default());
        // SAFETY: `list` is a term of this call; `head`/`tail` are valid out-pointers.
        if unsafe { enif_get_list_cell(env.raw, list, &mut head, &mut tail) } == 0 {
            return Err(Stop::Badarg);
        }
        f(head)?;
        list = tail;
    }
}

// ------------------------------------------------------------------------ building

#[inline(always)]
pub fn atom(a: Atom) -> Term {
    a.as_c_arg()
}

#[inline(always)]
pub fn int64(env: Env<'_>, v: i64) -> Term {
    if small_ok() {
        if let Some(t) = small_term(v) {
            return t;
        }
    }
    // SAFETY: plain value construction in this call's env.
    unsafe { enif_make_int64(env.raw, v) }
}

#[inline(always)]
pub fn uint(env: Env<'_>, v: u64) -> Term {
    if small_ok() && v < 1 << (SMALL_BITS - 1) {
        if let Some(t) = small_term(v as i64) {
            return t;
        }
    }
    // SAFETY: plain value construction in this call's env.
    unsafe { enif_make_uint64(env.raw, v) }
}

#[inline(always)]
pub fn boolean_term(v: bool) -> Term {
    atom(if v { atoms::true_() } else { atoms::false_() })
}

#[inline(always)]
pub fn tuple2(env: Env<'_>, a: Term, b: Term) -> Term {
    tuple(env, &[a, b])
}

/// A tuple of the terms in `items` (all of this call).
#[inline(always)]
pub fn tuple(env: Env<'_>, items: &[Term]) -> Term {
    // SAFETY: `items` holds `items.len()` valid terms of this call's env.
    unsafe { enif_make_tuple_from_array(env.raw, items.as_ptr(), items.len() as _) }
}

/// A list of the terms in `items` (all of this call).
#[inline]
pub fn list(env: Env<'_>, items: &[Term]) -> Term {
    // SAFETY: `items` holds `items.len()` valid terms of this call's env.
    unsafe { enif_make_list_from_array(env.raw, items.as_ptr(), items.len() as _) }
}

/// A map of `keys` to `values` (distinct keys, all terms of this call).
pub fn map(env: Env<'_>, keys: &[Term], values: &[Term]) -> Result<Term, Stop> {
    let mut m = Term::default();
    let n = keys.len().min(values.len());
    // SAFETY: both arrays hold at least `n` valid terms; `m` is a valid out-pointer.
    let ok =
        unsafe { enif_make_map_from_arrays(env.raw, keys.as_ptr(), values.as_ptr(), n, &mut m) };
    if ok == 0 {
        return Err(Stop::Badarg);
    }
    Ok(m)
}

/// A new binary of `n` bytes and the bytes to fill in (they live as long as the call).
pub fn new_binary<'a>(env: Env<'a>, n: usize) -> (Term, &'a mut [u8]) {
    let mut t = MaybeUninit::<Term>::uninit();
    // SAFETY: the VM returns a writable buffer of `n` bytes for the new binary, which
    // nothing else references yet and which lives at least as long as this call, and
    // fills in `t`.
    unsafe {
        let p = enif_make_new_binary(env.raw, n, t.as_mut_ptr());
        let bytes = if n == 0 {
            &mut []
        } else {
            std::slice::from_raw_parts_mut(p, n)
        };
        (t.assume_init(), bytes)
    }
}

/// A fresh binary holding a copy of `bytes` (a heap binary up to 64 bytes).
#[inline(always)]
pub fn copy(env: Env<'_>, bytes: &[u8]) -> Term {
    let (t, dst) = new_binary(env, bytes.len());
    dst.copy_from_slice(bytes);
    t
}
