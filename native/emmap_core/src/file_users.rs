//! Which files this process has mapped, and how many handles map each.
//!
//! Cutting a file shorter makes every mapping of the pages past its new end fault with
//! SIGBUS on the next access. A handle can protect its own regions (see
//! [`crate::region::Region::detach_tail`]), but not another handle's, so `truncate` shrinks
//! a file only when no other handle in this process maps it.

use std::collections::HashMap;
use std::sync::OnceLock;

use parking_lot::Mutex;

/// A file's identity: device and inode.
pub type FileId = (u64, u64);

fn table() -> &'static Mutex<HashMap<FileId, usize>> {
    static TABLE: OnceLock<Mutex<HashMap<FileId, usize>>> = OnceLock::new();
    TABLE.get_or_init(Default::default)
}

/// One handle's claim on a file; counted while it lives.
#[derive(Debug)]
pub struct FileUse {
    id: FileId,
}

impl FileUse {
    pub fn new(id: FileId) -> FileUse {
        *table().lock().entry(id).or_insert(0) += 1;
        FileUse { id }
    }

    /// Whether some other handle of this process maps the same file.
    pub fn shared_with_others(&self) -> bool {
        users(self.id) > 1
    }
}

/// How many handles of this process claim the file.
pub fn users(id: FileId) -> usize {
    table().lock().get(&id).copied().unwrap_or(0)
}

impl Drop for FileUse {
    fn drop(&mut self) {
        let mut t = table().lock();
        if let Some(n) = t.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                t.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_handles_per_file() {
        let id = (u64::MAX, 4242);
        let a = FileUse::new(id);
        assert!(!a.shared_with_others());
        let b = FileUse::new(id);
        assert!(a.shared_with_others() && b.shared_with_others());
        let other = FileUse::new((u64::MAX, 4243));
        assert!(!other.shared_with_others());
        drop(b);
        assert!(!a.shared_with_others());
        drop(a);
        assert!(!table().lock().contains_key(&id));
    }
}
