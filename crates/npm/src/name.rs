/// Check an npm package name (`name` or `@scope/name`).
pub(crate) fn validate(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 214 {
        return Err(format!(
            "npm package name {name:?} must have 1 to 214 characters"
        ));
    }
    let bad = || Err(format!("{name:?} is not a valid npm package name"));
    match name.strip_prefix('@') {
        Some(scoped) => {
            let Some((scope, pkg)) = scoped.split_once('/') else {
                return bad();
            };
            if !segment_ok(scope) || !segment_ok(pkg) {
                return bad();
            }
        }
        None => {
            if !segment_ok(name) {
                return bad();
            }
        }
    }
    Ok(())
}

fn segment_ok(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && !s.starts_with('_')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~'))
}

/// The name as it goes into an upstream URL (`@scope%2fname`).
pub(crate) fn upstream_path(name: &str) -> String {
    name.replacen('/', "%2f", 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npm_names() {
        for ok in ["lodash", "@types/node", "left-pad", "a.b_c~d", "JSONStream"] {
            assert!(validate(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "_x",
            "@scope",
            "@/x",
            "@a/b/c",
            "a/b",
            "a b",
            "..",
            "@a/.b",
            &"x".repeat(215),
        ] {
            assert!(validate(bad).is_err(), "{bad}");
        }
        assert_eq!(upstream_path("@types/node"), "@types%2fnode");
    }
}
