//! The hot-path NIFs, written against the raw NIF interface.
//!
//! rustler's `#[nif]` wrapper collects the arguments into a `Vec` (a malloc and a free per
//! call) and decodes through generic traits; for calls that take ~50 ns that is a third of
//! the cost. These few NIFs decode their arguments directly. Each still catches panics
//! (turning them into `badarg`), and each has a plain Rust body that calls the core.

use std::ffi::{c_char, c_int};

use emmap_core::atomics::Op;
use emmap_core::Error;
use rustler::sys::{enif_make_badarg, ErlNifEnv, ErlNifTerm};

use crate::raw::{self, get_bin, get_i64, get_u64, Raw};
use crate::resource::{self, Handle};
use crate::{atoms, DIRTY_COPY};

/// Defines an `extern "C"` NIF named `$name` of arity `$arity` whose body returns
/// `Option<ErlNifTerm>` (`None` is `badarg`), and registers it with rustler's NIF table.
macro_rules! raw_nif {
    ($name:literal, $f:ident, $arity:literal, |$env:ident, $a:ident| $body:block) => {
        unsafe extern "C" fn $f(
            env: *mut ErlNifEnv,
            argc: c_int,
            argv: *const ErlNifTerm,
        ) -> ErlNifTerm {
            if argc != $arity {
                // SAFETY: `env` is the current NIF env.
                return unsafe { enif_make_badarg(env) };
            }
            // SAFETY: the VM passes `argc` valid terms at `argv` for the call's duration.
            let $a: &[ErlNifTerm] = unsafe { std::slice::from_raw_parts(argv, $arity) };
            let $env: Raw = env;
            let r =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Option<ErlNifTerm> {
                    $body
                }));
            match r {
                Ok(Some(t)) => t,
                // SAFETY: `env` is the current NIF env.
                _ => unsafe { enif_make_badarg(env) },
            }
        }
        rustler::codegen_runtime::inventory::submit!(rustler::Nif {
            name: concat!($name, "\0").as_ptr() as *const c_char,
            arity: $arity,
            flags: 0,
            raw_func: $f,
        });
    };
}

fn reply(env: Raw, r: Result<ErlNifTerm, Error>) -> ErlNifTerm {
    match r {
        Ok(t) => t,
        Err(e) => raw::error(env, e),
    }
}

/// `pread` body shared with the dirty variant: `{ok, Bin}`, `eof`, `{error, R}`, or
/// `dirty` when a copy larger than `DIRTY_COPY` is asked for on a normal scheduler.
pub fn pread(env: Raw, h: &Handle, pos: u64, len: u64, dirty_ok: bool) -> ErlNifTerm {
    let m = &h.mapping;
    let r = if m.options().direct {
        m.pread_direct(pos, len).map(|o| {
            // SAFETY: bytes from `pread_direct` stay mapped while the resource lives.
            o.map(|(p, n)| raw::ok(env, unsafe { resource::direct_binary(env, h, p, n) }))
        })
    } else {
        m.pread(pos, len, |b| {
            if b.len() > DIRTY_COPY && !dirty_ok {
                raw::atom(atoms::dirty())
            } else {
                raw::ok(env, raw::copy(env, b))
            }
        })
    };
    reply(env, r.map(|o| o.unwrap_or_else(|| raw::atom(atoms::eof()))))
}

raw_nif!("pread_nif", pread_nif, 3, |env, a| {
    let h = resource::get(env, a[0])?;
    Some(pread(
        env,
        h,
        get_u64(env, a[1])?,
        get_u64(env, a[2])?,
        false,
    ))
});

raw_nif!("pwrite_nif", pwrite_nif, 3, |env, a| {
    let h = resource::get(env, a[0])?;
    let pos = get_u64(env, a[1])?;
    let data = get_bin(env, a[2])?;
    Some(reply(
        env,
        h.mapping.pwrite(pos, data).map(|_| raw::atom(atoms::ok())),
    ))
});

fn op_of(env: Raw, t: ErlNifTerm) -> Option<Op> {
    Some(match get_u64(env, t)? {
        0 => Op::Add,
        1 => Op::Sub,
        2 => Op::And,
        3 => Op::Or,
        4 => Op::Xor,
        5 => Op::Xchg,
        _ => return None,
    })
}

raw_nif!("patomic_nif", patomic_nif, 4, |env, a| {
    let h = resource::get(env, a[0])?;
    let (pos, op, v) = (get_u64(env, a[1])?, op_of(env, a[2])?, get_i64(env, a[3])?);
    Some(reply(
        env,
        h.mapping
            .atomic(pos, op, v)
            .map(|old| raw::ok(env, raw::int(env, old))),
    ))
});

// Like `patomic_nif`, answering the bare old value: the counters' hot path.
raw_nif!("patomic_old_nif", patomic_old_nif, 4, |env, a| {
    let h = resource::get(env, a[0])?;
    let (pos, op, v) = (get_u64(env, a[1])?, op_of(env, a[2])?, get_i64(env, a[3])?);
    Some(reply(
        env,
        h.mapping.atomic(pos, op, v).map(|old| raw::int(env, old)),
    ))
});

raw_nif!("patomic_read_nif", patomic_read_nif, 2, |env, a| {
    let h = resource::get(env, a[0])?;
    let pos = get_u64(env, a[1])?;
    Some(reply(
        env,
        h.mapping
            .atomic_load(pos)
            .map(|v| raw::ok(env, raw::int(env, v))),
    ))
});

// The counters' read: the bare value.
raw_nif!("patomic_value_nif", patomic_value_nif, 2, |env, a| {
    let h = resource::get(env, a[0])?;
    let pos = get_u64(env, a[1])?;
    Some(reply(
        env,
        h.mapping.atomic_load(pos).map(|v| raw::int(env, v)),
    ))
});

raw_nif!("patomic_write_nif", patomic_write_nif, 3, |env, a| {
    let h = resource::get(env, a[0])?;
    let (pos, v) = (get_u64(env, a[1])?, get_i64(env, a[2])?);
    Some(reply(
        env,
        h.mapping
            .atomic_store(pos, v)
            .map(|_| raw::atom(atoms::ok())),
    ))
});

raw_nif!("patomic_cas_nif", patomic_cas_nif, 4, |env, a| {
    let h = resource::get(env, a[0])?;
    let (pos, exp, new) = (
        get_u64(env, a[1])?,
        get_i64(env, a[2])?,
        get_i64(env, a[3])?,
    );
    let r = h.mapping.cas(pos, exp, new).map(|r| {
        let (won, v) = match r {
            Ok(old) => (true, old),
            Err(cur) => (false, cur),
        };
        let flag = if won { atoms::true_() } else { atoms::false_() };
        raw::tuple2(env, raw::atom(flag), raw::int(env, v))
    });
    Some(reply(env, r))
});

// `true` for an emmap handle, `badarg` for anything else: lets emmap.erl refuse forged
// handles on paths that answer without calling into the mapping.
raw_nif!("handle_nif", handle_nif, 1, |env, a| {
    resource::get(env, a[0])?;
    Some(raw::atom(atoms::true_()))
});
