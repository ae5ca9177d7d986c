#![doc = include_str!("../README.md")]

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod handler;
mod index;

pub use handler::{CargoConfig, CargoKind, CargoOp, CargoRegistry};
