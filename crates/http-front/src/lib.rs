#![doc = include_str!("../README.md")]

mod artifact;
mod body;
mod front;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod head_timer;
mod server;
mod upload;

pub use front::{DirectServeSettings, DisabledMount, Front, FrontSettings, MetricsRender};
pub use server::{ServerLimits, serve};
