//! What every [`Ecosystem::route`] must hold to, as one check the route tests and the fuzz
//! targets share (feature `testing`; not part of the API).

use crate::{Ecosystem, ObjectKey};
use http::Method;

/// Route `method` and `path` on `eco` and check the contract: nothing is accepted for POST, a
/// refusal is a 4xx with a one-line reason, and every accepted artifact has a valid storage key
/// under `prefix/` with no `.` or `..` segment. Whether it was accepted.
pub fn check_route<E: Ecosystem>(
    eco: &E,
    prefix: &str,
    method: &Method,
    path: &str,
    key_of: impl Fn(&E::Op) -> Option<&ObjectKey>,
) -> bool {
    match eco.route(method, path) {
        Ok(op) => {
            assert_ne!(*method, Method::POST, "{path:?}");
            if let Some(key) = key_of(&op) {
                assert!(key.as_str().starts_with(&format!("{prefix}/")), "{key}");
                assert!(ObjectKey::new(key.as_str()).is_ok(), "{key}");
                assert!(
                    !key.as_str().split('/').any(|s| s == ".." || s == "."),
                    "{key}"
                );
            }
            true
        }
        Err(refusal) => {
            assert!(
                (400..500).contains(&refusal.status()),
                "{path:?}: {refusal:?}"
            );
            assert_eq!(refusal.message.lines().count(), 1, "{refusal:?}");
            false
        }
    }
}
