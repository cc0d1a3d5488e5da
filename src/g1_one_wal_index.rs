//! G1: one WAL index (being written).
