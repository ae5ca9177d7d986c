#![doc = include_str!("../README.md")]

mod handler;
mod index;

pub use handler::{CargoConfig, CargoKind, CargoOp, CargoRegistry};
