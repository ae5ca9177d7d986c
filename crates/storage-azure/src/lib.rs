#![doc = include_str!("../README.md")]

mod backend;
mod config;
mod sas;

pub use backend::AzureStorage;
pub use config::{AzureConfig, AzureCredentials, DEFAULT_BLOCK_SIZE};
