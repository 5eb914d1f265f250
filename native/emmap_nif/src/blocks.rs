//! NIFs behind `emmap_blocks.erl`: decode, call `emmap_core::blocks`, encode.
//!
//! Every call on a normal scheduler is bounded: a store, read or free touches one block
//! (storages of blocks above `DIRTY_COPY` bytes answer `dirty`, and the Erlang side calls
//! the dirty-scheduler variant), and the chunked scans and repairs
//! stop after a fixed amount of work and hand back a continuation, which the Erlang side
//! loops over. Growing the mapping (ftruncate, mremap or a copy) is done on a dirty I/O
//! scheduler: a normal-scheduler store that needs it answers `dirty`.

use emmap_core::blocks::{self, BlockError, Budget, StoreOutcome};
use rustler::{Atom, Binary, Encoder, Env, NifResult, Term};

use crate::resource::{self, Handle};
use crate::{atoms, raw, term, DIRTY_COPY};

/// Bytes one normal-scheduler call may copy or checksum (about 20-50 µs of work).
const CALL_BYTES: u64 = 128 * 1024;
/// The same on a dirty scheduler, where only huge blocks go.
const DIRTY_CALL_BYTES: u64 = 16 * 1024 * 1024;
/// Blocks one call returns at most (each is a binary, a tuple and a list cell).
const CALL_BLOCKS: u64 = 1024;
/// Bitmap words one scan call looks at (262,144 slots: a few µs of loads).
const CALL_WORDS: u64 = 4096;

fn block_err<'a>(env: Env<'a>, e: BlockError) -> NifResult<Term<'a>> {
    match e {
        BlockError::BadSize => Err(rustler::Error::BadArg),
        BlockError::TooBig => Ok(atoms::dirty().encode(env)),
        BlockError::Map(e) => Ok(term(env, raw::error(env.as_c_arg(), e))),
        e => Ok((atoms::error(), Atom::from_str(env, e.atom())?).encode(env)),
    }
}

/// How many blocks of `size` bytes one call may handle, at most `max`.
fn per_call(max: u64, size: u64, dirty: bool) -> u64 {
    let bytes = if dirty { DIRTY_CALL_BYTES } else { CALL_BYTES };
    max.min(CALL_BLOCKS)
        .min((bytes / size.max(1)).max(1))
        .max(1)
}

#[rustler::nif(schedule = "DirtyIo")]
fn block_init_nif<'a>(
    env: Env<'a>,
    h: &Handle,
    block_size: u64,
    max_blocks: u64,
) -> NifResult<Term<'a>> {
    let cap = (max_blocks != 0).then_some(max_blocks);
    match blocks::init(&h.mapping, block_size, cap) {
        Ok(_) => Ok(atoms::ok().encode(env)),
        Err(e) => block_err(env, e),
    }
}

fn store_any<'a>(env: Env<'a>, h: &Handle, data: Binary, dirty: bool) -> NifResult<Term<'a>> {
    match blocks::store(&h.mapping, data.as_slice(), dirty) {
        Ok(StoreOutcome::Stored(addr)) => Ok(addr.encode(env)),
        Ok(StoreOutcome::MustGrow) => Ok(atoms::dirty().encode(env)),
        Err(e) => block_err(env, e),
    }
}

#[rustler::nif]
fn block_store_nif<'a>(env: Env<'a>, h: &Handle, data: Binary) -> NifResult<Term<'a>> {
    store_any(env, h, data, false)
}

#[rustler::nif(schedule = "DirtyIo")]
fn block_store_dirty_nif<'a>(env: Env<'a>, h: &Handle, data: Binary) -> NifResult<Term<'a>> {
    store_any(env, h, data, true)
}

/// The bytes of a block as a binary: a resource binary into the mapping in direct mode
/// (`blocks::read`/`scan` mark the mapping exported first), else a copy.
fn block_binary<'a>(env: Env<'a>, h: &Handle, b: &[u8]) -> Term<'a> {
    let e = env.as_c_arg();
    let t = if h.mapping.options().direct {
        // SAFETY: block bytes handed out in direct mode come from a mapping marked
        // exported, which stays mapped while the resource (kept by the binary) lives.
        unsafe { resource::direct_binary(e, h, b.as_ptr(), b.len()) }
    } else {
        raw::copy(e, b)
    };
    term(env, t)
}

/// The block size above which a normal-scheduler call answers `dirty`.
fn limit(dirty: bool) -> u64 {
    if dirty {
        u64::MAX
    } else {
        DIRTY_COPY as u64
    }
}

fn read_any<'a>(env: Env<'a>, term: Term<'a>, addr: u64, dirty: bool) -> NifResult<Term<'a>> {
    let h: &Handle = term.decode()?;
    let r = blocks::read(&h.mapping, addr, limit(dirty), |b| block_binary(env, h, b));
    match r {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Ok(atoms::eof().encode(env)),
        Err(e) => block_err(env, e),
    }
}

