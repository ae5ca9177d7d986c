#![doc = include_str!("../README.md")]

mod handler;
mod packages;

pub use handler::{DebianArchive, DebianConfig, DebianKind, DebianOp, DistsFile, SignedFile};
