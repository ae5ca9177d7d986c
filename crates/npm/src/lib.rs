#![doc = include_str!("../README.md")]

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod handler;
mod name;
mod rewrite;

pub use handler::{Npm, NpmConfig, NpmKind, NpmOp};
