//! The open options as a validated struct. The NIF hands over each list element as a
//! name and an optional integer; unknown names are rejected, never ignored.

use crate::error::{Error, Result};

/// Default step for `resize/1` once the mapping is past it: 64 MiB.
pub const DEFAULT_MAX_INC: u64 = 64 << 20;

/// Everything `open` was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub write: bool,
    pub create: bool,
    pub truncate: bool,
    pub shared: bool,
    pub private: bool,
    pub shared_validate: bool,
    pub sync: bool,
    pub direct: bool,
    pub lock: bool,
    pub populate: bool,
    pub noreserve: bool,
    pub nonblock: bool,
    pub anon: bool,
    pub fixed: bool,
    pub address: Option<u64>,
    pub auto_unlink: bool,
    pub chmod: u32,
    pub size: Option<u64>,
    pub hugetlb: bool,
    pub huge_2mb: bool,
    pub huge_1gb: bool,
    pub nocache: bool,
    pub uninitialized: bool,
    pub fixed_size: bool,
    pub max_inc_size: u64,
    pub fit: bool,
    pub debug: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            write: false,
            create: false,
            truncate: false,
            shared: false,
            private: false,
            shared_validate: false,
            sync: false,
            direct: false,
            lock: true,
            populate: false,
            noreserve: false,
            nonblock: false,
            anon: false,
            fixed: false,
            address: None,
            auto_unlink: false,
            chmod: 0o600,
            size: None,
            hugetlb: false,
            huge_2mb: false,
            huge_1gb: false,
            nocache: false,
            uninitialized: false,
            fixed_size: false,
            max_inc_size: DEFAULT_MAX_INC,
            fit: false,
            debug: false,
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
        match (name, value) {
            ("read", None) => Ok(()),
            ("write", None) => flag(&mut self.write),
            ("create", None) => flag(&mut self.create),
            ("truncate", None) => flag(&mut self.truncate),
            ("shared", None) => flag(&mut self.shared),
            ("private", None) => flag(&mut self.private),
            ("shared_validate", None) => flag(&mut self.shared_validate),
            ("sync", None) => flag(&mut self.sync),
            ("direct", None) => flag(&mut self.direct),
            ("lock", None) => flag(&mut self.lock),
            ("nolock", None) => {
                self.lock = false;
                Ok(())
            }
            ("populate", None) => flag(&mut self.populate),
            ("noreserve", None) => flag(&mut self.noreserve),
            ("nonblock", None) => flag(&mut self.nonblock),
            ("anon", None) => flag(&mut self.anon),
            ("fixed", None) => flag(&mut self.fixed),
            ("auto_unlink", None) => flag(&mut self.auto_unlink),
            ("hugetlb", None) => flag(&mut self.hugetlb),
            ("huge_2mb", None) => flag(&mut self.huge_2mb),
            ("huge_1gb", None) => flag(&mut self.huge_1gb),
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

    /// Whether the mapping is shared with the file / other processes.
    pub fn is_shared(&self) -> bool {
        self.shared || self.shared_validate
    }

    /// Checks combinations that individually valid options cannot form.
    pub fn validate(&self) -> Result<()> {
        if self.private && self.is_shared() {
            return Err(Error::Einval);
        }
        if self.fixed && self.address.is_none() {
            return Err(Error::Einval);
        }
        if self.huge_2mb && self.huge_1gb {
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
        let mut f = if self.shared_validate {
            libc::MAP_SHARED_VALIDATE
        } else if self.shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        if self.shared_validate && self.sync {
            f |= libc::MAP_SYNC;
        }
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
        if self.hugetlb || self.huge_2mb || self.huge_1gb {
            f |= libc::MAP_HUGETLB;
        }
        if self.huge_2mb {
            f |= libc::MAP_HUGE_2MB;
        }
        if self.huge_1gb {
            f |= libc::MAP_HUGE_1GB;
        }
        if self.uninitialized && self.anon {
            // Honoured only by kernels built with CONFIG_MMAP_ALLOW_UNINITIALIZED.
            f |= MAP_UNINITIALIZED;
        }
        // `nocache` is a macOS flag with no Linux equivalent: accepted, no effect.
        f
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
        assert!(o.lock && !o.write && !o.is_shared());
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

    #[test]
    fn flags_follow_options() {
        let o = parse(&[
            ("shared", None),
            ("write", None),
            ("populate", None),
            ("nolock", None),
        ])
        .unwrap();
        assert!(!o.lock);
        assert_eq!(o.map_flags() & libc::MAP_SHARED, libc::MAP_SHARED);
        assert_ne!(o.map_flags() & libc::MAP_POPULATE, 0);
        assert_eq!(o.prot(), libc::PROT_READ | libc::PROT_WRITE);
    }
}
