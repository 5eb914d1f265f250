//! How much a mapping grows when it needs more room.
//!
//! One rule for every growth: add the current size (double) while that is below
//! `max_inc_size`, else add `max_inc_size`; the step is never below `floor`. `resize/1`
//! takes one step of it ([`step`], with a floor of one page); containers that need `need`
//! bytes take as many as it takes ([`target`]: block storage with a 64 KiB floor, the
//! queue with none, as the original queue did).

/// Whether an operation may grow its mapping. Growing can take long (a file extension, a
/// new mapping, for private and anonymous memory a copy of all of it), so a caller that
/// must stay short refuses it; the operation then answers "needs growth" having changed
/// nothing, and the caller can run it again where taking long is fine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Growth {
    Allowed,
    Refused,
}

/// The size a mapping of `cur` bytes grows to so that it holds `need` bytes, by the rule
/// above applied as often as needed; `cur` itself if it is large enough already. `None`
/// if the result does not fit in a `u64`.
pub fn target(cur: u64, need: u64, max_inc: u64, floor: u64) -> Option<u64> {
    let max_inc = max_inc.max(1);
    let mut size = cur;
    while size < need {
        let step = size.max(floor).max(1).min(max_inc);
        if step == max_inc {
            // Linear from here on: as many steps as it takes, in one go.
            let steps = (need - size).div_ceil(max_inc);
            return size.checked_add(steps.checked_mul(max_inc)?);
        }
        size = size.checked_add(step)?;
    }
    Some(size)
}

/// The size one step of the rule takes a mapping of `cur` bytes to (what `resize/1`
/// does); `None` if it does not fit in a `u64`.
pub fn step(cur: u64, max_inc: u64, floor: u64) -> Option<u64> {
    target(cur, cur.checked_add(1)?, max_inc, floor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The rule, one step at a time.
    fn slow(mut cur: u64, need: u64, max_inc: u64, floor: u64) -> u64 {
        while cur < need {
            cur += cur.max(floor).max(1).min(max_inc.max(1));
        }
        cur
    }

    #[test]
    fn the_queue_sequence_of_the_original() {
        // 1000 bytes, max_inc 3000: doubles to 2000 and 4000, then adds 3000 at a time.
        let mut sizes = vec![];
        let mut cur = 1000;
        for need in [1500, 2001, 4001, 7001, 12_000] {
            cur = target(cur, need, 3000, 1).unwrap();
            sizes.push(cur);
        }
        assert_eq!(sizes, [2000, 4000, 7000, 10_000, 13_000]);
        assert_eq!(target(13_000, 33_001, 3000, 1), Some(34_000));
        assert_eq!(target(0, 10, 64, 0), Some(16));
        assert_eq!(target(5, 5, 64, 0), Some(5));
    }

    #[test]
    fn a_floor_makes_small_mappings_grow_by_at_least_it() {
        assert_eq!(target(100, 101, 1 << 26, 65_536), Some(65_636));
        assert_eq!(target(u64::MAX - 5, u64::MAX, 1 << 20, 1), None);
    }

    #[test]
    fn one_step_doubles_up_to_max_inc_and_never_moves_less_than_the_floor() {
        assert_eq!(step(4096, 1 << 26, 4096), Some(8192));
        assert_eq!(step(8192, 4096, 4096), Some(12_288));
        assert_eq!(step(0, 1 << 26, 4096), Some(4096));
        assert_eq!(step(100, 1 << 26, 4096), Some(4196));
        assert_eq!(step(u64::MAX - 10, 1 << 20, 4096), None);
    }

    proptest! {
        /// One step is what `resize/1` computed inline before it used this rule.
        #[test]
        fn a_step_is_what_resize_computed(cur in 0u64..1 << 40, inc in 1u64..1 << 32, floor in 1u64..1 << 16) {
            prop_assert_eq!(step(cur, inc, floor), Some(cur + cur.max(floor).min(inc)));
        }

        #[test]
        fn same_as_stepping(cur in 0u64..1 << 24, extra in 0u64..1 << 24, inc in 1u64..1 << 16, floor in 0u64..1 << 12) {
            let need = cur + extra;
            prop_assert_eq!(target(cur, need, inc, floor), Some(slow(cur, need, inc, floor)));
        }
    }
}
