#![doc = include_str!("../README.md")]

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod handler;
mod name;
mod simple;

pub use handler::{PyPi, PyPiConfig, PyPiKind, PyPiOp};
