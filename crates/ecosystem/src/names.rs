//! Checks for parts of a request path that come from clients.

/// Decode `%2F`/`%2f` to `/` (npm's scoped-name spelling) and refuse any other escape, so no
/// percent-encoded trick reaches a storage key or an upstream URL.
pub fn decode_slashes_only(path: &str) -> Result<std::borrow::Cow<'_, str>, String> {
    if !path.contains('%') {
        return Ok(std::borrow::Cow::Borrowed(path));
    }
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let esc = rest.get(i..i + 3).unwrap_or("");
        if esc.eq_ignore_ascii_case("%2f") {
            out.push('/');
            rest = &rest[i + 3..];
        } else {
            return Err(format!("unexpected percent-escape {esc:?} in the path"));
        }
    }
    out.push_str(rest);
    Ok(std::borrow::Cow::Owned(out))
}

/// Whether `name` is a safe file name: `[A-Za-z0-9._+~-]`, not starting with `.`, at most 255
/// bytes.
pub fn is_safe_file_name(name: &str) -> bool {
    // Bytes and a table: every artifact request checks its file name (decoding characters and
    // comparing took 16 instructions a byte).
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name.bytes().all(|b| SAFE_FILE_NAME_BYTE[usize::from(b)])
}

/// `[A-Za-z0-9._+~-]`: no byte of a multi-byte character is among them.
const SAFE_FILE_NAME_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        table[b] = byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'+' | b'~' | b'-');
        b += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_slash_escapes_pass() {
        assert_eq!(decode_slashes_only("@a%2Fb").unwrap(), "@a/b");
        assert_eq!(decode_slashes_only("@a%2fb").unwrap(), "@a/b");
        assert!(decode_slashes_only("a%2e%2e").is_err());
        assert!(decode_slashes_only("a%").is_err());
        assert!(is_safe_file_name("pkg-1.0.0.tgz"));
        assert!(!is_safe_file_name("../x.tgz"));
        assert!(!is_safe_file_name(".x"));
        assert!(!is_safe_file_name("a/b"));
        assert!(is_safe_file_name("A_z+0~9.whl"));
        for refused in ["", "a b", "a%2f", "é.tgz", "a\0", &"x".repeat(256)] {
            assert!(!is_safe_file_name(refused), "{refused:?}");
        }
    }
}
