use proxyd_ecosystem::ExpectedDigest;
use proxyd_ecosystem::names::is_safe_file_name;
use proxyd_ecosystem::serde_json::{self, Value};

/// The file name at the end of a tarball URL.
pub(crate) fn file_of(url: &str) -> Option<&str> {
    let path = url.split(['?', '#']).next()?;
    let file = path.rsplit('/').next()?;
    is_safe_file_name(file).then_some(file)
}

/// The packument with every `dist.tarball` pointing at proxyd (`mount_url` is the instance's
/// public URL, `https://proxy.example/npm`).
pub(crate) fn rewrite_packument(
    body: &[u8],
    name: &str,
    mount_url: &str,
) -> Result<Vec<u8>, String> {
    let mut doc: Value =
        serde_json::from_slice(body).map_err(|e| format!("upstream packument is not JSON: {e}"))?;
    if let Some(versions) = doc.get_mut("versions").and_then(Value::as_object_mut) {
        for version in versions.values_mut() {
            let Some(tarball) = version.pointer_mut("/dist/tarball") else {
                continue;
            };
            let Some(file) = tarball.as_str().and_then(file_of) else {
                continue;
            };
            *tarball = Value::String(format!("{mount_url}/{name}/-/{file}"));
        }
    }
    serde_json::to_vec(&doc).map_err(|e| e.to_string())
}

/// What the packument says about the version whose tarball is `file`.
#[derive(Debug)]
pub(crate) struct TarballInfo {
    pub(crate) version: String,
    pub(crate) url: String,
    pub(crate) expected: Option<ExpectedDigest>,
}

pub(crate) fn find_tarball(body: &[u8], file: &str) -> Result<Option<TarballInfo>, String> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| format!("upstream packument is not JSON: {e}"))?;
    let Some(versions) = doc.get("versions").and_then(Value::as_object) else {
        return Ok(None);
    };
    for (version, meta) in versions {
        let Some(url) = meta.pointer("/dist/tarball").and_then(Value::as_str) else {
            continue;
        };
        if file_of(url) != Some(file) {
            continue;
        }
        let integrity = meta.pointer("/dist/integrity").and_then(Value::as_str);
        let shasum = meta.pointer("/dist/shasum").and_then(Value::as_str);
        let expected = integrity
            .and_then(ExpectedDigest::from_sri)
            .or_else(|| shasum.and_then(ExpectedDigest::sha1_hex));
        return Ok(Some(TarballInfo {
            version: version.clone(),
            url: url.to_owned(),
            expected,
        }));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{"name":"@s/p","dist-tags":{"latest":"1.0.0"},"versions":{"1.0.0":{"dist":{"tarball":"http://up.test/@s/p/-/p-1.0.0.tgz","shasum":"0123456789abcdef0123456789abcdef01234567"}}}}"#;

    #[test]
    fn rewrites_tarballs_only() {
        let out = rewrite_packument(DOC.as_bytes(), "@s/p", "http://proxy.test/npm").unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["versions"]["1.0.0"]["dist"]["tarball"],
            "http://proxy.test/npm/@s/p/-/p-1.0.0.tgz"
        );
        assert_eq!(v["dist-tags"]["latest"], "1.0.0");
        assert!(rewrite_packument(b"not json", "x", "http://p").is_err());
    }

    #[test]
    fn finds_tarball_and_digest() {
        let info = find_tarball(DOC.as_bytes(), "p-1.0.0.tgz")
            .unwrap()
            .unwrap();
        assert_eq!(info.version, "1.0.0");
        assert_eq!(info.url, "http://up.test/@s/p/-/p-1.0.0.tgz");
        assert!(matches!(info.expected, Some(ExpectedDigest::Sha1(_))));
        assert!(
            find_tarball(DOC.as_bytes(), "p-2.0.0.tgz")
                .unwrap()
                .is_none()
        );
    }
}
