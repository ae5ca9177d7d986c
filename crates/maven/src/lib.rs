#![doc = include_str!("../README.md")]

mod handler;
mod path;

pub use handler::{MavenConfig, MavenKind, MavenOp, MavenRepository};
pub use path::{MavenFile, MavenPath};
