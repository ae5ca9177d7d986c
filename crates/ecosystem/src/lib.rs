#![doc = include_str!("../README.md")]

mod contract;
mod egress;
mod kind;
mod metadata;
pub mod names;
mod reply;
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod route_check;
pub mod settings;
mod upstream;

pub use contract::{Ecosystem, EcosystemRequest, Handler, read_only};
pub use kind::{
    COMMON_FIELDS, EcosystemContext, EcosystemKind, InstanceSpec, MountedInstance, Planned,
    Registry, SharedContext, env_name,
};
pub use metadata::{
    DocumentCheck, DocumentRequest, Documents, Freshness, MetadataCache, MetadataMemory, any_body,
    fingerprint, json_body,
};
pub use reply::{
    DocumentReply, Fetch, FreshnessRule, Refusal, RefusalKind, Reply, ResolveFuture, Resolver,
    SourceFuture, StoredReply, UploadReply,
};
pub use upstream::{
    Credential, Upstream, UpstreamAuth, UpstreamClients, UpstreamConfigError, UpstreamError,
    UpstreamLimits, UpstreamResponse, UpstreamSettings,
};

// The vocabulary an ecosystem crate needs, so that it depends on this crate alone.
pub use async_trait::async_trait;
pub use bytes::Bytes;
pub use http;
pub use proxyd_cache::{
    ArtifactSpec, DigestVerifier, Document, ExpectedDigest, FailureKind, FetchFailure,
    UpstreamBody, Verifier,
};
pub use proxyd_storage_core::{ByteStream, ObjectKey};
pub use serde;
pub use serde_json;
pub use tracing;
pub use url::Url;
