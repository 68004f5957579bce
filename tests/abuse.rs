//! Attacks from one stranger at the open edge, each against a real coordinator on loopback, each
//! bounded in time, each asserting the bound it must not cross (issue 9).
//!
//! - `edge`: the coordinator's UDP door — reply cache, password hashing pool, amplification,
//!   per-address limits, quotas, descriptors, strict parsing.
//! - `room`: what a member or its files can make the process hold — history byte budget, presence
//!   churn, log growth, file permissions, signals.

mod common;

#[path = "abuse/edge.rs"]
mod edge;
#[path = "abuse/room.rs"]
mod room;
