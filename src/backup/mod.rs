//! backup (placeholder until its issue lands).
