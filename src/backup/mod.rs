//! The whole backup cycle (split, offline archive, resync) and its schedule (issue 4).

pub mod cycle;
pub mod schedule;
