//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; not part of the API).

use proxyd_ecosystem::serde_json::{self, Value};

use crate::rewrite::{file_of, find_tarball, rewrite_packument};

/// Read `data` as an upstream packument: a rewritten packument is JSON whose every tarball that
/// had a safe file name points at proxyd, and every tarball proxyd can find by its file name
/// was in the packument.
pub fn packument(data: &[u8]) {
    let mount = "http://proxy.test/npm";
    if let Ok(rewritten) = rewrite_packument(data, "pkg", mount) {
        let doc: Value = serde_json::from_slice(&rewritten).expect("a rewritten packument is JSON");
        if let Some(versions) = doc.get("versions").and_then(Value::as_object) {
            for version in versions.values() {
                if let Some(url) = version.pointer("/dist/tarball").and_then(Value::as_str)
                    && url.starts_with(mount)
                {
                    let file = file_of(url).expect("a rewritten URL ends in a safe file name");
                    assert_eq!(url, format!("{mount}/pkg/-/{file}"));
                }
            }
        }
    }
    for file in ["pkg-1.0.0.tgz", "a.tgz"] {
        if let Ok(Some(info)) = find_tarball(data, file) {
            assert_eq!(file_of(&info.url), Some(file));
        }
    }
}
