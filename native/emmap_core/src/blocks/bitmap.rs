//! The used-bitmap and its summary: finding the lowest free slot, and the words that
//! record which slots are taken.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{BlockError, Result, Storage};

impl<'a> Storage<'a> {
    pub(super) fn bit_word(&self, w: u64) -> Result<&'a AtomicU64> {
        if w >= self.lay().words {
            return Err(BlockError::Corrupt);
        }
        Ok(self.mem.atomic(self.lay().bitmap_off + 8 * w)?)
    }

    pub(super) fn summary_word(&self, s: u64) -> Result<&'a AtomicU64> {
        if s >= self.lay().summary_words {
            return Err(BlockError::Corrupt);
        }
        Ok(self.mem.atomic(self.lay().summary_off + 8 * s)?)
    }

    /// Bits of summary word `s` that stand for real bitmap words.
    fn summary_valid(&self, s: u64) -> u64 {
        let first = s * 64;
        let n = self.lay().words - first.min(self.lay().words);
        if n >= 64 {
            u64::MAX
        } else {
            (1u64 << n) - 1
        }
    }

    /// Bitmap word `w` with the bits that are not real slots shown as taken.
    fn load_word(&self, w: u64) -> Result<u64> {
        Ok(self.bit_word(w)?.load(Ordering::SeqCst) | !self.lay().valid_bits(w))
    }

    pub(super) fn bit_is_set(&self, addr: u64) -> Result<bool> {
        Ok(self.bit_word(addr / 64)?.load(Ordering::SeqCst) & (1 << (addr % 64)) != 0)
    }

    /// The lowest address whose bit is clear, or `None` when all are taken. Words the
    /// summary marks full are skipped; a word found full has its summary bit cleared and
    /// then re-checked, so a concurrent free (clear bit, then set summary bit) is never lost.
    pub(super) fn find_free(&self) -> Result<Option<u64>> {
        for s in 0..self.lay().summary_words {
            let sw = self.summary_word(s)?;
            let mut bits = sw.load(Ordering::SeqCst) & self.summary_valid(s);
            while bits != 0 {
                let b = u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                let w = s * 64 + b;
                let word = self.load_word(w)?;
                if word != u64::MAX {
                    return Ok(Some(w * 64 + u64::from((!word).trailing_zeros())));
                }
                sw.fetch_and(!(1 << b), Ordering::SeqCst);
                let again = self.load_word(w)?;
                if again != u64::MAX {
                    sw.fetch_or(1 << b, Ordering::SeqCst);
                    return Ok(Some(w * 64 + u64::from((!again).trailing_zeros())));
                }
            }
        }
        Ok(None)
    }
}
