//! 64-bit atomic operations on a slot of mapped memory.
//!
//! The slot is addressed through `AtomicI64`, which the hardware makes atomic across threads
//! and across OS processes that map the same page. Values wrap on overflow.

use std::sync::atomic::{AtomicI64, Ordering};

/// Read-modify-write operations `patomic/4` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Sub,
    And,
    Or,
    Xor,
    Xchg,
}

impl Op {
    /// Decodes the atom name (the short forms `and`, `or`, `xor` are accepted too).
    pub fn from_name(name: &str) -> Option<Op> {
        Some(match name {
            "add" => Op::Add,
            "sub" => Op::Sub,
            "band" | "and" => Op::And,
            "bor" | "or" => Op::Or,
            "bxor" | "xor" => Op::Xor,
            "xchg" => Op::Xchg,
            _ => return None,
        })
    }

    /// Applies the operation, returning the previous value.
    #[inline]
    pub fn apply(self, slot: &AtomicI64, v: i64) -> i64 {
        let o = Ordering::SeqCst;
        match self {
            Op::Add => slot.fetch_add(v, o),
            Op::Sub => slot.fetch_sub(v, o),
            Op::And => slot.fetch_and(v, o),
            Op::Or => slot.fetch_or(v, o),
            Op::Xor => slot.fetch_xor(v, o),
            Op::Xchg => slot.swap(v, o),
        }
    }
}

/// Compare-and-swap: `Ok(old)` when the slot held `expected` and now holds `new`,
/// `Err(current)` otherwise.
#[inline]
pub fn cas(slot: &AtomicI64, expected: i64, new: i64) -> Result<i64, i64> {
    slot.compare_exchange(expected, new, Ordering::SeqCst, Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn ops_return_the_old_value_and_wrap() {
        let a = AtomicI64::new(i64::MAX);
        assert_eq!(Op::Add.apply(&a, 1), i64::MAX);
        assert_eq!(a.load(Ordering::SeqCst), i64::MIN);
        assert_eq!(Op::Sub.apply(&a, 1), i64::MIN);
        assert_eq!(Op::Xchg.apply(&a, 3), i64::MAX);
        assert_eq!(Op::And.apply(&a, 6), 3);
        assert_eq!(Op::Or.apply(&a, 8), 2);
        assert_eq!(Op::Xor.apply(&a, 15), 10);
        assert_eq!(a.load(Ordering::SeqCst), 5);
        assert_eq!(cas(&a, 4, 9), Err(5));
        assert_eq!(cas(&a, 5, 9), Ok(5));
    }

    #[test]
    fn names() {
        for (n, op) in [
            ("and", Op::And),
            ("band", Op::And),
            ("or", Op::Or),
            ("bxor", Op::Xor),
        ] {
            assert_eq!(Op::from_name(n), Some(op));
        }
        assert_eq!(Op::from_name("mul"), None);
    }

    #[test]
    fn exact_under_contention() {
        let a = Arc::new(AtomicI64::new(0));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let a = a.clone();
                std::thread::spawn(move || {
                    for _ in 0..100_000 {
                        Op::Add.apply(&a, 1);
                    }
                })
            })
            .collect();
        hs.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(a.load(Ordering::SeqCst), 400_000);
    }
}
