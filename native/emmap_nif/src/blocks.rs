//! NIFs behind `emmap_blocks.erl`: decode, call `emmap_core::blocks`, encode.
//!
//! One NIF per operation, each a raw NIF (see `schedule.rs`). A store, read or free
//! touches one block and runs on the caller's scheduler unless the storage's blocks are
//! larger than `DIRTY_COPY` or a store must grow the mapping: then it moves itself to a
//! dirty I/O scheduler. The scans and repairs stop after a bounded amount of work and hand
//! back a continuation, which the Erlang side loops over. Every call validates the header
//! through the handle's cache (`blocks::Cache`), which makes that a 64-byte compare.

use emmap_core::blocks::{self, BlockError, Budget};
use rustler::sys::{enif_make_new_binary, ErlNifTerm};

use crate::raw::{self, get_bin, get_u64, Raw};
use crate::resource::{self, Handle};
use crate::schedule::{nif, On, Step};
use crate::{atoms, DIRTY_COPY};

/// Bytes one normal-scheduler call may copy or checksum (about 20-50 µs of work).
const CALL_BYTES: u64 = 128 * 1024;
/// The same on a dirty scheduler, where only huge blocks go.
const DIRTY_CALL_BYTES: u64 = 16 * 1024 * 1024;
/// Blocks one call returns at most (each is a binary, a tuple and a list cell).
const CALL_BLOCKS: u64 = 1024;
/// Bitmap words one scan call looks at (262,144 slots: a few µs of loads).
const CALL_WORDS: u64 = 4096;

/// What an error becomes: `{error, Reason}`, `badarg` (a block of the wrong size), or a
/// move to a dirty scheduler (a store that must grow the mapping).
fn error(env: Raw, e: BlockError) -> Option<Step> {
    let reason = match e {
        BlockError::BadSize => return None,
        BlockError::NeedsGrowth => return Some(Step::Dirty),
        BlockError::Map(e) => return Some(Step::Done(raw::error(env, e))),
        BlockError::NotInitialized => atoms::not_initialized(),
        BlockError::Corrupt => atoms::corrupt(),
        BlockError::Full => atoms::full(),
        BlockError::Mismatch => atoms::mismatch(),
    };
    Some(Step::Done(raw::tuple2(
        env,
        raw::atom(atoms::error()),
        raw::atom(reason),
    )))
}

fn done<T>(env: Raw, r: Result<T, BlockError>, f: impl FnOnce(T) -> ErlNifTerm) -> Option<Step> {
    match r {
        Ok(v) => Some(Step::Done(f(v))),
        Err(e) => error(env, e),
    }
}

/// Whether blocks of `size` bytes are too large to copy or checksum here.
fn too_big(on: On, size: u64) -> bool {
    on.is_normal() && size > DIRTY_COPY as u64
}

/// An address argument: any integer; those outside `u64` are past every capacity.
fn addr_arg(env: Raw, t: ErlNifTerm) -> u64 {
    get_u64(env, t).unwrap_or(u64::MAX)
}

/// The bytes of a block as a binary: a resource binary into the mapping in direct mode
/// (the mapping was marked exported first), else a copy.
fn block_binary(env: Raw, h: &Handle, direct: bool, b: &[u8]) -> ErlNifTerm {
    if direct {
        // SAFETY: block bytes handed out in direct mode come from a mapping marked
        // exported (`blocks::mark_exported`), which stays mapped while the resource
        // (kept by the binary) lives.
        unsafe { resource::direct_binary(env, h, b.as_ptr(), b.len()) }
    } else {
        raw::copy(env, b)
    }
}

/// A new binary of `n` bytes, and its bytes to fill in (valid for this NIF call).
fn new_binary<'a>(env: Raw, n: usize) -> (ErlNifTerm, &'a mut [u8]) {
    let mut t = std::mem::MaybeUninit::<ErlNifTerm>::uninit();
    // SAFETY: the VM returns a writable buffer of `n` bytes for the new binary, which
    // nothing else references yet and which lives at least as long as this NIF call, and
    // fills in `t`.
    unsafe {
        let p = enif_make_new_binary(env, n, t.as_mut_ptr());
        let bytes = if n == 0 {
            &mut []
        } else {
            std::slice::from_raw_parts_mut(p, n)
        };
        (t.assume_init(), bytes)
    }
}

/// How many blocks of `size` bytes one call may handle, at most `max`.
fn per_call(max: u64, size: u64, on: On) -> u64 {
    let bytes = if on.is_normal() {
        CALL_BYTES
    } else {
        DIRTY_CALL_BYTES
    };
    max.min(CALL_BLOCKS)
        .min((bytes / size.max(1)).max(1))
        .max(1)
}

fn next_term(env: Raw, next: Option<u64>) -> ErlNifTerm {
    match next {
        Some(n) => raw::uint(env, n),
        None => raw::atom(atoms::eof()),
    }
}

