//! What PostgreSQL's `jsonb` refuses in text that is valid JSON, found before anything
//! is sent: `\u0000`, unpaired UTF-16 surrogate escapes, and numbers outside `numeric`'s
//! range. Catching them here makes them bad input (exit 2, with the batch line number)
//! instead of a server error halfway through a transaction.

/// Largest exponent PostgreSQL's `numeric` input accepts (`NUMERIC_MAX_PRECISION`).
const MAX_EXPONENT: u64 = 1000;

/// Most digits before the decimal point that `numeric` holds.
const MAX_INTEGER_DIGITS: usize = 131_072;

/// Checks syntactically valid JSON text for what `jsonb` refuses. One pass over the
/// bytes, cheap enough for every row of a batch. The error says what was found, e.g.
/// `contains \u0000, which PostgreSQL jsonb cannot store`.
pub fn check(json: &str) -> Result<(), String> {
    let b = json.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => i = check_string(b, i + 1)?,
            b'-' | b'0'..=b'9' => i = check_number(json, i)?,
            _ => i += 1,
        }
    }
    Ok(())
}

/// Scans a string body starting at `i` (after the opening quote); returns the index
/// after the closing quote.
fn check_string(b: &[u8], mut i: usize) -> Result<usize, String> {
    const SURROGATE: &str =
        "contains an unpaired UTF-16 surrogate escape, which PostgreSQL jsonb refuses";
    while i < b.len() && b[i] != b'"' {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        if b.get(i + 1) != Some(&b'u') {
            i += 2; // \" \\ \n and the like
            continue;
        }
        let unit = hex4(b, i + 2);
        i += 6;
        match unit {
            Some(0) => return Err("contains \\u0000, which PostgreSQL jsonb cannot store".into()),
            Some(0xD800..=0xDBFF) => {
                let low = if b.get(i) == Some(&b'\\') && b.get(i + 1) == Some(&b'u') {
                    hex4(b, i + 2)
                } else {
                    None
                };
                if !matches!(low, Some(0xDC00..=0xDFFF)) {
                    return Err(SURROGATE.into());
                }
                i += 6;
            }
            Some(0xDC00..=0xDFFF) => return Err(SURROGATE.into()),
            _ => {}
        }
    }
    Ok(i + 1)
}

/// Scans a number starting at `start`; returns the index after it.
fn check_number(json: &str, start: usize) -> Result<usize, String> {
    let b = json.as_bytes();
    let mut i = start;
    let mut int_digits = 0usize;
    let mut fraction = false;
    while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'-' || b[i] == b'.') {
        if b[i] == b'.' {
            fraction = true;
        } else if b[i].is_ascii_digit() && !fraction {
            int_digits += 1;
        }
        i += 1;
    }
    let mut exponent = 0u64;
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        while i < b.len() && b[i].is_ascii_digit() {
            exponent = exponent
                .saturating_mul(10)
                .saturating_add(u64::from(b[i] - b'0'));
            i += 1;
        }
    }
    if exponent > MAX_EXPONENT || int_digits > MAX_INTEGER_DIGITS {
        // A number is ASCII, so these byte offsets are character boundaries.
        let shown: String = json[start..i].chars().take(40).collect();
        return Err(format!(
            "has the number {shown}, outside the range of PostgreSQL's numeric"
        ));
    }
    Ok(i)
}

fn hex4(b: &[u8], at: usize) -> Option<u32> {
    let digits = b.get(at..at + 4)?;
    u32::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn ordinary_json_passes() {
        for ok in [
            r#"{"a": [1, -2.5e10, 1E+3, true, false, null], "b": "x\"y\\z\u00e9"}"#,
            r#""\ud83d\ude00""#,
            r#"{"\\u0000": "\\ud800"}"#, // escaped backslashes: no escapes at all
            "1e1000",
            "-0.000001",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn nul_escapes_are_refused() {
        assert!(
            check(r#"{"a": "x\u0000"}"#)
                .unwrap_err()
                .contains("\\u0000")
        );
        assert!(check(r#"{"\u0000": 1}"#).is_err());
    }

    #[test]
    fn unpaired_surrogates_are_refused() {
        assert!(check(r#""\ud800""#).unwrap_err().contains("surrogate"));
        assert!(check(r#""\ud800x""#).is_err());
        assert!(check(r#""\ud800\u0041""#).is_err());
        assert!(check(r#""\udc00""#).is_err());
        assert!(check(r#""\ud800"#).is_err()); // truncated
    }

    #[test]
    fn numbers_outside_numeric_are_refused() {
        assert!(check("1e1001").unwrap_err().contains("1e1001"));
        assert!(check("[1E-5000]").is_err());
        assert!(check(&"9".repeat(131_073)).is_err());
        assert!(check(&"9".repeat(131_072)).is_ok());
    }
}
