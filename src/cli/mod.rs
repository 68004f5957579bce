//! The `confab` program's own parts: what only a person at a terminal or an operator measuring
//! a server needs. The library (`confab::…`) knows nothing of these, so a bot that depends on it
//! with `default-features = false` builds none of clap, rustyline or the benchmark.

pub mod address;
pub mod bench;
mod complete;
mod history;
pub mod identities;
mod keys;
mod known;
mod lineedit;
mod output;
pub mod process;
pub mod repl;
mod screen;
mod show;
mod text;
