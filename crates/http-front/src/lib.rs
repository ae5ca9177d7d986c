#![doc = include_str!("../README.md")]

mod artifact;
mod body;
mod front;
mod server;

pub use front::{DirectServeSettings, DisabledMount, Front, FrontSettings, MetricsRender};
pub use server::{ServerLimits, serve};
