#![doc = include_str!("../README.md")]

mod metadata;
pub mod names;
mod render;
mod reply;
mod upstream;

pub use metadata::{Freshness, MetadataCache};
pub use render::RenderCache;
pub use reply::{
    ArtifactReply, DocumentReply, Ecosystem, EcosystemRequest, Reply, ResolveFuture, Resolver,
};
pub use upstream::{Upstream, UpstreamError, UpstreamResponse};