#[rustler::nif]
fn block_read_nif<'a>(env: Env<'a>, term: Term<'a>, addr: u64) -> NifResult<Term<'a>> {
    read_any(env, term, addr, false)
}

#[rustler::nif(schedule = "DirtyIo")]
fn block_read_dirty_nif<'a>(env: Env<'a>, term: Term<'a>, addr: u64) -> NifResult<Term<'a>> {
    read_any(env, term, addr, true)
}

fn free_any<'a>(env: Env<'a>, h: &Handle, addr: u64, dirty: bool) -> NifResult<Term<'a>> {
    match blocks::free(&h.mapping, addr, limit(dirty)) {
        Ok(b) => Ok(b.encode(env)),
        Err(e) => block_err(env, e),
    }
}

#[rustler::nif]
fn block_free_nif<'a>(env: Env<'a>, h: &Handle, addr: u64) -> NifResult<Term<'a>> {
    free_any(env, h, addr, false)
}

#[rustler::nif(schedule = "DirtyIo")]
fn block_free_dirty_nif<'a>(env: Env<'a>, h: &Handle, addr: u64) -> NifResult<Term<'a>> {
    free_any(env, h, addr, true)
}

fn next_term(env: Env, next: Option<u64>) -> Term {
    match next {
        Some(n) => n.encode(env),
        None => atoms::eof().encode(env),
    }
}

/// One bounded step of `read_blocks`: `{[{Addr, Bin}], Next | eof}` with at most `max`
/// blocks, or `dirty` when blocks are too large to copy here.
fn chunk_any<'a>(
    env: Env<'a>,
    term: Term<'a>,
    start: u64,
    max: u64,
    dirty: bool,
) -> NifResult<Term<'a>> {
    let h: &Handle = term.decode()?;
    let lay = match blocks::layout(&h.mapping) {
        Ok(l) => l,
        Err(e) => return block_err(env, e),
    };
    if !dirty && lay.block_size > DIRTY_COPY as u64 {
        return Ok(atoms::dirty().encode(env));
    }
    let n = per_call(max, lay.block_size, dirty);
    let budget = Budget {
        blocks: n as usize,
        checks: n,
        words: CALL_WORDS,
    };
    let r = blocks::scan(&h.mapping, start, budget, |b| block_binary(env, h, b));
    match r {
        Ok((found, next)) => {
            let list: Vec<Term> = found
                .into_iter()
                .map(|(addr, bin)| (addr, bin).encode(env))
                .collect();
            Ok((list, next_term(env, next)).encode(env))
        }
        Err(e) => block_err(env, e),
    }
}

#[rustler::nif]
fn block_chunk_nif<'a>(env: Env<'a>, term: Term<'a>, start: u64, max: u64) -> NifResult<Term<'a>> {
    chunk_any(env, term, start, max, false)
}

#[rustler::nif(schedule = "DirtyIo")]
fn block_chunk_dirty_nif<'a>(
    env: Env<'a>,
    term: Term<'a>,
    start: u64,
    max: u64,
) -> NifResult<Term<'a>> {
    chunk_any(env, term, start, max, true)
}

/// One bounded step of `repair_block_storage` over at most `max` slots from `start`:
/// `Next | eof`, or `dirty` when blocks are too large to checksum here.
fn repair_any<'a>(
    env: Env<'a>,
    h: &Handle,
    start: u64,
    max: u64,
    dirty: bool,
) -> NifResult<Term<'a>> {
    let lay = match blocks::layout(&h.mapping) {
        Ok(l) => l,
        Err(e) => return block_err(env, e),
    };
    if !dirty && lay.block_size > DIRTY_COPY as u64 {
        return Ok(atoms::dirty().encode(env));
    }
    // No more slots than one call could checksum within its budget if all were in use.
    let bytes = if dirty { DIRTY_CALL_BYTES } else { CALL_BYTES };
    let n = max.min((bytes / lay.stride).max(1));
    match blocks::repair(&h.mapping, start, n) {
        Ok((next, _)) => Ok(next_term(env, next)),
        Err(e) => block_err(env, e),
    }
}

#[rustler::nif]
fn block_repair_nif<'a>(env: Env<'a>, h: &Handle, start: u64, max: u64) -> NifResult<Term<'a>> {
    repair_any(env, h, start, max, false)
}

#[rustler::nif(schedule = "DirtyIo")]
fn block_repair_dirty_nif<'a>(
    env: Env<'a>,
    h: &Handle,
    start: u64,
    max: u64,
) -> NifResult<Term<'a>> {
    repair_any(env, h, start, max, true)
}
