//! Service SAS for one blob, computed here because the SDK's SAS builder cannot bind the
//! `rsct`/`rscd` response overrides (and a signer must never drop an override silently).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use proxyd_storage_core::{Error, Result};
use sha2::Sha256;
use time::OffsetDateTime;

/// SAS version signed; Azure and Azurite both accept it.
const SAS_VERSION: &str = "2022-11-02";

/// Characters left as they are in query values and blob paths.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
const PATH_SEGMENT: &AsciiSet = QUERY_VALUE;

/// What a service SAS grants: reading one blob, or (with no blob) listing the container.
pub(crate) struct BlobSas<'a> {
    pub(crate) account: &'a str,
    pub(crate) container: &'a str,
    /// The blob; `None` for a container SAS that lists.
    pub(crate) blob: Option<&'a str>,
    pub(crate) start: OffsetDateTime,
    pub(crate) expiry: OffsetDateTime,
    pub(crate) https_only: bool,
    pub(crate) content_type: Option<&'a str>,
    pub(crate) content_disposition: Option<&'a str>,
}

fn sas_time(t: OffsetDateTime) -> String {
    // Whole seconds in UTC: `YYYY-MM-DDThh:mm:ssZ`.
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

impl BlobSas<'_> {
    /// The SAS query string (without `?`), signed with the base64 account key.
    pub(crate) fn query(&self, account_key_b64: &str) -> Result<String> {
        let key = STANDARD.decode(account_key_b64.trim()).map_err(|_| {
            Error::new(
                proxyd_storage_core::ErrorKind::PermissionDenied,
                "presign_get",
                "the Azure account key is not valid base64",
            )
        })?;
        let (st, se) = (sas_time(self.start), sas_time(self.expiry));
        let protocol = if self.https_only { "https" } else { "" };
        let (resource, kind, permissions) = match self.blob {
            Some(blob) => (
                format!("/blob/{}/{}/{blob}", self.account, self.container),
                "b",
                "r",
            ),
            None => (
                format!("/blob/{}/{}", self.account, self.container),
                "c",
                "l",
            ),
        };
        // Field order of the service SAS string-to-sign for versions since 2020-12-06.
        let string_to_sign = [
            permissions,
            &st,
            &se,
            &resource,
            "", // signed identifier
            "", // signed IP
            protocol,
            SAS_VERSION,
            kind,
            "", // snapshot time
            "", // encryption scope
            "", // rscc
            self.content_disposition.unwrap_or(""),
            "", // rsce
            "", // rscl
            self.content_type.unwrap_or(""),
        ]
        .join("\n");
        let mut mac = Hmac::<Sha256>::new_from_slice(&key)
            .map_err(|_| Error::invalid("presign_get", "unusable Azure account key"))?;
        mac.update(string_to_sign.as_bytes());
        let sig = STANDARD.encode(mac.finalize().into_bytes());

        let mut pairs = vec![
            ("sv", SAS_VERSION),
            ("st", &st),
            ("se", &se),
            ("sr", kind),
            ("sp", permissions),
        ];
        if self.https_only {
            pairs.push(("spr", "https"));
        }
        if let Some(cd) = self.content_disposition {
            pairs.push(("rscd", cd));
        }
        if let Some(ct) = self.content_type {
            pairs.push(("rsct", ct));
        }
        pairs.push(("sig", &sig));
        Ok(pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, QUERY_VALUE)))
            .collect::<Vec<_>>()
            .join("&"))
    }
}

/// A blob name as a URL path (each segment percent-encoded, `/` kept).
pub(crate) fn blob_path(blob: &str) -> String {
    blob.split('/')
        .map(|s| utf8_percent_encode(s, PATH_SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_has_every_field_and_encodes_values() {
        let start = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let sas = BlobSas {
            account: "acct",
            container: "c1c",
            blob: Some("npm/a.tgz"),
            start,
            expiry: start + time::Duration::minutes(30),
            https_only: true,
            content_type: Some("application/octet-stream"),
            content_disposition: Some("attachment; filename=\"a.tgz\""),
        };
        let q = sas.query("a2V5").unwrap();
        assert!(q.starts_with("sv=2022-11-02&st=2023-11-14T22%3A13%3A20Z&se=2023-11-14T22%3A43%3A20Z&sr=b&sp=r&spr=https"), "{q}");
        assert!(q.contains("rsct=application%2Foctet-stream"), "{q}");
        assert!(
            q.contains("rscd=attachment%3B%20filename%3D%22a.tgz%22"),
            "{q}"
        );
        assert!(q.contains("&sig="));
        assert!(sas.query("not base64!").is_err());
    }

    #[test]
    fn blob_paths_keep_slashes() {
        assert_eq!(blob_path("npm/@scope/a+b.tgz"), "npm/%40scope/a%2Bb.tgz");
    }
}
