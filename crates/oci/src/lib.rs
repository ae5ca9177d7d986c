#![doc = include_str!("../README.md")]

mod auth;
mod handler;
mod names;

pub use handler::{OciConfig, OciKind, OciOp, OciRegistry, Target};
pub use names::{Digest, Reference, check_repository};
