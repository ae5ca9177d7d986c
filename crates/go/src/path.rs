//! Module paths and versions as the module reference defines them, in the `!`-escaped form the
//! go command sends (upper case `X` written `!x`).

/// The longest module path accepted, escaped.
const MAX_PATH: usize = 500;
/// The longest version accepted, escaped.
const MAX_VERSION: usize = 200;

/// A module path, checked: its escaped form (as in URLs) and the path itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModulePath {
    /// As the client sent it (`github.com/!azure/go`): what the upstream is asked with.
    pub escaped: String,
    /// The path (`github.com/Azure/go`): what the checksum database records.
    pub path: String,
}

/// A version, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleVersion {
    /// As the client sent it.
    pub escaped: String,
    /// The version itself.
    pub version: String,
    /// Whether it is a canonical semantic version (`v1.2.3`, `v0.0.0-2023…-abcdef`,
    /// `v2.0.0+incompatible`): its files never change. Anything else (`master`, `v1`) is a
    /// query whose `.info` answer may.
    pub canonical: bool,
}

/// `escaped` with `!x` turned back into `X`; `None` when it is not a valid escape (a bare upper
/// case letter, `!` not followed by a lower case letter).
fn unescape(escaped: &str) -> Option<String> {
    let mut out = String::with_capacity(escaped.len());
    let mut bang = false;
    for c in escaped.chars() {
        if bang {
            if !c.is_ascii_lowercase() {
                return None;
            }
            out.push(c.to_ascii_uppercase());
            bang = false;
        } else if c == '!' {
            bang = true;
        } else if c.is_ascii_uppercase() {
            return None;
        } else {
            out.push(c);
        }
    }
    (!bang).then_some(out)
}

fn path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')
}

impl ModulePath {
    /// Check an escaped module path (`golang.org/x/mod`, `github.com/!burnt!sushi/toml`).
    pub fn parse(escaped: &str) -> Result<Self, String> {
        if escaped.is_empty() || escaped.len() > MAX_PATH {
            return Err(format!("a module path is 1 to {MAX_PATH} characters long"));
        }
        let path = unescape(escaped).ok_or_else(|| {
            format!("module path {escaped:?} is not escaped as the module reference says (upper case as !x)")
        })?;
        let mut elements = path.split('/');
        let first = elements.next().unwrap_or_default();
        if !first.contains('.')
            || first.starts_with(['-', '.'])
            || first.ends_with('.')
            || !first
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
        {
            return Err(format!(
                "module path {escaped:?}: its first element must be a lower case host name with a dot"
            ));
        }
        for element in path.split('/') {
            if element.is_empty()
                || element.starts_with('.')
                || element.ends_with('.')
                || !element.chars().all(path_char)
            {
                return Err(format!(
                    "module path {escaped:?}: element {element:?} is not valid (letters, digits, - . _ ~; no leading or trailing dot)"
                ));
            }
        }
        Ok(Self {
            escaped: escaped.to_owned(),
            path,
        })
    }
}

/// Whether `v` is a canonical semantic version as the go command writes them.
fn is_canonical(v: &str) -> bool {
    let Some(rest) = v.strip_prefix('v') else {
        return false;
    };
    let rest = rest.strip_suffix("+incompatible").unwrap_or(rest);
    let (core, pre) = match rest.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (rest, None),
    };
    let numbers: Vec<&str> = core.split('.').collect();
    let number = |n: &str| {
        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && (n == "0" || !n.starts_with('0'))
    };
    if numbers.len() != 3 || !numbers.iter().all(|n| number(n)) {
        return false;
    }
    match pre {
        None => true,
        Some(pre) => pre.split('.').all(|id| {
            !id.is_empty()
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && (!id.bytes().all(|b| b.is_ascii_digit()) || number(id))
        }),
    }
}

impl ModuleVersion {
    /// Check an escaped version (or version query).
    pub fn parse(escaped: &str) -> Result<Self, String> {
        if escaped.is_empty() || escaped.len() > MAX_VERSION {
            return Err(format!("a version is 1 to {MAX_VERSION} characters long"));
        }
        let version = unescape(escaped).ok_or_else(|| {
            format!("version {escaped:?} is not escaped as the module reference says")
        })?;
        if version.starts_with('.')
            || !version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '+'))
        {
            return Err(format!("version {escaped:?} is not valid"));
        }
        Ok(Self {
            escaped: escaped.to_owned(),
            canonical: is_canonical(&version),
            version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_paths_follow_the_reference() {
        let p = ModulePath::parse("github.com/!burnt!sushi/toml").unwrap();
        assert_eq!(p.path, "github.com/BurntSushi/toml");
        assert!(ModulePath::parse("golang.org/x/mod").is_ok());
        assert!(ModulePath::parse("golang.org").is_ok());
        for bad in [
            "",
            "github.com/BurntSushi/toml",
            "github.com/!",
            "github.com/!1",
            "github.com/../x",
            "github.com//x",
            "github.com/x/",
            "/github.com/x",
            "localhost/x",
            "github.com/.x",
            "github.com/x y",
            "github.com/x%2fy",
            "-x.com/y",
        ] {
            assert!(ModulePath::parse(bad).is_err(), "{bad:?}");
        }
        assert!(ModulePath::parse(&format!("a.b/{}", "x".repeat(600))).is_err());
    }

    #[test]
    fn canonical_versions_are_told_from_queries() {
        for v in [
            "v1.2.3",
            "v0.0.0-20230101000000-abcdefabcdef",
            "v2.0.0+incompatible",
            "v1.0.0-rc.1",
        ] {
            assert!(ModuleVersion::parse(v).unwrap().canonical, "{v}");
        }
        for v in ["master", "v1", "v1.2", "v01.2.3", "v1.2.3-01", "latest"] {
            assert!(!ModuleVersion::parse(v).unwrap().canonical, "{v}");
        }
        assert_eq!(
            ModuleVersion::parse("v1.0.0-!r!c1").unwrap().version,
            "v1.0.0-RC1"
        );
        for bad in ["", "v1.0.0/x", "..", "v1.0.0-R", "v1 0", ".v1"] {
            assert!(ModuleVersion::parse(bad).is_err(), "{bad:?}");
        }
    }
}
