//! emmap's core: memory mappings for the Erlang VM, with no Erlang in sight.
//!
//! Everything a NIF call decides is here, testable with `cargo test`:
//!
//! - the handle: the open options ([`options`]), the handle with its open policy, data path,
//!   size changes and release rules ([`mapping`]), the reader/writer exclusion of `lock`
//!   handles ([`readers`]), which files this process maps ([`file_users`]), and the errors
//!   ([`error`]);
//! - memory: one kernel mapping ([`region`]), offset/length arithmetic that cannot wrap
//!   ([`bounds`]), 64-bit atomics on mapped slots ([`atomics`]), and how a mapping grows
//!   ([`growth`]);
//! - a file cut short by someone else: the SIGBUS handler ([`sigbus`]) and its table of
//!   mappings ([`registry`]);
//! - the containers built on a mapping: block storage ([`blocks`], checked with
//!   [`crc32c`]) and the persistent queue ([`queue`]), with the view of mapped memory they
//!   share ([`mem`]).

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
