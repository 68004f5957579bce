//! confab: a chat system for groups of people on a network.
//!
//! # Layout
//!
//! - [`coordinator`]: the UDP front door. Clients create, find and list sessions here; it starts
//!   one [`session`] server per session and keeps the directory true.
//! - [`host`]: `confab host`, which runs session servers for a group of coordinators on other
//!   machines, meeting them only in the PostgreSQL database they share.
//! - [`session`]: one TCP server per session. A single room task orders every message and presence
//!   change; each member has a reader and a writer with a bounded queue.
//! - [`client`]: the async client API (used by the terminal program, the tests, the benchmark and
//!   the example bot) and the terminal program itself. Private messages go peer to peer over UDP.
//! - [`protocol`]: every message on the wire, mirrored in `protocol.md`; [`codec`] frames TCP lines.
//! - [`auth`]: name rules, password hashes, login tokens, login throttling.
//! - [`store`]: the SQLite database (users, sessions, history) and its migrations; `db` runs
//!   it on its own thread behind an async handle.
//! - [`presence_log`]: the human-readable login/join/leave log, rotated by size.
//!
//! The `confab` program (`src/main.rs` and `src/cli/`, behind the default `cli` feature) is built
//! on this library and adds what only it needs: the terminal client and `confab bench`.
#![warn(missing_docs)]

pub mod auth;
mod bucket;
pub mod client;
pub mod codec;
pub mod coordinator;
pub(crate) mod db;
pub mod dirs;
pub(crate) mod expiring;
pub mod host;
pub mod identity;
pub mod presence_log;
pub mod private_file;
pub mod protocol;
pub mod seal;
pub mod session;
pub mod store;
pub mod transport;
