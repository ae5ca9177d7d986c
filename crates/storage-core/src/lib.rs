#![doc = include_str!("../README.md")]

mod base_url;
mod error;
mod key;
mod object;
mod redact;
mod signer;
mod stream;

pub use base_url::validate_public_base_url;
pub use error::{Error, ErrorKind, Result};
pub use key::ObjectKey;
pub use object::{
    ByteStream, GetResult, ObjectMeta, ObjectStream, PutMode, PutOptions, PutResult, Storage,
    list_all,
};
pub use redact::redact_signed_url;
pub use signer::{
    MAX_PRESIGN_TTL_ANY, MIN_PRESIGN_TTL, PresignSupport, PresignedUrl, ResponseOverrides, Signer,
    validate_ttl,
};
pub use stream::{PartReader, PutDigest};
