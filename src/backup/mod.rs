//! The whole backup cycle (split, offline archive, resync), its hooks, and the schedule the
//! daemon runs it on (from its config file).

pub mod cycle;
pub mod hooks;
pub mod schedule;
