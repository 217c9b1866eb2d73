//! snapsync: snapshot-based synchronization of directory trees.
//!
//! Data flows one way: [`scan`] → [`changes`] (change set) → [`reconcile`]
//! ([`plan`]; [`bidi`] for both ways) → [`apply`] through an [`endpoint`] → [`state`] (snapshot
//! commit). [`session`] drives one run; [`watch`] gathers what changes
//! between runs in continuous mode. The library knows nothing of the
//! terminal: the binary (`src/main.rs`, `src/cli/`) parses arguments, prints
//! and chooses exit codes.

pub mod apply;
pub mod backup;
pub mod bidi;
pub mod changes;
pub mod data_channel;
pub mod delta;
pub mod endpoint;
pub mod filter;
pub mod guard;
pub mod lineage;
pub mod log;
pub mod model;
pub mod plan;
pub mod protocol;
pub mod rate_limit;
pub mod reconcile;
pub mod scan;
pub mod serve;
pub mod session;
pub mod state;
pub mod watch;

/// Version of the wire protocol this build speaks.
pub const PROTOCOL_VERSION: u32 = 7;
