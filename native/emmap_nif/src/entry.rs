//! The library's entry point, `nif_init`, with the list of every NIF the library has.
//!
//! The library belongs to the Erlang module `emmap_nif`, which holds a stub for each NIF
//! below and nothing else the user calls. The entry is built here, not by `rustler::init!`,
//! which fills in only a `load` callback: loading `emmap_nif` again while its old code is
//! still in the VM (`c:l/1`, `code:load_file/1`, IEx `recompile`) makes the VM call the
//! library's `upgrade` callback instead, and without one `on_load` fails and the new
//! module is left without its NIFs. Both callbacks register the handle's resource type;
//! see `resource.rs` for how handles made before a reload stay valid. Both also apply the
//! `sigbus_handler` setting `emmap_nif.erl` passes as load info (see
//! `emmap_core::sigbus`), and this file exports the symbol through which another copy of
//! the library, loaded later from another path, finds the SIGBUS handler's table.
//!
//! Of rustler this library uses the raw NIF interface (`rustler::sys`), its `atoms!` macro
//! and `Atom`, and one API rustler marks `#[doc(hidden)]`: `rustler::sys::ErlNifEntry`
//! (with `ErlNifEntry::new`), the entry's C layout. That is why `Cargo.toml` pins rustler
//! to one exact version.

use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

use emmap_core::sigbus;
use rustler::sys::{
    enif_get_map_value, enif_make_atom_len, ErlNifEntry, ErlNifEnv, ErlNifFunc, ErlNifTerm,
};

use crate::schedule::Nif;
use crate::{atomics, blocks, copy, io, lifecycle, queue, resource};

/// Every NIF, in the order of `emmap_nif.erl`'s stubs.
const NIFS: &[Nif] = &[
    // a handle's life (lifecycle.rs)
    lifecycle::open::NIF,
    lifecycle::close::NIF,
    lifecycle::info::NIF,
    lifecycle::debug::NIF,
    lifecycle::sigbus::NIF,
    lifecycle::stat::NIF,
    lifecycle::flush::NIF,
    lifecycle::sync::NIF,
    lifecycle::advise::NIF,
    lifecycle::resize::NIF,
    lifecycle::truncate::NIF,
    lifecycle::allocate::NIF,
    // reads and writes (io.rs)
    io::pread::NIF,
    io::pwrite::NIF,
    io::read::NIF,
    io::read_line::NIF,
    io::write::NIF,
    io::position::NIF,
    io::ipread::NIF,
    // atomics (atomics.rs)
    atomics::atomic_add::NIF,
    atomics::atomic_sub::NIF,
    atomics::atomic_and::NIF,
    atomics::atomic_or::NIF,
    atomics::atomic_xor::NIF,
    atomics::atomic_xchg::NIF,
    atomics::atomic_cas::NIF,
    atomics::atomic_load::NIF,
    atomics::atomic_store::NIF,
    atomics::counter_add::NIF,
    // block storage (blocks.rs)
    blocks::block_init::NIF,
    blocks::block_store::NIF,
    blocks::block_read::NIF,
    blocks::block_free::NIF,
    blocks::block_chunk::NIF,
    blocks::block_repair::NIF,
    // the queue (queue.rs)
    queue::queue_attach::NIF,
    queue::queue_push::NIF,
    queue::queue_pop::NIF,
    queue::queue_peek::NIF,
    queue::queue_front::NIF,
    queue::queue_advance::NIF,
    queue::queue_header::NIF,
    queue::queue_frame::NIF,
    queue::queue_count::NIF,
    queue::queue_purge::NIF,
    queue::queue_erase::NIF,
];

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
    if std::panic::catch_unwind(|| crate::term::check_small(env)).is_err() {
        return 1;
    }
    match std::panic::catch_unwind(|| resource::register(env) && copy::register(env)) {
        Ok(true) => 0,
        _ => 1,
    }
}

/// The load info is `#{sigbus_handler => boolean()}`; only `false` turns the handler off.
fn handler_wanted(env: *mut ErlNifEnv, info: ErlNifTerm) -> bool {
    let atom = |name: &str| {
        // SAFETY: `env` is the load env, valid for this callback; `name` is valid for its
        // length.
        unsafe { enif_make_atom_len(env, name.as_ptr().cast(), name.len()) }
    };
    let mut v = ErlNifTerm::default();
    // SAFETY: `info` is a term of the load env; `v` is a valid out-pointer (left alone
    // when `info` is no map or lacks the key).
    let found = unsafe { enif_get_map_value(env, info, atom("sigbus_handler"), &mut v) };
    !(found != 0 && v == atom("false"))
}

/// Another copy of this library, loaded later from another path, calls this to use our
/// SIGBUS handler and its table instead of installing a second one (see
/// `emmap_core::sigbus`). Null until this copy has chosen its table (at its first load).
#[no_mangle]
pub extern "C" fn emmap_fault_registry_v1() -> *const sigbus::ApiV1 {
    sigbus::exported()
}

unsafe extern "C" fn load(env: *mut ErlNifEnv, _priv: *mut *mut c_void, info: ErlNifTerm) -> c_int {
    register(env, info)
}

unsafe extern "C" fn upgrade(
    env: *mut ErlNifEnv,
    _priv: *mut *mut c_void,
    _old_priv: *mut *mut c_void,
    info: ErlNifTerm,
) -> c_int {
    register(env, info)
}

/// The symbol the VM looks up in a NIF library.
#[no_mangle]
pub extern "C" fn nif_init() -> *const ErlNifEntry {
    let entry = ENTRY.get_or_init(|| {
        // (On Linux the enif_* functions are linked directly: nothing to set up first.)
        let funcs: &'static [ErlNifFunc] = Box::leak(
            NIFS.iter()
                .map(|n| ErlNifFunc {
                    name: n.name.as_ptr().cast(),
                    arity: n.arity,
                    function: n.func,
                    flags: n.flags,
                })
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        );
        let mut e = ErlNifEntry::new(c"emmap_nif", funcs, load);
        e.upgrade = Some(upgrade);
        Entry(e)
    });
    &entry.0
}
