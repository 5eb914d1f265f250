//! How every NIF is defined, and where it runs: on the calling process's normal
//! scheduler, or, when its work may take longer than about a millisecond, on a dirty I/O
//! scheduler. This is the one place that decides how that happens.
//!
//! A NIF written with [`nif!`] has a body `|env, args, on| -> Answer` (see `term.rs`). The
//! body decodes its arguments (handle first), looks at cheap facts (a length, a block size,
//! whether a store would have to grow the file) and either does the work and returns its
//! answer, or, on a normal scheduler, returns `Err(Stop::Dirty)` having changed nothing.
//! Then the NIF reschedules itself with `enif_schedule_nif`: the same body runs again,
//! with the same arguments, on a dirty I/O scheduler, where `on` is [`On::DirtyIo`].
//! Erlang sees one call and one result: no `*_dirty` twin, no retry, no size threshold in
//! Erlang. NIFs whose every call may be long (`dirty` in the macro: open, close, sync,
//! resize, truncate, allocate, block storage's init, the queue's attach) are registered
//! as dirty I/O NIFs and always run with `On::DirtyIo`.
//!
//! The copy threshold [`DIRTY_BYTES`] is the same for every NIF: copies, checksums and
//! scans above it move.
//!
//! Every body runs inside `catch_unwind`: a panic becomes `badarg` (see [`badarg`]), never
//! an abort. The arguments are read straight from the VM's array (rustler's generic
//! `#[nif]` wrapper would collect them into a `Vec` on every call, a third of a 50 ns
//! call).

use std::ffi::{c_char, c_int, c_uint};

use emmap_core::growth::Growth;
use rustler::sys::{
    enif_make_badarg, enif_schedule_nif, ErlNifEnv, ErlNifTerm, ERL_NIF_DIRTY_JOB_IO_BOUND,
};

use crate::term::{self, Answer, Env, Stop, Term};

/// Copies (and checksums, and line scans) longer than this run on a dirty I/O scheduler:
/// at a few GB/s, about 20-30 µs of work at most on a normal one.
pub const DIRTY_BYTES: usize = 64 * 1024;

/// A raw NIF function, as the VM calls it.
pub type NifFn = unsafe extern "C" fn(*mut ErlNifEnv, c_int, *const ErlNifTerm) -> ErlNifTerm;

/// A NIF body: the call's env, its arguments, where it runs. The lifetime is the call's:
/// whatever the body borrows from the env (a handle, a binary's bytes) stays inside it.
pub type Body = for<'a> fn(Env<'a>, &'a [Term], On) -> Answer;

/// The scheduler a body runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    /// A normal scheduler: the body must stay short (well below a millisecond).
    Normal,
    /// A dirty I/O scheduler: the body may take as long as the work needs.
    DirtyIo,
}

impl On {
    #[inline(always)]
    pub fn is_normal(self) -> bool {
        self == On::Normal
    }

    /// Whether an operation may grow its mapping here.
    pub fn growth(self) -> Growth {
        match self {
            On::Normal => Growth::Refused,
            On::DirtyIo => Growth::Allowed,
        }
    }

    /// `Err(Stop::Dirty)` when copying `bytes` is too much work for this scheduler.
    #[inline(always)]
    pub fn may_touch(self, bytes: u64) -> Result<(), Stop> {
        if self.is_normal() && bytes > DIRTY_BYTES as u64 {
            Err(Stop::Dirty)
        } else {
            Ok(())
        }
    }
}

/// A NIF as the library's entry lists it (`entry.rs`).
pub struct Nif {
    /// The Erlang function's name, NUL-terminated.
    pub name: &'static [u8],
    pub arity: c_uint,
    /// 0, or `ERL_NIF_DIRTY_JOB_IO_BOUND` for a NIF that always runs dirty.
    pub flags: c_uint,
    pub func: NifFn,
}

