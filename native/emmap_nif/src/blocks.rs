//! NIFs behind `emmap_blocks.erl`: decode, call `emmap_core::blocks`, encode.
//!
//! One NIF per operation (see `schedule.rs`). A store, read or free touches one block and
//! runs on the caller's scheduler unless the storage's blocks are larger than
//! `DIRTY_BYTES` or a store must grow the mapping: then it moves itself to a dirty I/O
//! scheduler. The scans and repairs stop after a bounded amount of work and hand back a
//! continuation, which the Erlang side loops over. Every call validates the header
//! through the handle's cache (`blocks::Cache`), which makes that a 64-byte compare.

use emmap_core::blocks::{self, BlockError, Budget, Storage};

use crate::atoms;
use crate::resource::{handle, Handle};
use crate::schedule::{nif, On};
use crate::term::{self, atom, Env, Int, Stop, Term};

/// Bytes one normal-scheduler call may copy or checksum (about 20-50 µs of work).
const CALL_BYTES: u64 = 128 * 1024;
/// The same on a dirty scheduler, where only huge blocks go.
const DIRTY_CALL_BYTES: u64 = 16 * 1024 * 1024;
/// Blocks one call returns at most (each is a binary, a tuple and a list cell).
const CALL_BLOCKS: u64 = 1024;
/// Bitmap words one scan call looks at (262,144 slots: a few µs of loads).
const CALL_WORDS: u64 = 4096;

impl From<BlockError> for Stop {
    /// `{error, Reason}`, `badarg` (a block of the wrong size), or a move to a dirty
    /// scheduler (a store that must grow the mapping).
    fn from(e: BlockError) -> Stop {
        match e {
            BlockError::BadSize => Stop::Badarg,
            BlockError::NeedsGrowth => Stop::Dirty,
            BlockError::Map(e) => Stop::Error(e),
            BlockError::NotInitialized => Stop::Reason(atoms::not_initialized()),
            BlockError::Corrupt => Stop::Reason(atoms::corrupt()),
            BlockError::Full => Stop::Reason(atoms::full()),
            BlockError::Mismatch => Stop::Reason(atoms::mismatch()),
        }
    }
}

