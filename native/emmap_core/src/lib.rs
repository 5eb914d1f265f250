//! emmap's core: memory mappings for the Erlang VM, with no Erlang in sight.
//!
//! Everything a NIF call needs is here, testable with `cargo test`: the open options
//! ([`options`]), offset/length arithmetic that cannot wrap ([`bounds`]), the kernel
//! mapping ([`region`]), 64-bit atomics on mapped slots ([`atomics`]) and the handle state
//! with its release rules ([`mapping`]); the containers built on a mapping, block storage
//! ([`blocks`], checked with [`crc32c`]) and the persistent queue ([`queue`]), with the view
//! of mapped memory they share ([`mem`]) and the rule by which they grow it ([`growth`]).

pub mod atomics;
pub mod blocks;
pub mod bounds;
pub mod crc32c;
pub mod error;
pub mod file_users;
pub mod growth;
pub mod mapping;
pub mod mem;
pub mod options;
pub mod queue;
pub mod readers;
pub mod region;
pub mod registry;
pub mod sigbus;

pub use error::{Error, Result};
pub use mapping::{Info, Line, Mapping, Whence};
pub use options::Options;
