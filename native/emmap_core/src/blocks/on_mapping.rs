//! The entry points: block storage operations on a [`Mapping`], through
//! [`crate::mem::with_mem`], growing the mapping when a store needs room.

use super::DEFAULT_CAPACITY;
use super::{BlockError, Budget, Cache, Chunk, Layout, Repaired, Result, Storage, Stored};
use crate::error::Error;
use crate::growth::{self, Growth};
use crate::mapping::Mapping;
use crate::mem;

/// The smallest step block storage grows its mapping by.
const GROWTH_FLOOR: u64 = 64 * 1024;

/// Runs `f` on the storage in `m`'s current region (validated through `cache`), which stays
/// mapped while `f` runs. `f` may look at the layout before doing anything (a caller that
/// must stay short can decline large blocks).
#[inline]
pub fn with_storage<T>(
    m: &Mapping,
    cache: &Cache,
    f: impl FnOnce(&Storage<'_>) -> Result<T>,
) -> Result<T> {
    mem::with_mem(m, |mem| f(&Storage::open_cached(mem, cache)?))
}

fn check_writable(m: &Mapping) -> Result<()> {
    if m.options().write {
        Ok(())
    } else {
        Err(BlockError::Map(Error::Eacces))
    }
}

/// Whether block storage grows `m` through `resize`: always, but with `fixed_size`.
fn may_resize(m: &Mapping) -> bool {
    let o = m.options();
    !o.fixed_size
}

/// Grows `m` to hold at least `need` bytes, by the usual growth rule (at least 64 KiB a
/// step), never past `total`. `fixed_size` means full.
fn grow(m: &Mapping, need: u64, total: u64) -> Result<()> {
    let cur = m.size()? as u64;
    if cur >= need {
        return Ok(());
    }
    if !may_resize(m) {
        return Err(BlockError::Full);
    }
    let target = growth::target(cur, need, m.options().max_inc_size, GROWTH_FLOOR)
        .unwrap_or(total)
        .min(total)
        .max(need);
    match m.resize(target) {
        Ok(_) => Ok(()),
        // Someone else grew it meanwhile (resize never shrinks): fine if it is enough now.
        Err(_) if m.size()? as u64 >= need => Ok(()),
        Err(Error::FixedSize) => Err(BlockError::Full),
        Err(e) => Err(e.into()),
    }
}

/// The storage's layout (validates the header).
pub fn layout(m: &Mapping, cache: &Cache) -> Result<Layout> {
    with_storage(m, cache, |s| Ok(*s.layout()))
}

/// `init_block_storage`: formats a new storage (growing the mapping to hold its bitmap),
/// or accepts an existing one with the same block size (and capacity, if one is given),
/// whatever its layout version.
pub fn init(m: &Mapping, cache: &Cache, block_size: u64, capacity: Option<u64>) -> Result<Layout> {
    check_writable(m)?;
    let lay = Layout::new(block_size, capacity.unwrap_or(DEFAULT_CAPACITY))
        .ok_or(BlockError::Map(Error::Einval))?;
    for _ in 0..4 {
        let done = mem::with_mem(m, |mem| match Storage::open_cached(mem, cache) {
            Ok(s) => {
                let have = s.layout();
                let same_cap = capacity.is_none_or(|c| c == have.capacity);
                if have.block_size == block_size && same_cap {
                    Ok(Some(*have))
                } else {
                    Err(BlockError::Mismatch)
                }
            }
            Err(BlockError::NotInitialized) if mem.len() >= lay.data_off => {
                Storage::format(mem, lay).map(|s| Some(*s.layout()))
            }
            Err(BlockError::NotInitialized) => Ok(None),
            Err(e) => Err(e),
        })?;
        if let Some(l) = done {
            return Ok(l);
        }
        if !may_resize(m) {
            return Err(BlockError::Map(Error::FixedSize));
        }
        match m.resize(lay.data_off) {
            Ok(_) => {}
            Err(_) if m.size()? as u64 >= lay.data_off => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(BlockError::Map(Error::Os(libc::EAGAIN)))
}

/// `store_block`: stores `data` in the lowest free slot and returns its address, growing
/// the mapping if that slot lies past its end (with [`Growth::Refused`]: answering
/// [`BlockError::NeedsGrowth`] instead, having done nothing).
pub fn store(m: &Mapping, cache: &Cache, data: &[u8], growth: Growth) -> Result<u64> {
    check_writable(m)?;
    // Each round either stores or grows the mapping; growth is bounded by the capacity, so
    // only a storm of concurrent stores could need many rounds.
    for _ in 0..64 {
        let (r, total) = with_storage(m, cache, |s| Ok((s.store(data)?, s.layout().total)))?;
        match r {
            Stored::At(addr) => return Ok(addr),
            Stored::Grow { .. } if !may_resize(m) => return Err(BlockError::Full),
            Stored::Grow { .. } if growth == Growth::Refused => {
                return Err(BlockError::NeedsGrowth)
            }
            Stored::Grow { need } => grow(m, need, total)?,
        }
    }
    Err(BlockError::Map(Error::Os(libc::EAGAIN)))
}

/// In direct mode, records that binaries into the mapping are about to be handed out, so
/// that no region is unmapped before the handle is dropped (see `mapping.rs`). A 1-byte
/// `pread` is the mapping's public way of doing that.
pub fn mark_exported(m: &Mapping) -> Result<()> {
    if m.options().direct {
        m.pread(0, 1, |_| ())?;
    }
    Ok(())
}

/// `read_block`: `f` gets the block's bytes inside the mapping (in direct mode they stay
/// mapped until the handle is dropped), `None` if there is no block at `addr`.
pub fn read<T>(
    m: &Mapping,
    cache: &Cache,
    addr: u64,
    f: impl FnMut(&[u8]) -> T,
) -> Result<Option<T>> {
    mark_exported(m)?;
    with_storage(m, cache, |s| s.read(addr, f))
}

/// `free_block`: `true` if there was a block at `addr`.
pub fn free(m: &Mapping, cache: &Cache, addr: u64) -> Result<bool> {
    check_writable(m)?;
    with_storage(m, cache, |s| s.free(addr))
}

/// `eacces` for a mapping not opened with `write`: what stores, frees and repairs need
/// (for callers that run [`Storage`] operations through [`with_storage`] themselves).
pub fn writable(m: &Mapping) -> Result<()> {
    check_writable(m)
}

/// One bounded step of `read_blocks`: see [`Storage::scan`].
pub fn scan<T>(
    m: &Mapping,
    cache: &Cache,
    start: u64,
    budget: Budget,
    make: impl FnMut(&[u8]) -> T,
) -> Result<Chunk<T>> {
    mark_exported(m)?;
    with_storage(m, cache, |s| s.scan(start, budget, make))
}

/// One bounded step of `repair_block_storage`: see [`Storage::repair`].
pub fn repair(
    m: &Mapping,
    cache: &Cache,
    start: u64,
    max_slots: u64,
) -> Result<(Option<u64>, Repaired)> {
    check_writable(m)?;
    with_storage(m, cache, |s| s.repair(start, max_slots))
}
