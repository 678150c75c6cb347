//! Percent-decoding (`%HH`, RFC 3986 §2.1), strict: every `%` must be followed by two hex
//! digits. Shared by connection URLs and `OTEL_RESOURCE_ATTRIBUTES`.

/// The bytes `s` encodes, or `None` at a `%` not followed by two hex digits.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn two_hex_digits_after_every_percent() {
        assert_eq!(decode("a%20b%2F"), Some(b"a b/".to_vec()));
        assert_eq!(decode("%e2%82%ac"), Some("€".as_bytes().to_vec()));
        for bad in ["%", "%2", "%zz", "%+f", "%-1", "a%2"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
