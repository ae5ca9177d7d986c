#![doc = include_str!("../README.md")]

mod handler;
mod name;
mod rewrite;

pub use handler::{Npm, NpmConfig, NpmKind, NpmOp};
