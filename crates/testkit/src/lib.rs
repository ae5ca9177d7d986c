#![doc = include_str!("../README.md")]
#![allow(clippy::unwrap_used, missing_docs)] // test support: failing loudly is the point

pub mod apt_repo;
pub mod cargo_registry;
pub mod conformance;
pub mod ecosystem_suite;
pub mod emulators;
pub mod forward;
pub mod go_proxy;
pub mod index_suite;
pub mod maven_repo;
pub mod npm_registry;
pub mod oci_registry;
pub mod postgres;
pub mod proxyd;
pub mod pypi_registry;
pub mod static_server;
pub mod tls;

use std::path::PathBuf;

/// Where `scripts/test` installs tools (s3s-fs, Azurite): `$PROXYD_TOOLS_DIR`, else
/// `$PROXYD_CACHE_DIR/tools`, else `~/.cache/proxyd-dev/tools`.
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PROXYD_TOOLS_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("PROXYD_CACHE_DIR") {
        return PathBuf::from(dir).join("tools");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache/proxyd-dev/tools")
}

/// A gzip-compressed tar archive of `files` (path, contents), with fixed modes and times so the
/// same input always gives the same bytes (and digest).
pub fn tar_gz(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    for (path, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        builder
            .append_data(&mut header, path, data.as_slice())
            .unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// A free TCP port on 127.0.0.1 (bound and released; the caller binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
