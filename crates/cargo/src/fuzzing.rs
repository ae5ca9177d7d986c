//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; not part of the API).

use crate::index::{download_url, find_version, index_path, valid_name, valid_version};

/// Read `data` as an upstream index file, and as a name, a version and a `dl` template: nothing
/// panics, index paths of valid names stay inside the index, and a name or version never
/// changes where a download URL points.
pub fn index_file(data: &[u8]) {
    for version in ["1.0.0", "0.1.0-alpha.1", ""] {
        let _ = find_version(data, version);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\n');
    let (name, version, dl) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    if valid_name(name) {
        let path = index_path(name);
        assert!(
            !path
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == ".."),
            "{path}"
        );
        if valid_version(version) {
            // A name or version can never change where the template points: what comes
            // before its first marker is kept as it is.
            let url = download_url(dl, name, version, "00");
            let fixed = dl[..dl.find('{').unwrap_or(dl.len())].trim_end_matches('/');
            assert!(url.starts_with(fixed), "{dl:?} {name:?} {version:?}: {url}");
        }
    }
}
