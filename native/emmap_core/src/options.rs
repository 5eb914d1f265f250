//! The open options: what `open` was asked for, and how that translates into `mmap`
//! protection and flags.
//!
//! Options arrive one by one, as a name and an optional integer ([`Options::apply`]):
//! unknown names and values of the wrong shape are rejected, never ignored. Options that
//! exclude one another form a group with an enum of its own: [`Sharing`] (`private`,
//! `shared`, `shared_validate`), [`HugePages`] (`hugetlb`, `huge_2mb`, `huge_1gb`) and
//! [`Locking`] (`lock`, `nolock`). Naming two members of a group that contradict each other
//! (`shared` and `private`, `huge_2mb` and `huge_1gb`) is accepted one name at a time and
//! refused as a whole by [`Options::validate`] (`einval` at open); `lock` and `nolock`
//! do not contradict each other: the last one named wins. The other options are
//! independent switches and values.

use crate::error::{Error, Result};

/// Default step for `resize/1` once the mapping is past it: 64 MiB.
pub const DEFAULT_MAX_INC: u64 = 64 << 20;

/// How the mapping is shared with the file and with other processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sharing {
    /// `private` (the default): writes stay in this process's copy (`MAP_PRIVATE`).
    #[default]
    Private,
    /// `shared`: writes reach the file and every other mapping of it (`MAP_SHARED`).
    Shared,
    /// `shared_validate`: as `shared`, with the kernel refusing flags it does not know
    /// (`MAP_SHARED_VALIDATE`); the only sharing with which `sync` means `MAP_SYNC`.
    SharedValidate,
}

impl Sharing {
    /// Whether writes reach the file and other processes.
    #[inline]
    pub fn is_shared(self) -> bool {
        self != Sharing::Private
    }

    /// The sharing flag for `mmap`, with `MAP_SYNC` when `sync` was asked for and the
    /// sharing can carry it.
    pub fn map_flags(self, sync: bool) -> libc::c_int {
        match self {
            Sharing::Private => libc::MAP_PRIVATE,
            Sharing::Shared => libc::MAP_SHARED,
            Sharing::SharedValidate if sync => libc::MAP_SHARED_VALIDATE | libc::MAP_SYNC,
            Sharing::SharedValidate => libc::MAP_SHARED_VALIDATE,
        }
    }
}

impl Group for Sharing {
    fn with(self, other: Sharing) -> Option<Sharing> {
        match (self, other) {
            (a, b) if a == b => Some(a),
            // `shared_validate` is `shared` with a stricter kernel check.
            (Sharing::Shared, Sharing::SharedValidate)
            | (Sharing::SharedValidate, Sharing::Shared) => Some(Sharing::SharedValidate),
            _ => None,
        }
    }
}

/// Which pages back the mapping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HugePages {
    /// Normal pages (the default).
    #[default]
    Off,
    /// `hugetlb`: huge pages of the system's default size.
    DefaultSize,
    /// `huge_2mb`: 2 MiB huge pages.
    Size2Mib,
    /// `huge_1gb`: 1 GiB huge pages.
    Size1Gib,
}

impl HugePages {
    /// The huge page flags for `mmap` (none for normal pages).
    pub fn map_flags(self) -> libc::c_int {
        match self {
            HugePages::Off => 0,
            HugePages::DefaultSize => libc::MAP_HUGETLB,
            HugePages::Size2Mib => libc::MAP_HUGETLB | libc::MAP_HUGE_2MB,
            HugePages::Size1Gib => libc::MAP_HUGETLB | libc::MAP_HUGE_1GB,
        }
    }
}

impl Group for HugePages {
    fn with(self, other: HugePages) -> Option<HugePages> {
        match (self, other) {
            (a, b) if a == b => Some(a),
            // `hugetlb` asks for huge pages; a size option says which.
            (HugePages::Off | HugePages::DefaultSize, b) => Some(b),
            (a, HugePages::Off | HugePages::DefaultSize) => Some(a),
            _ => None,
        }
    }
}

/// Whether data operations exclude `close` and `resize` (see `readers.rs`). (`NoLock` is
/// the first variant, 0, so that the test every data operation makes compiles to what the
/// test of a `bool` did.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Locking {
    /// `nolock`: data operations take no lock; replaced memory stays mapped until the
    /// handle is dropped.
    NoLock,
    /// `lock` (the default): data operations are readers of the handle's reader/writer
    /// exclusion, so `close` and `resize` may unmap at once.
    #[default]
    Lock,
}

