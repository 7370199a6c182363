//! Replication engine (being built).
