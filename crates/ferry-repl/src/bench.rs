//! Replication benchmark (being built).