// `init_block_storage`: `ok` or `{error, Reason}`. May grow the file: always dirty.
nif!(dirty "block_init_nif", block_init, 3, |env, a, _on| {
    let h = resource::get(env, a[0])?;
    let (block_size, max_blocks) = (get_u64(env, a[1])?, get_u64(env, a[2])?);
    let cap = (max_blocks != 0).then_some(max_blocks);
    let r = blocks::init(&h.mapping, &h.blocks, block_size, cap);
    done(env, r, |_| raw::atom(atoms::ok()))
});

// `store_block`: the address, or `{error, Reason}`.
nif!(normal "block_store_nif", block_store, 2, |env, a, on| {
    let h = resource::get(env, a[0])?;
    let data = get_bin(env, a[1])?;
    if too_big(on, data.len() as u64) {
        return Some(Step::Dirty);
    }
    let r = blocks::store(&h.mapping, &h.blocks, data, on.growth());
    done(env, r, |addr| raw::uint(env, addr))
});

// `read_block`: the block, `eof`, or `{error, Reason}`.
nif!(normal "block_read_nif", block_read, 2, |env, a, on| {
    let h = resource::get(env, a[0])?;
    let addr = addr_arg(env, a[1]);
    let direct = h.mapping.options().direct;
    if direct {
        if let Err(e) = blocks::mark_exported(&h.mapping) {
            return error(env, e);
        }
    }
    let r = blocks::with_storage(&h.mapping, &h.blocks, |s| {
        if too_big(on, s.layout().block_size) {
            return Ok(None);
        }
        if direct {
            s.read(addr, |b| block_binary(env, h, true, b)).map(Some)
        } else {
            s.read_copy(addr, |n| new_binary(env, n)).map(Some)
        }
    });
    match r {
        Ok(None) => Some(Step::Dirty),
        Ok(Some(found)) => Some(Step::Done(found.unwrap_or(raw::atom(atoms::eof())))),
        Err(e) => error(env, e),
    }
});

// `free_block`: `true`, `false`, or `{error, Reason}`.
nif!(normal "block_free_nif", block_free, 2, |env, a, on| {
    let h = resource::get(env, a[0])?;
    let addr = addr_arg(env, a[1]);
    let r = blocks::writable(&h.mapping).and_then(|_| {
        blocks::with_storage(&h.mapping, &h.blocks, |s| {
            if too_big(on, s.layout().block_size) {
                return Ok(None);
            }
            s.free(addr).map(Some)
        })
    });
    match r {
        Ok(None) => Some(Step::Dirty),
        Ok(Some(freed)) => Some(Step::Done(raw::atom(if freed {
            atoms::true_()
        } else {
            atoms::false_()
        }))),
        Err(e) => error(env, e),
    }
});

// One bounded step of `read_blocks`: `{[{Addr, Bin}], Next | eof}` with at most `Max`
// blocks, or `{error, Reason}`.
nif!(normal "block_chunk_nif", block_chunk, 3, |env, a, on| {
    let h = resource::get(env, a[0])?;
    let (start, max) = (get_u64(env, a[1])?, get_u64(env, a[2])?);
    let direct = h.mapping.options().direct;
    if direct {
        if let Err(e) = blocks::mark_exported(&h.mapping) {
            return error(env, e);
        }
    }
    let r = blocks::with_storage(&h.mapping, &h.blocks, |s| {
        let size = s.layout().block_size;
        if too_big(on, size) {
            return Ok(None);
        }
        let n = per_call(max, size, on);
        let budget = Budget {
            blocks: n as usize,
            checks: n,
            words: CALL_WORDS,
        };
        s.scan(start, budget, |b| block_binary(env, h, direct, b)).map(Some)
    });
    match r {
        Ok(None) => Some(Step::Dirty),
        Ok(Some((found, next))) => {
            let items: Vec<ErlNifTerm> = found
                .into_iter()
                .map(|(addr, bin)| raw::tuple2(env, raw::uint(env, addr), bin))
                .collect();
            let list = raw::list(env, &items);
            Some(Step::Done(raw::tuple2(env, list, next_term(env, next))))
        }
        Err(e) => error(env, e),
    }
});

// One bounded step of `repair_block_storage` over at most `Max` slots from `Start`:
// `Next | eof`, or `{error, Reason}`.
nif!(normal "block_repair_nif", block_repair, 3, |env, a, on| {
    let h = resource::get(env, a[0])?;
    let (start, max) = (get_u64(env, a[1])?, get_u64(env, a[2])?);
    let r = blocks::writable(&h.mapping).and_then(|_| {
        blocks::with_storage(&h.mapping, &h.blocks, |s| {
            let lay = s.layout();
            if too_big(on, lay.block_size) {
                return Ok(None);
            }
            // No more slots than one call could checksum if all were in use.
            let bytes = if on.is_normal() {
                CALL_BYTES
            } else {
                DIRTY_CALL_BYTES
            };
            let n = max.min((bytes / lay.stride).max(1));
            s.repair(start, n).map(Some)
        })
    });
    match r {
        Ok(None) => Some(Step::Dirty),
        Ok(Some((next, _))) => Some(Step::Done(next_term(env, next))),
        Err(e) => error(env, e),
    }
});
