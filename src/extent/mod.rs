//! extent (placeholder until its issue lands).
