use crate::{Error, Result};

/// Check a public storage base URL (`storage.direct_serve_base_url`): `http(s)://host[:port]`
/// and nothing else. SigV4 signs the path too, so storage cannot live under a sub-path of the
/// public host; credentials in the URL would end up in every `Location`. Returns it without a
/// trailing slash.
pub fn validate_public_base_url(base: &str) -> Result<String> {
    let bad = |why: &str| {
        Err(Error::invalid(
            "open",
            format!("direct_serve_base_url {base:?} {why}"),
        ))
    };
    let Some((scheme, rest)) = base.split_once("://") else {
        return bad("is not a URL");
    };
    if !matches!(scheme, "http" | "https") {
        return bad("must be http or https");
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() {
        return bad("has no host");
    }
    if authority.contains(['/', '?', '#']) {
        return bad("must be scheme://host[:port] with no path, query or fragment");
    }
    if authority.contains('@') {
        return bad("must not carry credentials");
    }
    if let Some((host, port)) = authority.rsplit_once(':')
        && !host.ends_with(']')
        && (host.is_empty() || port.parse::<u16>().is_err())
    {
        return bad("has a bad port");
    }
    if !authority
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-.:[]_".contains(c))
    {
        return bad("has characters a host name cannot have");
    }
    Ok(format!("{scheme}://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_rules() {
        assert_eq!(
            validate_public_base_url("https://cdn.example.test/").unwrap(),
            "https://cdn.example.test"
        );
        assert!(validate_public_base_url("http://127.0.0.1:9000").is_ok());
        assert!(validate_public_base_url("http://[::1]:9000").is_ok());
        for bad in [
            "https://h/sub",
            "https://h?x=1",
            "ftp://h",
            "https://u:p@h",
            "not a url",
            "http://h:x",
            "https://",
        ] {
            assert!(validate_public_base_url(bad).is_err(), "{bad}");
        }
    }
}