/// A group of options of which one member applies.
trait Group: Copy + Default {
    /// The member two named members make together (`self` named first), `None` if they
    /// contradict each other.
    fn with(self, other: Self) -> Option<Self>;
}

/// The member of a group the option list named.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Choice<T> {
    /// None named: the group's default.
    #[default]
    Unnamed,
    Named(T),
    /// Members that contradict each other were named.
    Conflict,
}

impl<T: Group> Choice<T> {
    /// The choice once `t` is named too.
    fn name(self, t: T) -> Choice<T> {
        match self {
            Choice::Unnamed => Choice::Named(t),
            Choice::Named(had) => had.with(t).map_or(Choice::Conflict, Choice::Named),
            Choice::Conflict => Choice::Conflict,
        }
    }

    /// The member that applies (the default unless one was named).
    #[inline]
    fn get(self) -> T {
        match self {
            Choice::Named(t) => t,
            Choice::Unnamed | Choice::Conflict => T::default(),
        }
    }
}

/// Everything `open` was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub write: bool,
    pub create: bool,
    pub truncate: bool,
    /// With `shared_validate`: `MAP_SYNC` (no effect with any other sharing).
    pub sync: bool,
    pub direct: bool,
    pub populate: bool,
    pub noreserve: bool,
    pub nonblock: bool,
    pub anon: bool,
    pub fixed: bool,
    pub address: Option<u64>,
    pub auto_unlink: bool,
    pub chmod: u32,
    pub size: Option<u64>,
    pub nocache: bool,
    pub uninitialized: bool,
    pub fixed_size: bool,
    pub max_inc_size: u64,
    pub fit: bool,
    pub debug: bool,
    sharing: Choice<Sharing>,
    huge_pages: Choice<HugePages>,
    locking: Locking,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            write: false,
            create: false,
            truncate: false,
            sync: false,
            direct: false,
            populate: false,
            noreserve: false,
            nonblock: false,
            anon: false,
            fixed: false,
            address: None,
            auto_unlink: false,
            chmod: 0o600,
            size: None,
            nocache: false,
            uninitialized: false,
            fixed_size: false,
            max_inc_size: DEFAULT_MAX_INC,
            fit: false,
            debug: false,
            sharing: Choice::Unnamed,
            huge_pages: Choice::Unnamed,
            locking: Locking::Lock,
        }
    }
}

/// An option name the library does not know, or a value of the wrong shape.
#[derive(Debug, PartialEq, Eq)]
pub struct BadOption;

impl Options {
    /// Applies one option: a bare atom (`value == None`) or a `{Name, Integer}` pair.
    pub fn apply(&mut self, name: &str, value: Option<u64>) -> std::result::Result<(), BadOption> {
        let flag = |f: &mut bool| {
            *f = true;
            Ok(())
        };
        let sharing = |o: &mut Options, s| {
            o.sharing = o.sharing.name(s);
            Ok(())
        };
        let huge = |o: &mut Options, h| {
            o.huge_pages = o.huge_pages.name(h);
            Ok(())
        };
        let locking = |o: &mut Options, l| {
            o.locking = l;
            Ok(())
        };
        match (name, value) {
            ("read", None) => Ok(()),
            ("write", None) => flag(&mut self.write),
            ("create", None) => flag(&mut self.create),
            ("truncate", None) => flag(&mut self.truncate),
            ("shared", None) => sharing(self, Sharing::Shared),
            ("private", None) => sharing(self, Sharing::Private),
            ("shared_validate", None) => sharing(self, Sharing::SharedValidate),
            ("sync", None) => flag(&mut self.sync),
            ("direct", None) => flag(&mut self.direct),
            ("lock", None) => locking(self, Locking::Lock),
            ("nolock", None) => locking(self, Locking::NoLock),
            ("populate", None) => flag(&mut self.populate),
            ("noreserve", None) => flag(&mut self.noreserve),
            ("nonblock", None) => flag(&mut self.nonblock),
            ("anon", None) => flag(&mut self.anon),
            ("fixed", None) => flag(&mut self.fixed),
            ("auto_unlink", None) => flag(&mut self.auto_unlink),
            ("hugetlb", None) => huge(self, HugePages::DefaultSize),
            ("huge_2mb", None) => huge(self, HugePages::Size2Mib),
            ("huge_1gb", None) => huge(self, HugePages::Size1Gib),
            ("nocache", None) => flag(&mut self.nocache),
            ("uninitialized", None) => flag(&mut self.uninitialized),
            ("fixed_size", None) => flag(&mut self.fixed_size),
            ("fit", None) => flag(&mut self.fit),
            ("debug", None) => flag(&mut self.debug),
            ("address", Some(a)) if a > 0 => {
                self.address = Some(a);
                Ok(())
            }
            ("chmod", Some(m)) if m <= 0o7777 => {
                self.chmod = m as u32;
                Ok(())
            }
            ("size", Some(n)) => {
                self.size = Some(n);
                Ok(())
            }
            ("max_inc_size", Some(n)) if n > 0 => {
                self.max_inc_size = n;
                Ok(())
            }
            _ => Err(BadOption),
        }
    }