/// What [`run`] needs to know about a NIF.
pub struct Def {
    pub name: &'static [u8],
    pub arity: usize,
    pub body: Body,
    /// The NIF's dirty-scheduler entry, for rescheduling.
    pub dirty: NifFn,
    /// Answers `{'$emmap_badarg', Arg1, ..., ArgN}` where other NIFs raise `badarg`
    /// (see [`badarg`]).
    pub badarg_answered: bool,
}

/// Flags of a NIF that always runs on a dirty I/O scheduler.
pub const DIRTY_IO: c_uint = ERL_NIF_DIRTY_JOB_IO_BOUND as c_uint;

/// Runs the body of NIF `def` on scheduler `on`, rescheduling to its dirty entry if the
/// body asks.
///
/// # Safety
/// `env`, `argc` and `argv` must be what the VM passed to the NIF being run.
#[inline(always)]
pub unsafe fn run(
    def: &Def,
    on: On,
    env: *mut ErlNifEnv,
    argc: c_int,
    argv: *const ErlNifTerm,
) -> ErlNifTerm {
    if usize::try_from(argc) != Ok(def.arity) {
        // SAFETY: `env` is the current NIF env.
        return unsafe { enif_make_badarg(env) };
    }
    // SAFETY: the VM passes `argc` valid terms at `argv` for the call's duration, and the
    // env is this call's; neither borrow leaves this function.
    let (args, e) = unsafe { (std::slice::from_raw_parts(argv, def.arity), Env::new(env)) };
    // The answer is made inside the closure, so that what leaves `catch_unwind` is one
    // term (a register) rather than a `Result` passed through memory.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        match (def.body)(e, args, on) {
            Ok(t) => t,
            // SAFETY: as this function's (same env and arguments).
            Err(s) => unsafe { stopped(def, on, e, s, argc, argv) },
        }
    }));
    match r {
        Ok(t) => t,
        // A panic.
        // SAFETY: as this function's.
        Err(_) => unsafe { badarg(def, e, argc, argv) },
    }
}

/// `badarg` for NIF `def`: raised, or, for a NIF defined with `badarg_answered`, the
/// answer `{'$emmap_badarg', Arg1, ..., ArgN}` (its arguments as it got them), which the
/// calling function raises again with its own arguments. For the hottest calls: catching
/// a raised `badarg` costs the caller a `try` frame holding its arguments on every call,
/// even when nothing is raised.
///
/// # Safety
/// As for [`run`]: `e`, `argc` and `argv` are what the VM passed to the NIF being run.
#[cold]
#[inline(never)]
unsafe fn badarg(def: &Def, e: Env<'_>, argc: c_int, argv: *const ErlNifTerm) -> ErlNifTerm {
    if def.badarg_answered && usize::try_from(argc) == Ok(def.arity) {
        // SAFETY: the VM passes `argc` valid terms at `argv` for the call's duration.
        let args = unsafe { std::slice::from_raw_parts(argv, def.arity) };
        let mut items = Vec::with_capacity(def.arity + 1);
        items.push(term::atom(crate::atoms::emmap_badarg()));
        items.extend_from_slice(args);
        return term::tuple(e, &items);
    }
    // SAFETY: `e` is the current NIF env.
    unsafe { enif_make_badarg(e.raw()) }
}

/// What NIF `def`, run on `on`, answers for a body that stopped with `s`: its move to
/// the dirty entry, `{error, Reason}`, or `badarg`.
///
/// # Safety
/// As for [`run`]: `e`, `argc` and `argv` are what the VM passed to the NIF being run.
#[cold]
#[inline(never)]
unsafe fn stopped(
    def: &Def,
    on: On,
    e: Env<'_>,
    s: Stop,
    argc: c_int,
    argv: *const ErlNifTerm,
) -> ErlNifTerm {
    match s {
        Stop::Dirty if on == On::Normal => {
            // SAFETY: `def.name` is NUL-terminated and static; `def.dirty` is this NIF's
            // dirty-scheduler entry, taking the same `argc` arguments, which stay valid
            // (they are the call's own terms).
            unsafe {
                enif_schedule_nif(
                    e.raw(),
                    def.name.as_ptr() as *const c_char,
                    ERL_NIF_DIRTY_JOB_IO_BOUND as c_int,
                    def.dirty,
                    argc,
                    argv,
                )
            }
        }
        s => match term::stopped(e, s) {
            Some(t) => t,
            // `badarg`, or a body asking to move while already on a dirty scheduler (a
            // bug: refusing beats looping).
            // SAFETY: as this function's.
            None => unsafe { badarg(def, e, argc, argv) },
        },
    }
}

