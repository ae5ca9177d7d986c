//! Upstream bearer tokens: a registry whose `/v2/` answers 401 with
//! `WWW-Authenticate: Bearer realm=…,service=…` hands out a token per repository scope at its
//! realm (with `upstream.auth` credentials for the realm's URL, when configured); tokens are
//! reused until shortly before they expire. Neither tokens nor their requests are logged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proxyd_ecosystem::http::{HeaderMap, HeaderValue, header};
use proxyd_ecosystem::{FetchFailure, Upstream, UpstreamResponse, serde_json};

/// How long a registry's answer to `/v2/` (whether it wants tokens) is remembered.
const CHALLENGE_TTL: Duration = Duration::from_secs(600);
/// Tokens kept at most (one per upstream and repository asked for).
const MAX_TOKENS: u64 = 10_000;
/// A token is used until this long before it expires.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);

/// What an upstream's `/v2/` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// Nothing (or basic credentials, which `upstream.auth` adds by URL).
    None,
    /// A bearer token from `realm`, for `service`.
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// Parse a `WWW-Authenticate` value; `None` when it is not a bearer challenge with a realm.
pub(crate) fn parse_bearer(value: &str) -> Option<Challenge> {
    let rest = value.trim();
    let (scheme, params) = rest.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut realm = None;
    let mut service = None;
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (name, after) = rest.split_once('=')?;
        let name = name.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim(), &after[end..])
        };
        match name.as_str() {
            "realm" => realm = Some(value.to_owned()),
            "service" => service = Some(value.to_owned()),
            _ => {}
        }
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge::Bearer {
        realm: realm.filter(|r| r.starts_with("http://") || r.starts_with("https://"))?,
        service,
    })
}

#[derive(Clone)]
struct Token {
    header: HeaderValue,
    expires: Instant,
}

/// The tokens of one instance's upstreams.
pub(crate) struct Tokens {
    challenges: moka::sync::Cache<usize, Arc<Challenge>>,
    tokens: moka::sync::Cache<(usize, String), Token>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("tokens", &self.tokens.entry_count())
            .finish_non_exhaustive()
    }
}

fn percent(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Tokens {
    pub(crate) fn new() -> Self {
        Self {
            challenges: moka::sync::Cache::builder()
                .max_capacity(1_000)
                .time_to_live(CHALLENGE_TTL)
                .build(),
            tokens: moka::sync::Cache::builder()
                .max_capacity(MAX_TOKENS)
                .time_to_live(Duration::from_secs(3_600))
                .build(),
        }
    }

    /// Forget the token for `repository` on upstream `index` (the upstream refused it).
    pub(crate) fn refused(&self, index: usize, repository: &str) {
        self.tokens.invalidate(&(index, repository.to_owned()));
        self.challenges.invalidate(&index);
    }

    /// The headers that authorize a pull of `repository` from upstream `index` at `root`
    /// (empty when it wants no token).
    pub(crate) async fn headers(
        &self,
        upstream: &Upstream,
        index: usize,
        root: &str,
        repository: &str,
    ) -> Result<HeaderMap, FetchFailure> {
        let mut headers = HeaderMap::new();
        let key = (index, repository.to_owned());
        if let Some(token) = self.tokens.get(&key)
            && token.expires > Instant::now()
        {
            headers.insert(header::AUTHORIZATION, token.header);
            return Ok(headers);
        }
        let challenge = match self.challenges.get(&index) {
            Some(c) => c,
            None => {
                let (status, answer) = upstream
                    .probe(&format!("{root}/v2/"), &HeaderMap::new())
                    .await
                    .map_err(FetchFailure::from)?;
                let challenge = match status {
                    401 => answer
                        .get_all(header::WWW_AUTHENTICATE)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .find_map(parse_bearer)
                        .unwrap_or(Challenge::None),
                    _ => Challenge::None,
                };
                let challenge = Arc::new(challenge);
                self.challenges.insert(index, challenge.clone());
                challenge
            }
        };
        let Challenge::Bearer { realm, service } = &*challenge else {
            return Ok(headers);
        };
        let mut url = format!(
            "{realm}{}scope={}",
            if realm.contains('?') { '&' } else { '?' },
            percent(&format!("repository:{repository}:pull"))
        );
        if let Some(service) = service {
            url.push_str(&format!("&service={}", percent(service)));
        }
        let body = match upstream
            .document(&url, "application/json", None, None)
            .await
            .map_err(|e| FetchFailure::upstream(format!("the registry's token service: {e}")))?
        {
            UpstreamResponse::Body { body, .. } => body,
            UpstreamResponse::NotModified => {
                return Err(FetchFailure::upstream(
                    "the registry's token service answered 304",
                ));
            }
        };
        let json: serde_json::Value = serde_json::from_slice(&body).map_err(|_| {
            FetchFailure::upstream("the registry's token service did not answer JSON")
        })?;
        let token = json
            .get("token")
            .or_else(|| json.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| FetchFailure::upstream("the registry's token service gave no token"))?;
        let lifetime = json
            .get("expires_in")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(60);
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| FetchFailure::upstream("the registry's token is not a header value"))?;
        let token = Token {
            header: value,
            expires: Instant::now()
                + Duration::from_secs(lifetime)
                    .saturating_sub(EXPIRY_MARGIN)
                    .max(Duration::from_secs(5)),
        };
        headers.insert(header::AUTHORIZATION, token.header.clone());
        self.tokens.insert(key, token);
        Ok(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_are_read() {
        assert_eq!(
            parse_bearer(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into())
            })
        );
        assert_eq!(
            parse_bearer("bearer realm=http://127.0.0.1:1/t"),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/t".into(),
                service: None
            })
        );
        assert_eq!(parse_bearer(r#"Basic realm="x""#), None);
        assert_eq!(parse_bearer(r#"Bearer realm="file:///etc/passwd""#), None);
        assert_eq!(parse_bearer(r#"Bearer realm="unclosed"#), None);
        assert_eq!(percent("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
    }
}
