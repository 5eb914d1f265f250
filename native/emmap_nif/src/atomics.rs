//! 64-bit atomics on the mapping: one NIF per operation, each `(R, Pos, Value)`.
//!
//! `Pos` outside 0..2^64-1 answers `{error, einval}`; `Value` may be any integer in
//! `[-2^63, 2^64)` (the unsigned half stored as the signed value with the same bits),
//! anything else is `badarg`. The answers are bare: the old value (`emmap.erl` makes it
//! `{ok, Old}`; the counters return it as it is), or `{error, Reason}`.

use emmap_core::atomics::Op;

use crate::atoms;
use crate::resource::handle;
use crate::schedule::nif;
use crate::term::{self, atom, Stop};

/// A NIF applying `$op`: the old value.
macro_rules! atomic_nif {
    ($name:literal, $m:ident, $op:expr $(, $answered:ident)?) => {
        nif!(normal $name, $m, 3, $($answered,)? |env, a, _on| {
            let h = handle(env, a[0])?;
            let pos = term::int(env, a[1])?;
            let v = term::word(env, a[2])?;
            let old = h.mapping.atomic(pos.or_einval()?, $op, v)?;
            Ok(term::int64(env, old))
        });
    };
}

// The hottest of them (`patomic(M, P, add, V)`, `inc_counter`) answers its `badarg` as
// `{'$emmap_badarg', R, Pos, Value}` (schedule.rs); its callers raise it.
atomic_nif!("atomic_add", atomic_add, Op::Add, badarg_answered);
atomic_nif!("atomic_sub", atomic_sub, Op::Sub);

// `counter_add(R, I, K)`: `atomic_add` on counter `I` of a counters file, the 8 bytes at
// `16 + 8 * I` (`emmap_counters` has checked `I` against the file's count; computing the
// offset here spares `inc_counter` two checked operations in Erlang). The old value;
// `einval` for an `I` whose offset is past 2^64 - 1; `badarg` answered as `atomic_add`'s.
nif!(normal "counter_add", counter_add, 3, badarg_answered, |env, a, _on| {
    let h = handle(env, a[0])?;
    let i = term::int(env, a[1])?;
    let v = term::word(env, a[2])?;
    let pos = i
        .or_einval()?
        .checked_mul(8)
        .and_then(|p| p.checked_add(16))
        .ok_or(Stop::Error(emmap_core::Error::Einval))?;
    Ok(term::int64(env, h.mapping.atomic(pos, Op::Add, v)?))
});
atomic_nif!("atomic_and", atomic_and, Op::And);
atomic_nif!("atomic_or", atomic_or, Op::Or);
atomic_nif!("atomic_xor", atomic_xor, Op::Xor);
atomic_nif!("atomic_xchg", atomic_xchg, Op::Xchg);

// `atomic_cas(R, Pos, Expected, New)`: `{true, Expected}` if it stored `New`, else
// `{false, Current}`.
nif!(normal "atomic_cas", atomic_cas, 4, |env, a, _on| {
    let h = handle(env, a[0])?;
    let pos = term::int(env, a[1])?;
    let (expected, new) = (term::word(env, a[2])?, term::word(env, a[3])?);
    let (won, v) = match h.mapping.cas(pos.or_einval()?, expected, new)? {
        Ok(old) => (true, old),
        Err(current) => (false, current),
    };
    Ok(term::tuple2(env, term::boolean_term(won), term::int64(env, v)))
});

// `atomic_load(R, Pos)`: the value.
nif!(normal "atomic_load", atomic_load, 2, |env, a, _on| {
    let h = handle(env, a[0])?;
    let pos = term::int(env, a[1])?.or_einval()?;
    Ok(term::int64(env, h.mapping.atomic_load(pos)?))
});

// `atomic_store(R, Pos, Value)`: `ok`.
nif!(normal "atomic_store", atomic_store, 3, |env, a, _on| {
    let h = handle(env, a[0])?;
    let pos = term::int(env, a[1])?;
    let v = term::word(env, a[2])?;
    h.mapping.atomic_store(pos.or_einval()?, v)?;
    Ok(atom(atoms::ok()))
});
