//! qmp (placeholder until its issue lands).
