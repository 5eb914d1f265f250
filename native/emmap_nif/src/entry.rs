//! The library's entry point, `nif_init`, built here instead of by `rustler::init!`.
//!
//! `rustler::init!` fills in only a `load` callback. Loading the `emmap` module again while
//! its old code is still in the VM (`c:l/1`, `code:load_file/1`, IEx `recompile`) makes the
//! VM call the library's `upgrade` callback instead, and without one `on_load` fails and
//! the new module is left without its NIFs. This entry is the one rustler builds (the NIFs
//! rustler's `#[nif]` and `hot.rs` registered, the name `emmap`, the same version fields)
//! plus that callback. Both callbacks register the handle's resource type; see
//! `resource.rs` for how handles made before a reload stay valid. Both also apply the
//! `sigbus_handler` setting `emmap.erl` passes as load info (see `emmap_core::sigbus`),
//! and this file exports the symbol through which another copy of the library, loaded
//! later from another path, finds the SIGBUS handler's table.

use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

use emmap_core::sigbus;
use rustler::codegen_runtime::{inventory, ResourceRegistration};
use rustler::sys::{ErlNifEntry, ErlNifEnv, ErlNifFunc, ErlNifTerm};
use rustler::{Env, Nif, Term};

use crate::resource;

/// The entry, made once; the VM keeps the pointer for as long as the library is loaded.
struct Entry(ErlNifEntry);

// SAFETY: the entry's pointers (its name, its function table) point at data that is never
// freed or changed after the entry is built.
unsafe impl Sync for Entry {}
// SAFETY: see `Sync`.
unsafe impl Send for Entry {}

static ENTRY: OnceLock<Entry> = OnceLock::new();

/// Registers our resource type and applies the load info; used by both callbacks.
/// Panics become a failed load.
fn register(env: *mut ErlNifEnv, info: ErlNifTerm) -> c_int {
    let handler = std::panic::catch_unwind(|| {
        sigbus::configure(handler_wanted(env, info));
    });
    if handler.is_err() {
        return 1;
    }
    match std::panic::catch_unwind(|| resource::register(env)) {
        Ok(true) => 0,
        _ => 1,
    }
}

/// The load info is `#{sigbus_handler => boolean()}`; only `false` turns the handler off.
fn handler_wanted(env: *mut ErlNifEnv, info: ErlNifTerm) -> bool {
    // SAFETY: `env` is the load env, valid for this callback, and `info` one of its terms.
    let e = unsafe { Env::new_init_env(&env, env) };
    // SAFETY: as above.
    let t = unsafe { Term::new(e, info) };
    let key = rustler::Atom::from_str(e, "sigbus_handler").map(|a| a.to_term(e));
    !matches!(
        key.and_then(|k| t.map_get(k))
            .and_then(|v| v.decode::<bool>()),
        Ok(false)
    )
}

/// Another copy of this library, loaded later from another path, calls this to use our
/// SIGBUS handler and its table instead of installing a second one (see
/// `emmap_core::sigbus`). Null until this copy has chosen its table (at its first load).
#[no_mangle]
pub extern "C" fn emmap_fault_registry_v1() -> *const sigbus::ApiV1 {
    sigbus::exported()
}

unsafe extern "C" fn load(env: *mut ErlNifEnv, _priv: *mut *mut c_void, info: ErlNifTerm) -> c_int {
    // Resource types declared the rustler way (there are none today) are registered as
    // `rustler::init!` would.
    let ok = std::panic::catch_unwind(|| {
        // SAFETY: `env` is the load env, valid for this callback.
        let e = unsafe { Env::new_init_env(&env, env) };
        ResourceRegistration::register_all_collected(e).is_ok()
    });
    if !matches!(ok, Ok(true)) {
        return 1;
    }
    register(env, info)
}

unsafe extern "C" fn upgrade(
    env: *mut ErlNifEnv,
    _priv: *mut *mut c_void,
    _old_priv: *mut *mut c_void,
    info: ErlNifTerm,
) -> c_int {
    // rustler registers its resource types with `ERL_NIF_RT_CREATE` only, which fails on
    // an upgrade; refuse openly if any exist rather than run without them.
    if inventory::iter::<ResourceRegistration>().next().is_some() {
        return 1;
    }
    register(env, info)
}

/// The symbol the VM looks up in a NIF library.
#[no_mangle]
pub extern "C" fn nif_init() -> *const ErlNifEntry {
    let entry = ENTRY.get_or_init(|| {
        // SAFETY: rustler's own entry point calls this first; on Linux, where the enif_*
        // symbols are linked directly, it does nothing.
        unsafe { rustler::codegen_runtime::internal_write_symbols() };
        let funcs: &'static [ErlNifFunc] = Box::leak(
            inventory::iter::<Nif>()
                .map(Nif::get_def)
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        );
        let mut e = ErlNifEntry::new(c"emmap", funcs, load);
        e.upgrade = Some(upgrade);
        Entry(e)
    });
    &entry.0
}
