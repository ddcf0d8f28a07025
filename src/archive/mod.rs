//! archive (placeholder until its issue lands).
