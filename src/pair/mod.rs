//! pair (placeholder until its issue lands).
