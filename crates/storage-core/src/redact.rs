/// Query parameters that make a URL a credential (SigV4, Azure SAS, CloudFront-style).
const SECRET_PARAMS: &[&str] = &[
    "x-amz-signature",
    "x-amz-security-token",
    "x-amz-credential",
    "sig",
    "signature",
    "skoid",
];

/// `url` with the value of every signature-bearing query parameter replaced by `REDACTED`,
/// so the rest (host, key, expiry) can be logged.
pub fn redact_signed_url(url: &str) -> String {
    let Some((base, rest)) = url.split_once('?') else {
        return url.to_owned();
    };
    let (query, fragment) = match rest.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (rest, None),
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(base);
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((name, _)) if SECRET_PARAMS.iter().any(|s| name.eq_ignore_ascii_case(s)) => {
                out.push_str(name);
                out.push_str("=REDACTED");
            }
            _ => out.push_str(pair),
        }
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_signatures_only() {
        let s3 = "http://h:1/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F2&X-Amz-Signature=deadbeef&X-Amz-Expires=900";
        let r = redact_signed_url(s3);
        assert!(!r.contains("deadbeef") && !r.contains("AK%2F2"), "{r}");
        assert!(r.contains("X-Amz-Expires=900"));
        let az = "http://h/acct/c/k?sv=2022-11-02&sp=r&sig=abc%3D";
        assert_eq!(
            redact_signed_url(az),
            "http://h/acct/c/k?sv=2022-11-02&sp=r&sig=REDACTED"
        );
        assert_eq!(redact_signed_url("http://h/x"), "http://h/x");
    }
}
