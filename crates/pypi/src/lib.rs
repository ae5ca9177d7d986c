#![doc = include_str!("../README.md")]

mod handler;
mod name;
mod simple;

pub use handler::{PyPi, PyPiConfig, PyPiKind, PyPiOp};
