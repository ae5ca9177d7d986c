//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; not part of the API).

use proxyd_ecosystem::Url;

use crate::simple::{Page, parse_html, parse_json, render_html, render_json};

/// Read `data` as an upstream simple page, HTML and JSON, and check what proxyd would serve
/// from it: rendering never fails, and what proxyd renders reads back to the same files.
pub fn simple_page(data: &[u8]) {
    let Ok(page_url) = Url::parse("https://upstream.test/simple/pkg/") else {
        return;
    };
    if let Ok(text) = std::str::from_utf8(data) {
        check_rendering(&parse_html(text, &page_url));
    }
    if let Ok(page) = parse_json(data, &page_url) {
        check_rendering(&page);
    }
}

fn check_rendering(page: &Page) {
    let base = "http://proxy.test/pypi";
    let served_url = match Url::parse("http://proxy.test/pypi/simple/pkg/") {
        Ok(url) => url,
        Err(_) => return,
    };
    let html = render_html(page, "pkg", base);
    let json = render_json(page, "pkg", base);
    let from_json = parse_json(json.as_bytes(), &served_url).expect("proxyd's JSON reads back");
    let from_html = parse_html(&html, &served_url);
    assert_eq!(
        from_json.files.len(),
        page.files.len(),
        "JSON keeps every file"
    );
    assert_eq!(
        from_html.files.len(),
        page.files.len(),
        "HTML keeps every file"
    );
    for (ours, theirs) in from_json.files.iter().zip(&page.files) {
        assert_eq!(ours.filename, theirs.filename);
        assert_eq!(ours.hashes, theirs.hashes);
    }
}