/// Defines the raw NIF `$name/$arity` as a module `$m` holding its entries and its
/// [`Nif`] (`$m::NIF`, which `entry.rs` lists).
///
/// `nif!(normal "name", m, arity, |env, args, on| { ... })` starts on a normal scheduler
/// and may move; `nif!(dirty "name", m, arity, |env, args, on| { ... })` always runs on a
/// dirty I/O scheduler.
macro_rules! nif {
    (normal $name:literal, $m:ident, $arity:literal, |$env:ident, $a:ident, $on:ident| $body:block) => {
        $crate::schedule::nif!(@def $name, $m, $arity, 0, $crate::schedule::On::Normal, false,
                               |$env, $a, $on| $body);
    };
    (normal $name:literal, $m:ident, $arity:literal, badarg_answered,
     |$env:ident, $a:ident, $on:ident| $body:block) => {
        $crate::schedule::nif!(@def $name, $m, $arity, 0, $crate::schedule::On::Normal, true,
                               |$env, $a, $on| $body);
    };
    (dirty $name:literal, $m:ident, $arity:literal, |$env:ident, $a:ident, $on:ident| $body:block) => {
        $crate::schedule::nif!(@def $name, $m, $arity, $crate::schedule::DIRTY_IO,
                               $crate::schedule::On::DirtyIo, false, |$env, $a, $on| $body);
    };
    (@def $name:literal, $m:ident, $arity:literal, $flags:expr, $start:expr, $answered:expr,
     |$env:ident, $a:ident, $on:ident| $body:block) => {
        #[allow(clippy::needless_return, unused_variables)]
        pub(crate) mod $m {
            #[allow(unused_imports)]
            use super::*;
            use rustler::sys::{ErlNifEnv, ErlNifTerm};
            use $crate::schedule::{Def, Nif, On};
            use $crate::term::{Answer, Env, Term};

            const DEF: Def = Def {
                name: concat!($name, "\0").as_bytes(),
                arity: $arity,
                body,
                dirty,
                badarg_answered: $answered,
            };

            /// The NIF, for the library's entry.
            pub const NIF: Nif = Nif {
                name: concat!($name, "\0").as_bytes(),
                arity: $arity,
                flags: $flags,
                func: start,
            };

            // Inlined into `start` (and `dirty`): the call and the answer passed back
            // through memory cost about as much as a short body's own work.
            #[inline(always)]
            fn body<'a>($env: Env<'a>, $a: &'a [Term], $on: On) -> Answer {
                $body
            }

            unsafe extern "C" fn start(
                env: *mut ErlNifEnv,
                argc: std::ffi::c_int,
                argv: *const ErlNifTerm,
            ) -> ErlNifTerm {
                // SAFETY: called by the VM as this NIF, with its env and arguments.
                unsafe { $crate::schedule::run(&DEF, $start, env, argc, argv) }
            }

            unsafe extern "C" fn dirty(
                env: *mut ErlNifEnv,
                argc: std::ffi::c_int,
                argv: *const ErlNifTerm,
            ) -> ErlNifTerm {
                // SAFETY: called by the VM through `enif_schedule_nif` (from `start`), with
                // the env and arguments of the original call.
                unsafe { $crate::schedule::run(&DEF, On::DirtyIo, env, argc, argv) }
            }
        }
    };
}

pub(crate) use nif;
