//! Where a NIF runs, decided in one place: on the calling process's normal scheduler, or,
//! when the work may take longer than about a millisecond, on a dirty I/O scheduler.
//!
//! A NIF written with [`nif!`] has a body `|env, args, on| -> Option<Step>` (`None` is
//! `badarg`). The body looks at the request, and at cheap facts the core offers (a block
//! size, a message size, whether a store would have to grow the file), and either does
//! the work and returns [`Step::Done`], or, on a normal scheduler, returns
//! [`Step::Dirty`] having changed nothing. Then the NIF reschedules itself with
//! `enif_schedule_nif`: the same body runs again, with the same arguments, on a dirty I/O
//! scheduler, where `on` is [`On::DirtyIo`]. Erlang sees one call and one result; there
//! is no `*_dirty_nif` twin and no retry in Erlang. NIFs whose every call may be long
//! (`dirty` in the macro) are registered as dirty I/O NIFs and always get `On::DirtyIo`.
//!
//! Every body runs inside `catch_unwind`: a panic becomes `badarg`, never an abort.
//! The arguments are decoded from the raw terms (see `raw.rs`), without rustler's
//! per-call argument vector.

use std::ffi::{c_char, c_int};

use emmap_core::growth::Growth;
use rustler::sys::{
    enif_make_badarg, enif_schedule_nif, ErlNifEnv, ErlNifTerm, ERL_NIF_DIRTY_JOB_IO_BOUND,
};

/// A raw NIF function, as the VM calls it.
pub type NifFn = unsafe extern "C" fn(*mut ErlNifEnv, c_int, *const ErlNifTerm) -> ErlNifTerm;

/// A NIF body: the env, the arguments, where it runs.
pub type Body = fn(*mut ErlNifEnv, &[ErlNifTerm], On) -> Option<Step>;

/// The scheduler a body runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    /// A normal scheduler: the body must stay short (well below a millisecond).
    Normal,
    /// A dirty I/O scheduler: the body may take as long as the work needs.
    DirtyIo,
}

impl On {
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
}

/// What a body did.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    /// The call's result.
    Done(ErlNifTerm),
    /// Nothing yet: run again on a dirty I/O scheduler. Only valid on [`On::Normal`].
    Dirty,
}

/// Flags of a NIF that always runs on a dirty I/O scheduler.
pub const DIRTY_IO: u32 = ERL_NIF_DIRTY_JOB_IO_BOUND;

/// What [`run`] needs to know about a NIF.
pub struct Def {
    /// The NIF's name, NUL-terminated.
    pub name: &'static [u8],
    pub arity: usize,
    pub body: Body,
    /// The NIF's dirty-scheduler entry, for rescheduling.
    pub dirty: NifFn,
}

/// Runs the body of NIF `def` on scheduler `on`, rescheduling to its dirty entry if the
/// body asks.
///
/// # Safety
/// `env`, `argc` and `argv` must be what the VM passed to the NIF being run.
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
    // SAFETY: the VM passes `argc` valid terms at `argv` for the call's duration.
    let args: &[ErlNifTerm] = unsafe { std::slice::from_raw_parts(argv, def.arity) };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (def.body)(env, args, on)));
    match r {
        Ok(Some(Step::Done(t))) => t,
        Ok(Some(Step::Dirty)) if on == On::Normal => {
            // SAFETY: `def.name` is NUL-terminated and static; `def.dirty` is this NIF's
            // dirty-scheduler entry, taking the same `argc` arguments, which stay valid
            // (they are the call's own terms).
            unsafe {
                enif_schedule_nif(
                    env,
                    def.name.as_ptr() as *const c_char,
                    ERL_NIF_DIRTY_JOB_IO_BOUND as c_int,
                    def.dirty,
                    argc,
                    argv,
                )
            }
        }
        // A panic, a bad argument, or a body asking to move while already on a dirty
        // scheduler (a bug: refusing beats looping).
        // SAFETY: `env` is the current NIF env.
        _ => unsafe { enif_make_badarg(env) },
    }
}

/// Defines the raw NIF `$name/$arity` (a module `$m` holding its entries) and registers it.
///
/// `nif!(normal "name", m, arity, |env, args, on| { ... })` starts on a normal scheduler
/// and may move; `nif!(dirty "name", m, arity, |env, args, on| { ... })` always runs on a
/// dirty I/O scheduler.
macro_rules! nif {
    (normal $name:literal, $m:ident, $arity:literal, |$env:ident, $a:ident, $on:ident| $body:block) => {
        $crate::schedule::nif!(@def $name, $m, $arity, 0, $crate::schedule::On::Normal,
                               |$env, $a, $on| $body);
    };
    (dirty $name:literal, $m:ident, $arity:literal, |$env:ident, $a:ident, $on:ident| $body:block) => {
        $crate::schedule::nif!(@def $name, $m, $arity, $crate::schedule::DIRTY_IO,
                               $crate::schedule::On::DirtyIo, |$env, $a, $on| $body);
    };
    (@def $name:literal, $m:ident, $arity:literal, $flags:expr, $start:expr,
     |$env:ident, $a:ident, $on:ident| $body:block) => {
        #[allow(clippy::needless_return)]
        mod $m {
            #[allow(unused_imports)]
            use super::*;
            use rustler::sys::{ErlNifEnv, ErlNifTerm};
            use $crate::schedule::{On, Step};

            const DEF: $crate::schedule::Def = $crate::schedule::Def {
                name: concat!($name, "\0").as_bytes(),
                arity: $arity,
                body,
                dirty,
            };

            fn body(
                $env: *mut ErlNifEnv,
                $a: &[ErlNifTerm],
                $on: On,
            ) -> Option<Step> {
                $body
            }

            pub unsafe extern "C" fn start(
                env: *mut ErlNifEnv,
                argc: std::ffi::c_int,
                argv: *const ErlNifTerm,
            ) -> ErlNifTerm {
                // SAFETY: called by the VM as this NIF, with its env and arguments.
                unsafe { $crate::schedule::run(&DEF, $start, env, argc, argv) }
            }

            pub unsafe extern "C" fn dirty(
                env: *mut ErlNifEnv,
                argc: std::ffi::c_int,
                argv: *const ErlNifTerm,
            ) -> ErlNifTerm {
                // SAFETY: called by the VM through `enif_schedule_nif` (from `start`), with
                // the env and arguments of the original call.
                unsafe { $crate::schedule::run(&DEF, On::DirtyIo, env, argc, argv) }
            }
        }
        rustler::codegen_runtime::inventory::submit!(rustler::Nif {
            name: concat!($name, "\0").as_ptr() as *const std::ffi::c_char,
            arity: $arity,
            flags: $flags,
            raw_func: $m::start,
        });
    };
}

pub(crate) use nif;
