//! Every offset/length check, in checked arithmetic: nothing here can wrap.

use crate::error::{Error, Result};

/// The byte range `[pos, pos + len)` for a write into a region of `size` bytes.
/// All of it must fit: writes are all-or-nothing.
pub fn write_range(pos: u64, len: usize, size: usize) -> Result<(usize, usize)> {
    let start = usize::try_from(pos).map_err(|_| Error::Einval)?;
    let end = start.checked_add(len).ok_or(Error::Einval)?;
    if end > size {
        return Err(Error::Einval);
    }
    Ok((start, end))
}

/// The byte range a read of up to `len` bytes at `pos` returns: clipped at the end of the
/// region. `None` means end of file (`pos` at or past the end, or nothing to read), which
/// is what raw files answer for a zero-length `pread`.
pub fn read_range(pos: u64, len: u64, size: usize) -> Option<(usize, usize)> {
    let start = usize::try_from(pos).ok()?;
    if start >= size || len == 0 {
        return None;
    }
    let avail = size - start;
    let n = usize::try_from(len).map_or(avail, |l| l.min(avail));
    Some((start, start + n))
}

/// Start of an 8-byte atomic slot at `pos`: `base + pos` must be 8-aligned and the slot
/// must fit in the region.
pub fn atomic_slot(base: usize, pos: u64, size: usize) -> Result<usize> {
    let start = usize::try_from(pos).map_err(|_| Error::Einval)?;
    let end = start.checked_add(8).ok_or(Error::Einval)?;
    if end > size {
        return Err(Error::Einval);
    }
    if (base.wrapping_add(start)) % 8 != 0 {
        return Err(Error::Alignment);
    }
    Ok(start)
}

/// The largest file position: no file offset exceeds 2^63 - 1 (`off_t` is signed), and
/// raw files refuse to go past it.
pub const MAX_POS: u64 = i64::MAX as u64;

/// New position for `file:position/2` semantics: `from` + `delta`, never negative and
/// never past [`MAX_POS`].
pub fn seek(from: u64, delta: i64) -> Result<u64> {
    let p = i128::from(from) + i128::from(delta);
    if p < 0 || p > i128::from(MAX_POS) {
        return Err(Error::Einval);
    }
    Ok(p as u64)
}

/// Whether an empty write at `pos` is accepted: it needs no room, so anywhere a file
/// position can be (a raw file answers `ok` there too, and `einval` past [`MAX_POS`]).
pub fn empty_write_ok(pos: u64) -> Result<()> {
    if pos > MAX_POS {
        return Err(Error::Einval);
    }
    Ok(())
}

/// The part of the mapping an `madvise` over `[off, off + len)` (len 0: to the end)
/// touches: clipped to the mapping (a hint about bytes past the end is a hint about
/// nothing, as it is for a file) and rounded out to whole pages. `(_, 0)`: nothing to do.
pub fn advise_range(
    delta: usize,
    off: u64,
    len: u64,
    size: usize,
    page: usize,
) -> Result<(usize, usize)> {
    let size64 = size as u64;
    let start = off.min(size64);
    let end = if len == 0 {
        size64
    } else {
        off.saturating_add(len).min(size64)
    };
    if end <= start {
        return Ok((0, 0));
    }
    // Both are at most `size`, so they fit in usize.
    let (start, end) = (start as usize, end as usize);
    let abs_start = (delta + start) / page * page;
    Ok((abs_start, delta + end - abs_start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_must_fit_whole() {
        assert_eq!(write_range(0, 8, 8), Ok((0, 8)));
        assert_eq!(write_range(1, 8, 8), Err(Error::Einval));
        assert_eq!(write_range(8, 0, 8), Ok((8, 8)));
        assert_eq!(write_range(9, 0, 8), Err(Error::Einval));
    }

    #[test]
    fn huge_positions_never_wrap() {
        assert_eq!(write_range(u64::MAX, 1, 8), Err(Error::Einval));
        assert_eq!(write_range(u64::MAX - 3, 8, 8), Err(Error::Einval));
        assert_eq!(
            write_range(usize::MAX as u64, 2, usize::MAX),
            Err(Error::Einval)
        );
        assert_eq!(read_range(u64::MAX, u64::MAX, 8), None);
        assert_eq!(read_range(2, u64::MAX, 8), Some((2, 8)));
        assert_eq!(atomic_slot(0, u64::MAX - 7, 16), Err(Error::Einval));
        assert_eq!(atomic_slot(0, u64::MAX, 16), Err(Error::Einval));
        assert_eq!(seek(u64::MAX, 1), Err(Error::Einval));
        assert_eq!(seek(0, i64::MIN), Err(Error::Einval));
        assert_eq!(seek(4096, i64::MAX), Err(Error::Einval));
        assert_eq!(seek(MAX_POS, 1), Err(Error::Einval));
        assert_eq!(seek(MAX_POS, 0), Ok(MAX_POS));
        assert_eq!(seek(1, i64::MAX - 1), Ok(MAX_POS));
        assert_eq!(empty_write_ok(MAX_POS), Ok(()));
        assert_eq!(empty_write_ok(MAX_POS + 1), Err(Error::Einval));
        assert_eq!(advise_range(0, u64::MAX, 2, 4096, 4096), Ok((0, 0)));
    }

    #[test]
    fn reads_clip_at_the_end() {
        assert_eq!(read_range(0, 0, 8), None);
        assert_eq!(read_range(8, 1, 8), None);
        assert_eq!(read_range(6, 10, 8), Some((6, 8)));
    }

    #[test]
    fn atomics_need_alignment_of_the_address() {
        assert_eq!(atomic_slot(0, 8, 16), Ok(8));
        assert_eq!(atomic_slot(0, 4, 16), Err(Error::Alignment));
        assert_eq!(atomic_slot(4, 4, 16), Ok(4));
        assert_eq!(atomic_slot(0, 16, 16), Err(Error::Einval));
    }

    #[test]
    fn advice_rounds_to_pages() {
        assert_eq!(advise_range(100, 0, 10, 8192, 4096), Ok((0, 110)));
        assert_eq!(advise_range(0, 5000, 0, 8192, 4096), Ok((4096, 4096)));
        assert_eq!(advise_range(0, 9000, 0, 8192, 4096), Ok((0, 0)));
        assert_eq!(advise_range(0, 8000, 500, 8192, 4096), Ok((4096, 4096)));
    }

    /// Exhaustive-ish sweep near the top of the address space: no combination panics and
    /// every accepted range lies inside the region.
    #[test]
    fn sweep_near_u64_max() {
        let edges = [
            0u64,
            1,
            7,
            8,
            4095,
            4096,
            u64::MAX / 2,
            u64::MAX - 8,
            u64::MAX - 1,
            u64::MAX,
        ];
        for &size in &[0usize, 1, 8, 4096, usize::MAX] {
            for &pos in &edges {
                for &len in &edges {
                    if let Some((a, b)) = read_range(pos, len, size) {
                        assert!(a < b && b <= size);
                    }
                    if let Ok(l) = usize::try_from(len) {
                        if let Ok((a, b)) = write_range(pos, l, size) {
                            assert!(a <= b && b <= size);
                        }
                    }
                    if let Ok(s) = atomic_slot(0, pos, size) {
                        assert!(s + 8 <= size && s % 8 == 0);
                    }
                }
            }
        }
    }
}
