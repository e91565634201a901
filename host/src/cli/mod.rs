//! Pieces of the `chiral` binary.
pub mod args;
pub mod progress;