    /// How the mapping is shared (`private` unless another member was named).
    #[inline]
    pub fn sharing(&self) -> Sharing {
        self.sharing.get()
    }

    /// Which pages back the mapping (normal ones unless a huge page option was named).
    #[inline]
    pub fn huge_pages(&self) -> HugePages {
        self.huge_pages.get()
    }

    /// `lock` or `nolock`, whichever was named last (`lock` if neither).
    #[inline]
    pub fn locking(&self) -> Locking {
        self.locking
    }

    /// Whether data operations take the handle's reader side (`lock`).
    #[inline]
    pub fn lock(&self) -> bool {
        self.locking == Locking::Lock
    }

    /// Whether the mapping is shared with the file / other processes.
    #[inline]
    pub fn is_shared(&self) -> bool {
        self.sharing().is_shared()
    }

    /// Checks combinations that individually valid options cannot form.
    pub fn validate(&self) -> Result<()> {
        if self.sharing == Choice::Conflict {
            return Err(Error::Einval);
        }
        if self.fixed && self.address.is_none() {
            return Err(Error::Einval);
        }
        if self.huge_pages == Choice::Conflict {
            return Err(Error::Einval);
        }
        if self.truncate && !self.write {
            return Err(Error::Eacces);
        }
        Ok(())
    }

    /// `mmap` protection bits.
    pub fn prot(&self) -> libc::c_int {
        if self.write {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        }
    }

    /// `mmap` flags, without any placement flag (added by the region code).
    pub fn map_flags(&self) -> libc::c_int {
        let mut f = self.sharing().map_flags(self.sync) | self.huge_pages().map_flags();
        if self.anon {
            f |= libc::MAP_ANONYMOUS;
        }
        if self.populate {
            f |= libc::MAP_POPULATE;
        }
        if self.noreserve {
            f |= libc::MAP_NORESERVE;
        }
        if self.nonblock {
            f |= libc::MAP_NONBLOCK;
        }
        if self.uninitialized && self.anon {
            // Honoured only by kernels built with CONFIG_MMAP_ALLOW_UNINITIALIZED.
            f |= MAP_UNINITIALIZED;
        }
        // `nocache` is a macOS flag with no Linux equivalent: accepted, no effect.
        f
    }

    /// `mmap` flags for new anonymous memory that takes over a mapping's contents by a
    /// copy, when it must grow and cannot in place (a private file mapping, anonymous
    /// memory): shared only for anonymous shared memory, never `MAP_SYNC`, the rest as
    /// [`Options::map_flags`].
    pub fn copy_flags(&self) -> libc::c_int {
        let share = if self.anon && self.is_shared() {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        let kind = libc::MAP_SHARED | libc::MAP_PRIVATE | libc::MAP_SHARED_VALIDATE;
        (self.map_flags() & !kind & !libc::MAP_SYNC) | share | libc::MAP_ANONYMOUS
    }
}

/// Linux's MAP_UNINITIALIZED (not exported by the libc crate).
const MAP_UNINITIALIZED: libc::c_int = 0x400_0000;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(items: &[(&str, Option<u64>)]) -> std::result::Result<Options, BadOption> {
        let mut o = Options::default();
        for (n, v) in items {
            o.apply(n, *v)?;
        }
        Ok(o)
    }

    #[test]
    fn defaults_match_the_contract() {
        let o = Options::default();
        assert!(o.lock() && !o.write && !o.is_shared());
        assert_eq!(o.chmod, 0o600);
        assert_eq!(o.max_inc_size, 64 << 20);
        assert_eq!(o.map_flags() & libc::MAP_PRIVATE, libc::MAP_PRIVATE);
        assert_eq!(o.prot(), libc::PROT_READ);
    }

