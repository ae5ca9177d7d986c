#![doc = include_str!("../README.md")]

mod handler;
mod hash;
mod path;
mod sumdb;
mod tlog;

pub use handler::{GoConfig, GoKind, GoOp, GoProxy};
pub use hash::{h1_of_go_mod, h1_of_zip};
pub use path::{ModulePath, ModuleVersion};
pub use sumdb::{Records, VerifierKey};