/// Runs `f` on `h`'s storage, unless its blocks are too large to copy or checksum on
/// this scheduler (then `Stop::Dirty`, having done nothing).
fn with_blocks<T>(
    h: &Handle,
    on: On,
    f: impl FnOnce(&Storage<'_>) -> blocks::Result<T>,
) -> Result<T, Stop> {
    let r = blocks::with_storage(&h.mapping, &h.blocks, |s| {
        if on.may_touch(s.layout().block_size).is_err() {
            return Ok(None);
        }
        f(s).map(Some)
    })?;
    r.ok_or(Stop::Dirty)
}

/// An address argument: any integer; those outside `u64` are past every capacity.
fn addr_arg(env: Env<'_>, t: Term) -> Result<u64, Stop> {
    Ok(match term::int(env, t)? {
        Int::Fits(a) => a,
        Int::Neg | Int::Over => u64::MAX,
    })
}

/// In direct mode, marks the mapping exported: block bytes handed out as resource binaries
/// must stay mapped while the handle lives.
fn export(h: &Handle) -> Result<(), Stop> {
    if h.mapping.options().direct {
        blocks::mark_exported(&h.mapping)?;
    }
    Ok(())
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

fn next_term(env: Env<'_>, next: Option<u64>) -> Term {
    match next {
        Some(n) => term::uint(env, n),
        None => atom(atoms::eof()),
    }
}

// `init_block_storage`: `ok` or `{error, Reason}`. May grow the file: always dirty.
// `BlockSize` must be a positive integer; `MaxBlocks` 0 means the default capacity; either
// past 2^64 - 1 is `einval`.
nif!(dirty "block_init", block_init, 3, |env, a, _on| {
    let h = handle(env, a[0])?;
    let (block_size, max_blocks) = (term::int(env, a[1])?, term::int(env, a[2])?);
    if matches!(block_size, Int::Neg | Int::Fits(0)) || max_blocks == Int::Neg {
        return Err(Stop::Badarg);
    }
    let (block_size, max_blocks) = (block_size.or_einval()?, max_blocks.or_einval()?);
    let cap = (max_blocks != 0).then_some(max_blocks);
    blocks::init(&h.mapping, &h.blocks, block_size, cap)?;
    Ok(atom(atoms::ok()))
});

// `store_block`: the address, or `{error, Reason}`.
nif!(normal "block_store", block_store, 2, |env, a, on| {
    let h = handle(env, a[0])?;
    let data = term::bin(env, a[1])?;
    on.may_touch(data.len() as u64)?;
    let addr = blocks::store(&h.mapping, &h.blocks, data, on.growth())?;
    Ok(term::uint(env, addr))
});

// `read_block`: the block, `eof`, or `{error, Reason}`.
nif!(normal "block_read", block_read, 2, |env, a, on| {
    let h = handle(env, a[0])?;
    let addr = addr_arg(env, a[1])?;
    export(h)?;
    let found = with_blocks(h, on, |s| {
        if h.mapping.options().direct {
            // SAFETY: the mapping was marked exported above.
            s.read(addr, |b| unsafe { h.binary(env, b) })
        } else {
            s.read_copy(addr, |n| term::new_binary(env, n))
        }
    })?;
    Ok(found.unwrap_or(atom(atoms::eof())))
});

// `free_block`: `true`, `false`, or `{error, Reason}`. Only a storage whose frees read the
// block (layout versions 1 and 2) moves large blocks' frees to a dirty scheduler.
nif!(normal "block_free", block_free, 2, |env, a, on| {
    let h = handle(env, a[0])?;
    let addr = addr_arg(env, a[1])?;
    blocks::writable(&h.mapping)?;
    let freed = blocks::with_storage(&h.mapping, &h.blocks, |s| {
        if s.free_reads_block() && on.may_touch(s.layout().block_size).is_err() {
            return Ok(None);
        }
        s.free(addr).map(Some)
    })?;
    Ok(term::boolean_term(freed.ok_or(Stop::Dirty)?))
});

// One bounded step of `read_blocks`: `{[{Addr, Bin}], Next | eof}` with at most `Max`
// blocks, or `{error, Reason}`.
nif!(normal "block_chunk", block_chunk, 3, |env, a, on| {
    let h = handle(env, a[0])?;
    let (start, max) = (term::int(env, a[1])?, term::int(env, a[2])?);
    let (start, max) = (start.or_einval()?, max.or_einval()?);
    export(h)?;
    let (found, next) = with_blocks(h, on, |s| {
        let size = s.layout().block_size;
        let n = per_call(max, size, on);
        let budget = Budget {
            blocks: n as usize,
            checks: n,
            words: CALL_WORDS,
        };
        // SAFETY: in direct mode the mapping was marked exported above.
        s.scan(start, budget, |b| unsafe { h.binary(env, b) })
    })?;
    let items: Vec<Term> = found
        .into_iter()
        .map(|(addr, bin)| term::tuple2(env, term::uint(env, addr), bin))
        .collect();
    Ok(term::tuple2(env, term::list(env, &items), next_term(env, next)))
});

// One bounded step of `repair_block_storage` over at most `Max` slots from `Start`:
// `Next | eof`, or `{error, Reason}`.
nif!(normal "block_repair", block_repair, 3, |env, a, on| {
    let h = handle(env, a[0])?;
    let (start, max) = (term::int(env, a[1])?, term::int(env, a[2])?);
    let (start, max) = (start.or_einval()?, max.or_einval()?);
    blocks::writable(&h.mapping)?;
    let (next, _) = with_blocks(h, on, |s| {
        let lay = s.layout();
        // No more slots than one call could checksum if all were in use.
        let bytes = if on.is_normal() {
            CALL_BYTES
        } else {
            DIRTY_CALL_BYTES
        };
        s.repair(start, max.min((bytes / lay.stride).max(1)))
    })?;
    Ok(next_term(env, next))
});
