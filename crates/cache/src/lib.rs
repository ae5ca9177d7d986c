#![doc = include_str!("../README.md")]

mod cache;
pub mod clock;
mod digest;
mod entry;
mod error;
mod index;
pub mod metric_names;

pub use cache::{Cache, CacheSettings, EcosystemStats, Fetched, Stats, UpstreamBody};
pub use digest::{DigestVerifier, ExpectedDigest, Verifier};
pub use entry::{ArtifactEntry, ArtifactSpec, Document};
pub use error::{CacheError, FailureKind, FetchFailure};
pub use index::{
    AccessUpdate, ArtifactIndex, DocumentIndex, EvictionLease, FetchLeases, Index, IndexError,
    IndexErrorKind, IndexRecord, IndexTotals, Lease, LocalLeases, Victim,
};
