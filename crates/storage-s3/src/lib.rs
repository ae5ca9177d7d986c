#![doc = include_str!("../README.md")]

mod backend;
mod config;
mod errors;
mod signer;

pub use backend::S3Storage;
pub use config::{DEFAULT_PART_SIZE, S3Config, StaticCredentials};