    #[test]
    fn unknown_and_malformed_options_are_rejected() {
        assert_eq!(parse(&[("bogus", None)]), Err(BadOption));
        assert_eq!(parse(&[("write", Some(1))]), Err(BadOption));
        assert_eq!(parse(&[("size", None)]), Err(BadOption));
        assert_eq!(parse(&[("chmod", Some(0o10000))]), Err(BadOption));
        assert_eq!(parse(&[("address", Some(0))]), Err(BadOption));
        assert_eq!(parse(&[("max_inc_size", Some(0))]), Err(BadOption));
    }

    #[test]
    fn conflicting_options_are_einval() {
        let o = parse(&[("shared", None), ("private", None)]).unwrap();
        assert_eq!(o.validate(), Err(Error::Einval));
        let o = parse(&[("fixed", None)]).unwrap();
        assert_eq!(o.validate(), Err(Error::Einval));
        let o = parse(&[("truncate", None)]).unwrap();
        assert_eq!(o.validate(), Err(Error::Eacces));
    }

    /// The groups decide exactly as the one boolean per name they replaced did: every list
    /// of up to four of their names, in every order, is accepted or refused alike and,
    /// when accepted, gives the same flags, sharing and locking.
    #[test]
    fn groups_decide_as_one_boolean_per_name_did() {
        const NAMES: [&str; 9] = [
            "shared",
            "private",
            "shared_validate",
            "sync",
            "hugetlb",
            "huge_2mb",
            "huge_1gb",
            "lock",
            "nolock",
        ];
        // The rules as they were written for one boolean per name.
        fn model(list: &[&str]) -> (Result<()>, libc::c_int, bool, bool) {
            let has = |n: &str| list.contains(&n);
            let (shared, private, sv) = (has("shared"), has("private"), has("shared_validate"));
            let (tlb, h2, h1) = (has("hugetlb"), has("huge_2mb"), has("huge_1gb"));
            let lock = list
                .iter()
                .rev()
                .find(|n| **n == "lock" || **n == "nolock")
                .is_none_or(|n| *n == "lock");
            let ok = if private && (shared || sv) || h2 && h1 {
                Err(Error::Einval)
            } else {
                Ok(())
            };
            let mut f = if sv {
                libc::MAP_SHARED_VALIDATE
            } else if shared {
                libc::MAP_SHARED
            } else {
                libc::MAP_PRIVATE
            };
            if sv && has("sync") {
                f |= libc::MAP_SYNC;
            }
            if tlb || h2 || h1 {
                f |= libc::MAP_HUGETLB;
            }
            if h2 {
                f |= libc::MAP_HUGE_2MB;
            }
            if h1 {
                f |= libc::MAP_HUGE_1GB;
            }
            (ok, f, shared || sv, lock)
        }
        let mut lists: Vec<Vec<&str>> = vec![vec![]];
        let mut last = lists.clone();
        for _ in 0..4 {
            last = last
                .iter()
                .flat_map(|l| NAMES.iter().map(move |n| [&l[..], &[*n]].concat()))
                .collect();
            lists.extend(last.iter().cloned());
        }
        assert_eq!(lists.len(), 1 + 9 + 81 + 729 + 6561);
        for list in &lists {
            let items: Vec<_> = list.iter().map(|n| (*n, None)).collect();
            let o = parse(&items).unwrap();
            let (ok, flags, shared, lock) = model(list);
            assert_eq!(o.validate(), ok, "{list:?}");
            assert_eq!(o.lock(), lock, "{list:?}");
            if ok.is_ok() {
                assert_eq!(o.map_flags(), flags, "{list:?}");
                assert_eq!(o.is_shared(), shared, "{list:?}");
            }
        }
    }

    #[test]
    fn flags_follow_options() {
        let o = parse(&[
            ("shared", None),
            ("write", None),
            ("populate", None),
            ("nolock", None),
        ])
        .unwrap();
        assert!(!o.lock());
        assert_eq!(o.map_flags() & libc::MAP_SHARED, libc::MAP_SHARED);
        assert_ne!(o.map_flags() & libc::MAP_POPULATE, 0);
        assert_eq!(o.prot(), libc::PROT_READ | libc::PROT_WRITE);
    }
}
