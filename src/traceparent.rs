//! W3C Trace Context for pgc: a strict parser and formatter of the project's own for
//! `traceparent` and `tracestate` values, random trace/span id generation, and the rules
//! that turn an incoming context (from command-line flags or the `TRACEPARENT` /
//! `TRACESTATE` environment variables) into the context of a new producer span.
//!
//! The opentelemetry crate's `TraceContextPropagator` is deliberately not used: it accepts
//! malformed input. This module follows the W3C Trace Context specification:
//!
//! * Level 1 (W3C Recommendation, <https://www.w3.org/TR/trace-context-1/>) for the
//!   `traceparent` format, its versioning rules and the `tracestate` list/value grammar;
//! * Level 2 (Candidate Recommendation Draft, <https://www.w3.org/TR/trace-context-2/>) for
//!   the `random-trace-id` flag and the unified `tracestate` key grammar;
//! * the Level 3 editor's draft (<https://w3c.github.io/trace-context/>), which keeps the
//!   Level 2 text for everything used here. The W3C conformance suite was aligned with the
//!   unified key grammar in June 2026 (w3c/trace-context#583, #584); that is "the 2026 key
//!   grammar" implemented by [`TraceState::parse`].
//!
//! Section references below name the spec section and its anchor (for example
//! "§3.3.1.3.1 Key, `#key`"); the anchors are the same in all three levels.
//!
//! Judgement calls, each documented where it is implemented:
//! * surrounding spaces and tabs (HTTP `OWS`) are trimmed from a `traceparent`, nothing else;
//! * a `tracestate` with more than 32 non-empty list members, a duplicate key, or any invalid
//!   member is rejected as a whole (the caller then drops it and keeps the `traceparent`);
//! * no overall `tracestate` length limit is enforced: the spec's 512-character figure is a
//!   minimum that vendors SHOULD propagate, and truncation is only needed when a vendor
//!   imposes its own smaller limit, which pgc does not.

use std::fmt;
use std::str::FromStr;

/// Defines an id type over an unsigned integer: big-endian bytes, hex parsing, and
/// zero-padded lower-case hex display.
macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $int:ty, $bytes:literal, $digits:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name($int);

        impl $name {
            /// The all-zeros id, which W3C Trace Context forbids.
            pub const INVALID: $name = $name(0);

            /// From its bytes, big-endian (the order of its hex digits).
            pub const fn from_bytes(bytes: [u8; $bytes]) -> $name {
                $name(<$int>::from_be_bytes(bytes))
            }

            /// Its bytes, big-endian.
            pub const fn to_bytes(self) -> [u8; $bytes] {
                self.0.to_be_bytes()
            }

            /// From 1 to two-per-byte hex digits, any case; no sign, no spaces.
            pub fn from_hex(hex: &str) -> Option<$name> {
                if hex.is_empty() || hex.len() > $digits {
                    return None;
                }
                decode_digits(hex.as_bytes(), &HEX_ANY_CASE).map(|v| $name(v as $int))
            }
        }

        impl From<$int> for $name {
            fn from(v: $int) -> $name {
                $name(v)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:0width$x}", self.0, width = $digits)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }
    };
}

hex_id!(
    /// A 16-byte trace id. Displayed as 32 lower-case hex digits.
    TraceId, u128, 16, 32
);
hex_id!(
    /// An 8-byte span id. Displayed as 16 lower-case hex digits.
    SpanId, u64, 8, 16
);

/// The 8 `trace-flags` bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TraceFlags(u8);

impl TraceFlags {
    /// No flag set.
    pub const NOT_SAMPLED: TraceFlags = TraceFlags(0);
    /// The `sampled` flag alone.
    pub const SAMPLED: TraceFlags = TraceFlags(FLAG_SAMPLED);

    /// From the flag bits.
    pub const fn new(bits: u8) -> TraceFlags {
        TraceFlags(bits)
    }

    /// The flag bits.
    pub const fn to_u8(self) -> u8 {
        self.0
    }

    /// Only the flags the specification defines (`sampled`, `random-trace-id`), the
    /// others cleared, as a participant passes them on ("Other Flags": vendors MUST set
    /// those to zero).
    pub const fn defined(self) -> TraceFlags {
        TraceFlags(self.0 & KNOWN_FLAGS)
    }
}

impl fmt::Debug for TraceFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceFlags({:02x})", self.0)
    }
}

/// Length in characters of a version-00 `traceparent` value (and of the part of a
/// higher-version value that this version understands).
pub const TRACEPARENT_LEN: usize = 55;

/// The `sampled` bit of `trace-flags` (Level 1 §3.2.2.5.1 Sampled flag, `#sampled-flag`).
pub const FLAG_SAMPLED: u8 = 0x01;

/// The `random-trace-id` bit of `trace-flags` (Level 2, Random Trace ID Flag,
/// `#random-trace-id-flag`).
pub const FLAG_RANDOM: u8 = 0x02;

/// Flag bits defined by the levels implemented here. Other Flags (Level 1 §3.2.2.5.2,
/// Level 2 §3.2.2.5.3, `#other-flags`):
/// "Vendors MUST set those to zero", so a new traceparent only carries these bits.
const KNOWN_FLAGS: u8 = FLAG_SAMPLED | FLAG_RANDOM;

/// Maximum number of list members in a `tracestate` (§3.3.1.2 list, `#list`).
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

/// `key = ( lcalpha / DIGIT ) 0*255 ( keychar )`: at most 256 characters.
const MAX_KEY_LEN: usize = 256;

/// `value = 0*255(chr) nblk-chr`: 1 to 256 characters.
const MAX_VALUE_LEN: usize = 256;

/// How many characters of an offending key an error message shows.
const MAX_KEY_IN_ERROR: usize = 64;

// Byte offsets inside a traceparent:
// "vv-tttttttttttttttttttttttttttttttt-pppppppppppppppp-ff"
//  0  3                               35               52 55
const TRACE_ID_START: usize = 3;
const TRACE_ID_END: usize = 35;
const PARENT_ID_START: usize = 36;
const PARENT_ID_END: usize = 52;
const FLAGS_START: usize = 53;

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// A field of a `traceparent` value, used in error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TraceparentField {
    /// The 32-hex-digit `trace-id`.
    TraceId,
    /// The 16-hex-digit `parent-id`.
    ParentId,
    /// The 2-hex-digit `trace-flags`.
    TraceFlags,
}

impl TraceparentField {
    /// Number of lower-case hex digits the field has.
    pub fn hex_digits(self) -> usize {
        match self {
            TraceparentField::TraceId => 32,
            TraceparentField::ParentId => 16,
            TraceparentField::TraceFlags => 2,
        }
    }
}

impl fmt::Display for TraceparentField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TraceparentField::TraceId => "trace id",
            TraceparentField::ParentId => "parent id",
            TraceparentField::TraceFlags => "trace flags",
        })
    }
}

/// Why a traceparent or tracestate was rejected; messages are one line, lower-case, say what
/// part is wrong (e.g. "traceparent: trace id is all zeros", "tracestate: member 3: invalid
/// key \"Foo\"").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TraceContextError {
    /// The traceparent is empty (or only spaces and tabs).
    #[error("traceparent: empty value")]
    TraceparentEmpty,
    /// The value does not start with two lower-case hex digits followed by `-`.
    #[error("traceparent: version must be two lower-case hex digits followed by \"-\"")]
    TraceparentVersion,
    /// Version `ff` is forbidden.
    #[error("traceparent: version ff is invalid")]
    TraceparentVersionFf,
    /// A character of the part of the value that must be parsed is not ASCII.
    #[error("traceparent: contains non-ASCII characters")]
    TraceparentNonAscii,
    /// A version-00 value that is not exactly 55 characters long.
    #[error("traceparent: version 00 must be exactly 55 characters long, got {len}")]
    TraceparentLength {
        /// Length in characters, after trimming surrounding spaces and tabs.
        len: usize,
    },
    /// A higher-version value shorter than 55 characters.
    #[error("traceparent: version {version:02x} must be at least 55 characters long, got {len}")]
    TraceparentTooShort {
        /// The version found.
        version: u8,
        /// Length in characters, after trimming surrounding spaces and tabs.
        len: usize,
    },
    /// A field is not made of the right number of lower-case hex digits.
    #[error("traceparent: {field} must be {} lower-case hex digits", .field.hex_digits())]
    TraceparentHex {
        /// The field at fault.
        field: TraceparentField,
    },
    /// The `-` expected after a field is missing.
    #[error("traceparent: expected \"-\" after the {field}")]
    TraceparentSeparator {
        /// The field that should have been followed by `-`.
        field: TraceparentField,
    },
    /// A higher-version value whose flags are followed by something other than `-`.
    #[error(
        "traceparent: trace flags must end the value or be followed by \"-\" (version {version:02x})"
    )]
    TraceparentTrailing {
        /// The version found.
        version: u8,
    },
    /// The trace id is all zeros.
    #[error("traceparent: trace id is all zeros")]
    TraceIdZero,
    /// The parent id is all zeros.
    #[error("traceparent: parent id is all zeros")]
    ParentIdZero,
    /// More than 32 non-empty list members.
    #[error("tracestate: more than 32 list members")]
    TracestateTooManyMembers,
    /// A non-empty list member without `=`.
    #[error("tracestate: member {member}: missing \"=\" between key and value")]
    TracestateMissingEquals {
        /// 1-based position of the member in the comma-separated list (empty members count).
        member: usize,
    },
    /// A key that does not match the key grammar.
    #[error("tracestate: member {member}: invalid key {key:?}")]
    TracestateKey {
        /// 1-based position of the member in the comma-separated list (empty members count).
        member: usize,
        /// The key (its first 64 characters).
        key: String,
    },
    /// A key longer than 256 characters.
    #[error("tracestate: member {member}: key is {len} characters long, at most 256 allowed")]
    TracestateKeyTooLong {
        /// 1-based position of the member in the comma-separated list (empty members count).
        member: usize,
        /// Length of the key.
        len: usize,
    },
    /// A key with an empty value (`key=`).
    #[error("tracestate: member {member}: empty value for key {key:?}")]
    TracestateEmptyValue {
        /// 1-based position of the member in the comma-separated list (empty members count).
        member: usize,
        /// The key.
        key: String,
    },
    /// A value longer than 256 characters.
    #[error(
        "tracestate: member {member}: value for key {key:?} is {len} characters long, at most 256 allowed"
    )]
    TracestateValueTooLong {
        /// 1-based position of the member in the comma-separated list (empty members count).
        member: usize,
        /// The key.
        key: String,
        /// Length of the value.
        len: usize,
    },
    /// A value with a character outside printable ASCII, or with `=`.
    #[error(
        "tracestate: member {member}: value for key {key:?} contains invalid character {found:?}"
    )]
    TracestateValueChar {
        /// 1-based position of the member in the comma-separated list (empty members count).
        member: usize,
        /// The key.
        key: String,
        /// The first offending character.
        found: char,
    },
    /// The same key appears twice.
    #[error("tracestate: member {member}: duplicate key {key:?}")]
    TracestateDuplicateKey {
        /// 1-based position of the second occurrence (empty members count).
        member: usize,
        /// The key.
        key: String,
    },
}

/// A parsed traceparent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The version as received (00 for values built with [`TraceParent::new`]).
    pub version: u8,
    /// The trace id; never all zeros once parsed.
    pub trace_id: TraceId,
    /// The parent (span) id; never all zeros once parsed.
    pub parent_id: SpanId,
    /// All 8 flag bits as received; see [`TraceParent::sampled`] and [`TraceParent::random`].
    pub flags: TraceFlags,
}

impl TraceParent {
    /// Parses a `traceparent` value strictly.
    ///
    /// Rules (Level 1 §3.2.2 traceparent Header Field Values, `#traceparent-header-field-values`,
    /// and §3.2.4 Versioning of traceparent, `#versioning-of-traceparent`):
    /// * `version = 2HEXDIGLC` followed by `-`; `ff` is invalid;
    /// * version 00: `trace-id "-" parent-id "-" trace-flags` and nothing else (55 characters);
    /// * higher versions: at least 55 characters, the first 55 parsed as for version 00, and
    ///   the flags either end the value or are followed by `-`; the rest is not analysed;
    /// * hex is lower-case only (`HEXDIGLC`); trace id and parent id must not be all zeros.
    ///
    /// Surrounding whitespace: spaces and horizontal tabs around the value are ignored. That is
    /// HTTP's `OWS` (RFC 9110 §5.6.3), which an HTTP stack strips from field values and which
    /// the W3C test suite (`test_traceparent_ows_handling`) requires to be accepted; values read
    /// from environment variables or flags get the same treatment so that both carriers behave
    /// alike. Any other whitespace (CR, LF, ...) and any whitespace inside the value is invalid.
    pub fn parse(s: &str) -> Result<TraceParent, TraceContextError> {
        let trimmed = trim_ows(s);
        let b = trimmed.as_bytes();
        if b.is_empty() {
            return Err(TraceContextError::TraceparentEmpty);
        }

        // §3.2.4: "When the version prefix cannot be parsed (it's not 2 hex characters
        // followed by a dash (-)), the implementation should restart the trace."
        if b.len() < 3 || b[2] != b'-' {
            return Err(TraceContextError::TraceparentVersion);
        }
        let version = match (hex_value(b[0]), hex_value(b[1])) {
            (Some(hi), Some(lo)) => (hi << 4) | lo,
            _ => return Err(TraceContextError::TraceparentVersion),
        };
        // §3.2.2.1 version, `#version`: "Version ff is invalid."
        if version == 0xff {
            return Err(TraceContextError::TraceparentVersionFf);
        }

        // The value is US-ASCII (§3.2.2.1). Checking the part we parse up front keeps the
        // length errors below honest about characters, and all indexing below is on bytes.
        if !b[..b.len().min(TRACEPARENT_LEN)].is_ascii() {
            return Err(TraceContextError::TraceparentNonAscii);
        }
        if version == 0 {
            // §3.2.2.2 version-format: for version 00 the value is exactly
            // `version "-" trace-id "-" parent-id "-" trace-flags`.
            if b.len() != TRACEPARENT_LEN {
                if !b.is_ascii() {
                    return Err(TraceContextError::TraceparentNonAscii);
                }
                return Err(TraceContextError::TraceparentLength { len: b.len() });
            }
        } else if b.len() < TRACEPARENT_LEN {
            // §3.2.4: "If the size of the header is shorter than 55 characters, the vendor
            // should not parse the header and should restart the trace."
            return Err(TraceContextError::TraceparentTooShort {
                version,
                len: b.len(),
            });
        }

        // §3.2.2.3 trace-id: `32HEXDIGLC`, followed by "-".
        let trace_id = decode_hex(&b[TRACE_ID_START..TRACE_ID_END]).ok_or(
            TraceContextError::TraceparentHex {
                field: TraceparentField::TraceId,
            },
        )?;
        if b[TRACE_ID_END] != b'-' {
            return Err(TraceContextError::TraceparentSeparator {
                field: TraceparentField::TraceId,
            });
        }
        // §3.2.2.4 parent-id: `16HEXDIGLC`, followed by "-".
        let parent_id = decode_hex(&b[PARENT_ID_START..PARENT_ID_END]).ok_or(
            TraceContextError::TraceparentHex {
                field: TraceparentField::ParentId,
            },
        )?;
        if b[PARENT_ID_END] != b'-' {
            return Err(TraceContextError::TraceparentSeparator {
                field: TraceparentField::ParentId,
            });
        }
        // §3.2.2.5 trace-flags: `2HEXDIGLC`.
        let flags = decode_hex(&b[FLAGS_START..TRACEPARENT_LEN]).ok_or(
            TraceContextError::TraceparentHex {
                field: TraceparentField::TraceFlags,
            },
        )?;
        // §3.2.4, higher versions: "Vendors MUST check that the 2 characters are either at
        // the end of the string or followed by a dash." Unknown fields after it are not
        // parsed ("Vendors MUST NOT parse or assume anything about unknown fields").
        if b.len() > TRACEPARENT_LEN && b[TRACEPARENT_LEN] != b'-' {
            return Err(TraceContextError::TraceparentTrailing { version });
        }

        // §3.2.2.3 / §3.2.2.4: all zeros is an invalid trace id / parent id.
        if trace_id == 0 {
            return Err(TraceContextError::TraceIdZero);
        }
        if parent_id == 0 {
            return Err(TraceContextError::ParentIdZero);
        }

        // Both conversions are lossless: the slices had exactly 16 and 2 hex digits.
        Ok(TraceParent {
            version,
            trace_id: TraceId::from(trace_id),
            parent_id: SpanId::from(parent_id as u64),
            flags: TraceFlags::new(flags as u8),
        })
    }

    /// New version-00 traceparent with the given ids/flags.
    pub fn new(trace_id: TraceId, parent_id: SpanId, flags: TraceFlags) -> Self {
        TraceParent {
            version: 0,
            trace_id,
            parent_id,
            flags,
        }
    }

    /// Whether the `sampled` flag (bit 0) is set (§3.2.2.5.1 Sampled flag, `#sampled-flag`).
    pub fn sampled(&self) -> bool {
        self.flags.to_u8() & FLAG_SAMPLED != 0
    }

    /// Whether the Level 2 `random-trace-id` flag (bit 1) is set (`#random-trace-id-flag`).
    pub fn random(&self) -> bool {
        self.flags.to_u8() & FLAG_RANDOM != 0
    }

    /// Appends the version-00 form (same text as `Display`) to `buf` without any other
    /// allocation than growing `buf`.
    pub fn write_hex(&self, buf: &mut String) {
        let bytes = self.encode();
        buf.reserve(bytes.len());
        buf.extend(bytes.iter().copied().map(char::from));
    }

    /// The version-00 form as ASCII bytes: "00-<32 hex>-<16 hex>-<2 hex>".
    ///
    /// Always version 00, whatever version was parsed: §3.2.4 "Vendors MUST use these fields
    /// to construct the new traceparent field according to the highest version of the
    /// specification known to the implementation".
    fn encode(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = [b'-'; TRACEPARENT_LEN];
        out[0] = b'0';
        out[1] = b'0';
        // A byte at a time, two digits each (this runs for every attempt a worker starts).
        let hex = |bytes: &[u8], slots: &mut [u8]| {
            for (b, pair) in bytes.iter().zip(slots.chunks_exact_mut(2)) {
                pair[0] = HEX_DIGITS[usize::from(b >> 4)];
                pair[1] = HEX_DIGITS[usize::from(b & 0xf)];
            }
        };
        hex(
            &self.trace_id.to_bytes(),
            &mut out[TRACE_ID_START..TRACE_ID_END],
        );
        hex(
            &self.parent_id.to_bytes(),
            &mut out[PARENT_ID_START..PARENT_ID_END],
        );
        let flags = self.flags.to_u8();
        out[FLAGS_START] = HEX_DIGITS[usize::from(flags >> 4)];
        out[FLAGS_START + 1] = HEX_DIGITS[usize::from(flags & 0xf)];
        out
    }
}

impl fmt::Display for TraceParent {
    /// Always formats as version "00": "00-<32 hex>-<16 hex>-<2 hex>".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.encode();
        f.write_str(std::str::from_utf8(&bytes).map_err(|_| fmt::Error)?)
    }
}

impl FromStr for TraceParent {
    type Err = TraceContextError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TraceParent::parse(s)
    }
}

/// A parsed tracestate: ordered list of (key, value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceState {
    members: Vec<(String, String)>,
}

impl TraceState {
    /// Parses a `tracestate` value strictly; any invalid member rejects the whole value.
    ///
    /// Grammar (§3.3.1.1 tracestate Header Field Values, `#tracestate-header-field-values`):
    /// ```text
    /// list        = list-member 0*31( OWS "," OWS list-member )   ; §3.3.1.2 list, #list
    /// list-member = key "=" value
    /// list-member = OWS
    /// ; §3.3.1.3.1 Key, #key: Level 2 / Level 3 editor's draft (the 2026 conformance-suite
    /// ; grammar). Level 1 had simple-key / multi-tenant-key ("tenant@system", tenant at most
    /// ; 241 and system at most 14 characters); Level 2 made "@" an ordinary keychar.
    /// key         = ( lcalpha / DIGIT ) 0*255 ( keychar )
    /// keychar     = lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@"
    /// lcalpha     = %x61-7A ; a-z
    /// ; §3.3.1.3.2 Value, #value (unchanged since Level 1)
    /// value       = 0*255(chr) nblk-chr
    /// nblk-chr    = %x21-2B / %x2D-3C / %x3E-7E
    /// chr         = %x20 / nblk-chr
    /// ```
    /// Decisions:
    /// * spaces and tabs around members are ignored, and empty or whitespace-only members are
    ///   allowed and skipped ("Empty and whitespace-only list members are allowed"); trailing
    ///   spaces of a value are therefore OWS, as the spec says ("all trailing spaces are
    ///   considered to be optional whitespace characters not part of the value"), while leading
    ///   spaces of a value are kept;
    /// * empty values are invalid: the value grammar requires one `nblk-chr`;
    /// * more than 32 non-empty members is invalid ("There can be a maximum of 32
    ///   list-members"); empty members do not count, since the spec allows them only as
    ///   artefacts of combining several header fields. The W3C test suite
    ///   (`test_tracestate_member_count_limit`) expects a 33-member value to be discarded;
    /// * a duplicate key is invalid (§3.3.1.4 Combined Header Value: "Only one entry per key is
    ///   allowed"; `test_tracestate_duplicated_keys` expects the value to be discarded);
    /// * no limit on the total length (§3.3.1.5 tracestate Limits only asks vendors to
    ///   propagate at least 512 characters and to truncate whole entries when they impose a
    ///   smaller limit; pgc imposes none, so it never truncates).
    pub fn parse(s: &str) -> Result<TraceState, TraceContextError> {
        let mut members: Vec<(String, String)> = Vec::new();
        for (index, raw) in s.split(',').enumerate() {
            let member = index + 1;
            let item = trim_ows(raw);
            if item.is_empty() {
                continue;
            }
            if members.len() == MAX_TRACESTATE_MEMBERS {
                return Err(TraceContextError::TracestateTooManyMembers);
            }
            let Some((key, value)) = item.split_once('=') else {
                return Err(TraceContextError::TracestateMissingEquals { member });
            };
            check_key(member, key)?;
            check_value(member, key, value)?;
            if members.iter().any(|(k, _)| k == key) {
                return Err(TraceContextError::TracestateDuplicateKey {
                    member,
                    key: shown_key(key),
                });
            }
            members.push((key.to_owned(), value.to_owned()));
        }
        Ok(TraceState { members })
    }

    /// Whether there are no list members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Number of list members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// The value for `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The list members in order, left-most first.
    pub fn members(&self) -> impl Iterator<Item = (&str, &str)> {
        self.members.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Header form "k=v,k2=v2" (no whitespace), "" when empty.
    pub fn header(&self) -> String {
        let len = self
            .members
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>();
        let mut out = String::with_capacity(len);
        for (i, (k, v)) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push('=');
            out.push_str(v);
        }
        out
    }
}

impl fmt::Display for TraceState {
    /// Same as [`TraceState::header`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.members.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(k)?;
            f.write_str("=")?;
            f.write_str(v)?;
        }
        Ok(())
    }
}

impl FromStr for TraceState {
    type Err = TraceContextError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TraceState::parse(s)
    }
}

/// A new trace id: the first 6 bytes are the Unix time in milliseconds, the other 10
/// are random (the thread's cryptographically seeded generator); never all zeros.
///
/// Time-ordered ids keep the trace indexes on `_private_executions` append-mostly, which
/// is what makes bulk enqueue fast (random keys cost every insert a random index page).
/// W3C Trace Context Level 2 (§3.2.2.3, "random-trace-id flag") only asks that the
/// right-most 7 bytes be random when the random flag is set; 10 are here, and the flag is
/// not set. AWS X-Ray ids carry a time prefix the same way.
pub fn new_trace_id() -> TraceId {
    let random: [u8; 16] = rand::random();
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[10..16]);
    bytes[6..].copy_from_slice(&random[6..]);
    if bytes[6..].iter().all(|b| *b == 0) {
        bytes[15] = 1; // keeps the id non-zero even with a zero clock
    }
    TraceId::from_bytes(bytes)
}

/// Random, non-zero span id (see [`new_trace_id`]).
pub fn new_span_id() -> SpanId {
    loop {
        let id = SpanId(rand::random());
        if id != SpanId::INVALID {
            return id;
        }
    }
}

/// The result of reading an incoming context (from flags or TRACEPARENT/TRACESTATE env vars).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Nothing was given: start a new trace.
    Absent,
    /// A valid parent; tracestate is empty when none was given or when it was invalid.
    Valid {
        /// The parsed traceparent.
        parent: TraceParent,
        /// The parsed tracestate, empty when absent or invalid.
        state: TraceState,
        /// Why the given tracestate was dropped, if it was.
        state_error: Option<TraceContextError>,
    },
    /// The traceparent was invalid: the W3C rule is to restart the trace (and drop tracestate).
    Invalid(TraceContextError),
}

impl Incoming {
    /// traceparent None or empty/whitespace-only → Absent; tracestate without a valid
    /// traceparent is ignored.
    ///
    /// "Whitespace-only" here means ASCII whitespace of any kind (an environment variable set
    /// to a newline was not meant as a traceparent). §3.3 Tracestate Header: "If the vendor
    /// failed to parse traceparent, it MUST NOT attempt to parse tracestate", and "failure to
    /// parse tracestate MUST NOT affect the parsing of traceparent".
    pub fn read(traceparent: Option<&str>, tracestate: Option<&str>) -> Incoming {
        let Some(tp) = traceparent else {
            return Incoming::Absent;
        };
        if tp.bytes().all(|b| b.is_ascii_whitespace()) {
            return Incoming::Absent;
        }
        match TraceParent::parse(tp) {
            Err(e) => Incoming::Invalid(e),
            Ok(parent) => {
                let (state, state_error) = match tracestate.map(TraceState::parse) {
                    None => (TraceState::default(), None),
                    Some(Ok(state)) => (state, None),
                    Some(Err(e)) => (TraceState::default(), Some(e)),
                };
                Incoming::Valid {
                    parent,
                    state,
                    state_error,
                }
            }
        }
    }

    /// The context of a new producer span under this incoming context.
    ///
    /// Valid parent: same trace id, the parent's flags restricted to the defined bits
    /// (`sampled`, `random-trace-id`; Other Flags: "Vendors MUST set those to zero"), the
    /// tracestate carried unchanged, and a new span id different from the parent's
    /// (§3.4 Mutating the traceparent Field, "Update parent-id"). Otherwise a new trace
    /// (§4.2 No traceparent Received; an invalid one restarts the trace, §4.3): fresh trace
    /// id, flags 01, empty tracestate. Always version 00.
    pub fn child(&self) -> ProducerContext {
        match self {
            Incoming::Valid { parent, state, .. } => {
                let mut span_id = new_span_id();
                while span_id == parent.parent_id {
                    span_id = new_span_id();
                }
                let flags = parent.flags.defined();
                ProducerContext {
                    traceparent: TraceParent::new(parent.trace_id, span_id, flags),
                    tracestate: state.clone(),
                    parent_span_id: Some(parent.parent_id),
                }
            }
            Incoming::Absent | Incoming::Invalid(_) => ProducerContext {
                traceparent: TraceParent::new(new_trace_id(), new_span_id(), TraceFlags::SAMPLED),
                tracestate: TraceState::default(),
                parent_span_id: None,
            },
        }
    }
}

/// The context a new producer span gets: same trace id and flags as the parent when Valid
/// (tracestate carried), a fresh trace id with sampled flag 01 otherwise; always a new span id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerContext {
    /// `00-<trace>-<new span id>-<flags>`.
    pub traceparent: TraceParent,
    /// Possibly empty.
    pub tracestate: TraceState,
    /// The given parent's span id, None for a new trace.
    pub parent_span_id: Option<SpanId>,
}

/// Trims HTTP optional whitespace (`OWS = *( SP / HTAB )`, RFC 9110 §5.6.3) from both ends.
fn trim_ows(s: &str) -> &str {
    s.trim_matches(|c| c == ' ' || c == '\t')
}

/// Value of a lower-case hex digit (`HEXDIGLC`); upper-case is not accepted.
fn hex_value(b: u8) -> Option<u8> {
    let v = HEX_LOWER_CASE[usize::from(b)];
    (v != NOT_HEX).then_some(v)
}

/// Decodes up to 32 lower-case hex digits.
fn decode_hex(digits: &[u8]) -> Option<u128> {
    decode_digits(digits, &HEX_LOWER_CASE)
}

/// A byte's value as a hex digit in the tables below, when it is none.
const NOT_HEX: u8 = 0xff;

/// The value of each byte as a hex digit: `0-9a-f` only (W3C's `HEXDIGLC`).
static HEX_LOWER_CASE: [u8; 256] = hex_table(false);
/// The value of each byte as a hex digit, either case.
static HEX_ANY_CASE: [u8; 256] = hex_table(true);

const fn hex_table(upper_too: bool) -> [u8; 256] {
    let mut t = [NOT_HEX; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        if upper_too {
            t[b'A' as usize + i] = 10 + i as u8;
        }
        i += 1;
    }
    t
}

/// Decodes up to 32 hex digits by `table`, without a branch per digit (this runs for
/// every attempt a worker starts); `None` when any byte is not a digit.
fn decode_digits(digits: &[u8], table: &[u8; 256]) -> Option<u128> {
    let half = |part: &[u8]| -> (u64, u8) {
        part.iter().fold((0u64, 0u8), |(acc, bad), &b| {
            let v = table[usize::from(b)];
            ((acc << 4) | u64::from(v & 0xf), bad | v)
        })
    };
    if digits.len() > 32 {
        return None;
    }
    let split = digits.len().saturating_sub(16);
    let (high, bad_high) = half(&digits[..split]);
    let (low, bad_low) = half(&digits[split..]);
    // Digits are 0-15; NOT_HEX has the high bit set.
    ((bad_high | bad_low) & 0x80 == 0).then_some((u128::from(high) << 64) | u128::from(low))
}

/// `lcalpha / DIGIT`: the first character of a key.
fn is_key_start(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `keychar = lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@"` (Level 2 §3.3.1.3.1).
fn is_key_char(b: u8) -> bool {
    is_key_start(b) || matches!(b, b'_' | b'-' | b'*' | b'/' | b'@')
}

/// `chr = %x20 / nblk-chr`, `nblk-chr = %x21-2B / %x2D-3C / %x3E-7E`: printable ASCII
/// except `,` and `=`.
fn is_value_char(c: char) -> bool {
    matches!(c, ' '..='~') && c != ',' && c != '='
}

fn check_key(member: usize, key: &str) -> Result<(), TraceContextError> {
    let bytes = key.as_bytes();
    let well_formed = match bytes.split_first() {
        Some((&first, rest)) => is_key_start(first) && rest.iter().all(|&b| is_key_char(b)),
        None => false,
    };
    if !well_formed {
        return Err(TraceContextError::TracestateKey {
            member,
            key: shown_key(key),
        });
    }
    // All ASCII now, so bytes are characters.
    if bytes.len() > MAX_KEY_LEN {
        return Err(TraceContextError::TracestateKeyTooLong {
            member,
            len: bytes.len(),
        });
    }
    Ok(())
}

fn check_value(member: usize, key: &str, value: &str) -> Result<(), TraceContextError> {
    if value.is_empty() {
        return Err(TraceContextError::TracestateEmptyValue {
            member,
            key: key.to_owned(),
        });
    }
    if let Some(found) = value.chars().find(|&c| !is_value_char(c)) {
        return Err(TraceContextError::TracestateValueChar {
            member,
            key: key.to_owned(),
            found,
        });
    }
    // All ASCII now, so bytes are characters. The last character is not a space: the
    // member was trimmed of trailing OWS before the split at "=".
    if value.len() > MAX_VALUE_LEN {
        return Err(TraceContextError::TracestateValueTooLong {
            member,
            key: key.to_owned(),
            len: value.len(),
        });
    }
    Ok(())
}

/// The key as shown in an error message: at most 64 characters, cut on a char boundary.
fn shown_key(key: &str) -> String {
    match key.char_indices().nth(MAX_KEY_IN_ERROR) {
        Some((end, _)) => format!("{}...", &key[..end]),
        None => key.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_TP_1: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const SPEC_TP_2: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    // The W3C test suite's ids.
    const SUITE_TRACE: &str = "12345678901234567890123456789012";
    const SUITE_PARENT: &str = "1234567890123456";

    #[test]
    fn id_types_parse_hex_strictly_and_print_padded_lower_case() {
        assert_eq!(
            SpanId::from_hex("00f067aa0ba902b7"),
            Some(SpanId::from(0x00f0_67aa_0ba9_02b7))
        );
        assert_eq!(SpanId::from_hex("AB"), Some(SpanId::from(0xab)));
        for bad in ["", "+ab", "-1", " ab", "0x12", "00f067aa0ba902b7a", "zz"] {
            assert_eq!(SpanId::from_hex(bad), None, "{bad:?}");
        }
        assert_eq!(TraceId::from_hex(&"f".repeat(33)), None);
        assert_eq!(SpanId::from(1).to_string(), "0000000000000001");
        assert_eq!(
            TraceId::from(0xabu128).to_string(),
            format!("{}ab", "0".repeat(30))
        );
        assert_eq!(format!("{:?}", SpanId::from(2)), "SpanId(0000000000000002)");
        let t = TraceId::from_bytes([1; 16]);
        assert_eq!(TraceId::from_bytes(t.to_bytes()), t);
        // Every length, every byte: the table decoding agrees with the standard library.
        let digits = "0123456789abcdefFEDCBA9876543210";
        for len in 1..=32 {
            let hex = &digits[..len];
            assert_eq!(
                TraceId::from_hex(hex),
                u128::from_str_radix(hex, 16).ok().map(TraceId::from),
                "{hex}"
            );
        }
        for b in 0..=255u8 {
            let one = [b'a', b, b'0'];
            let text = String::from_utf8_lossy(&one).into_owned();
            let want = b.is_ascii_hexdigit();
            assert_eq!(SpanId::from_hex(&text).is_some(), want, "{b:#x}");
            assert_eq!(
                decode_hex(&one).is_some(),
                b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
                "{b:#x}"
            );
        }
    }

    fn tp(version: &str, trace: &str, parent: &str, flags: &str) -> String {
        format!("{version}-{trace}-{parent}-{flags}")
    }

    fn parse_err(s: &str) -> TraceContextError {
        match TraceParent::parse(s) {
            Ok(p) => panic!("{s:?} parsed as {p:?}, expected an error"),
            Err(e) => e,
        }
    }

    fn state_err(s: &str) -> TraceContextError {
        match TraceState::parse(s) {
            Ok(t) => panic!("{s:?} parsed as {t:?}, expected an error"),
            Err(e) => e,
        }
    }

    // ---- traceparent ----

    // §3.1 Relationship Between the Headers: the spec's first example.
    #[test]
    fn spec_example_0af7_is_valid() {
        let p = TraceParent::parse(SPEC_TP_1).unwrap();
        assert_eq!(p.version, 0);
        assert_eq!(
            p.trace_id,
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap()
        );
        assert_eq!(p.parent_id, SpanId::from_hex("b7ad6b7169203331").unwrap());
        assert_eq!(p.flags, TraceFlags::SAMPLED);
        assert!(p.sampled());
        assert_eq!(p.to_string(), SPEC_TP_1);
    }

    // §3.2.3 Examples of HTTP traceparent Headers: sampled and not sampled.
    #[test]
    fn spec_examples_4bf9_sampled_and_not_sampled() {
        let p = TraceParent::parse(SPEC_TP_2).unwrap();
        assert!(p.sampled());
        assert_eq!(p.to_string(), SPEC_TP_2);
        let q =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!q.sampled());
        assert_eq!(q.flags, TraceFlags::NOT_SAMPLED);
        assert_eq!(p.trace_id, q.trace_id);
    }

    // §3.2.2.5 trace-flags: a bit field; all 8 bits kept as received, sampled is bit 0.
    #[test]
    fn trace_flags_are_kept_raw_and_masked_for_sampled() {
        let p = TraceParent::parse(&tp("00", SUITE_TRACE, SUITE_PARENT, "09")).unwrap();
        assert_eq!(p.flags.to_u8(), 0x09);
        assert!(p.sampled());
        assert!(!p.random());
        let q = TraceParent::parse(&tp("00", SUITE_TRACE, SUITE_PARENT, "ff")).unwrap();
        assert_eq!(q.flags.to_u8(), 0xff);
        assert!(q.sampled() && q.random());
        let r = TraceParent::parse(&tp("00", SUITE_TRACE, SUITE_PARENT, "02")).unwrap();
        assert!(!r.sampled());
        assert!(r.random());
        assert_eq!(r.to_string(), tp("00", SUITE_TRACE, SUITE_PARENT, "02"));
    }

    // §3.2.2: HEXDIGLC is lower-case only.
    #[test]
    fn upper_case_hex_is_invalid_in_every_field() {
        let upper_trace = SUITE_TRACE.replace('1', "A").to_uppercase();
        let cases = [
            (
                tp(
                    "00",
                    "0AF7651916CD43DD8448EB211C80319C",
                    "b7ad6b7169203331",
                    "01",
                ),
                TraceparentField::TraceId,
            ),
            (
                tp("00", &upper_trace, SUITE_PARENT, "01"),
                TraceparentField::TraceId,
            ),
            (
                tp("00", SUITE_TRACE, "B7AD6B7169203331", "01"),
                TraceparentField::ParentId,
            ),
            (
                tp("00", SUITE_TRACE, SUITE_PARENT, "0A"),
                TraceparentField::TraceFlags,
            ),
        ];
        for (s, field) in cases {
            assert_eq!(
                parse_err(&s),
                TraceContextError::TraceparentHex { field },
                "{s}"
            );
        }
        assert_eq!(
            parse_err(&tp("0A", SUITE_TRACE, SUITE_PARENT, "01")),
            TraceContextError::TraceparentVersion
        );
    }

    // §3.2.2.2 version-format: version 00 is exactly 55 characters.
    #[test]
    fn version_00_length_must_be_exactly_55() {
        let short = &SPEC_TP_1[..54];
        assert_eq!(
            parse_err(short),
            TraceContextError::TraceparentLength { len: 54 }
        );
        let long = format!("{SPEC_TP_1}0");
        assert_eq!(
            parse_err(&long),
            TraceContextError::TraceparentLength { len: 56 }
        );
    }

    // W3C test suite test_traceparent_version_0x00: no extra data in version 00.
    #[test]
    fn version_00_with_trailing_data_is_invalid() {
        let base = tp("00", SUITE_TRACE, SUITE_PARENT, "01");
        for extra in [".", "-", "-what-the-future-will-be-like"] {
            let s = format!("{base}{extra}");
            assert!(matches!(
                parse_err(&s),
                TraceContextError::TraceparentLength { .. }
            ));
        }
    }

    // §3.2.2.3 / §3.2.2.4 / §3.2.2.5: field lengths (test suite *_too_long / *_too_short).
    #[test]
    fn field_lengths_too_long_or_too_short_are_invalid() {
        for s in [
            "00-123456789012345678901234567890123-1234567890123456-01",
            "00-1234567890123456789012345678901-1234567890123456-01",
            "00-12345678901234567890123456789012-12345678901234567-01",
            "00-12345678901234567890123456789012-123456789012345-01",
            "00-12345678901234567890123456789012-1234567890123456-001",
            "00-12345678901234567890123456789012-1234567890123456-1",
        ] {
            assert!(TraceParent::parse(s).is_err(), "{s}");
        }
    }

    // §3.2.2: "The dash (-) character is used as a delimiter between fields."
    #[test]
    fn bad_separators_are_invalid() {
        let good = tp("00", SUITE_TRACE, SUITE_PARENT, "01");
        let with = |at: usize, c: u8| {
            let mut b = good.clone().into_bytes();
            b[at] = c;
            String::from_utf8(b).unwrap()
        };
        assert_eq!(
            parse_err(&with(2, b'_')),
            TraceContextError::TraceparentVersion
        );
        assert_eq!(
            parse_err(&with(35, b'_')),
            TraceContextError::TraceparentSeparator {
                field: TraceparentField::TraceId
            }
        );
        assert_eq!(
            parse_err(&with(52, b'.')),
            TraceContextError::TraceparentSeparator {
                field: TraceparentField::ParentId
            }
        );
        // Separators elsewhere than where they belong.
        assert!(TraceParent::parse(&with(20, b'-')).is_err());
    }

    // §3.2.2.1 version: "Version ff is invalid."
    #[test]
    fn version_ff_is_invalid() {
        assert_eq!(
            parse_err(&tp("ff", SUITE_TRACE, SUITE_PARENT, "01")),
            TraceContextError::TraceparentVersionFf
        );
        assert_eq!(
            parse_err(&tp("ff", SUITE_TRACE, SUITE_PARENT, "01-extra")),
            TraceContextError::TraceparentVersionFf
        );
    }

    // §3.2.4: the version prefix is "2 hex characters followed by a dash".
    #[test]
    fn version_must_be_two_lower_case_hex_digits() {
        for v in [".0", "0.", "g0", "zz", "0x", "-0", " 0"] {
            let s = tp(v, SUITE_TRACE, SUITE_PARENT, "01");
            assert!(TraceParent::parse(&s).is_err(), "{s:?}");
        }
        for v in ["000", "0000", "0"] {
            let s = tp(v, SUITE_TRACE, SUITE_PARENT, "01");
            assert_eq!(parse_err(&s), TraceContextError::TraceparentVersion, "{s}");
        }
        for s in ["0", "00", "00-", "0-"] {
            assert!(TraceParent::parse(s).is_err(), "{s:?}");
        }
    }

    // §3.2.4 Versioning of traceparent: a higher version is parsed like 00.
    #[test]
    fn future_version_with_exactly_55_characters_is_valid() {
        for v in ["01", "cc", "fe"] {
            let p = TraceParent::parse(&tp(v, SUITE_TRACE, SUITE_PARENT, "01")).unwrap();
            assert_eq!(format!("{:02x}", p.version), v);
            assert_eq!(p.trace_id, TraceId::from_hex(SUITE_TRACE).unwrap());
            assert_eq!(p.parent_id, SpanId::from_hex(SUITE_PARENT).unwrap());
        }
    }

    // §3.2.4: flags "either at the end of the string or followed by a dash" (test suite 0xcc).
    #[test]
    fn future_version_with_dash_separated_extra_data_is_valid() {
        let s =
            "cc-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like";
        let p = TraceParent::parse(s).unwrap();
        assert_eq!(p.version, 0xcc);
        assert!(p.sampled());
        assert!(TraceParent::parse(&tp("01", SUITE_TRACE, SUITE_PARENT, "00-")).is_ok());
        // Unknown fields are not analysed.
        assert!(TraceParent::parse(&tp("02", SUITE_TRACE, SUITE_PARENT, "01-Ünknown-é")).is_ok());
    }

    // §3.2.4: extra data not separated by "-" is invalid (test suite 0xcc, third case).
    #[test]
    fn future_version_with_extra_data_not_after_dash_is_invalid() {
        let s =
            "cc-12345678901234567890123456789012-1234567890123456-01.what-the-future-will-be-like";
        assert_eq!(
            parse_err(s),
            TraceContextError::TraceparentTrailing { version: 0xcc }
        );
        // A third flags digit is not allowed either.
        assert!(TraceParent::parse(&tp("cc", SUITE_TRACE, SUITE_PARENT, "011")).is_err());
    }

    // §3.2.4: "If the size of the header is shorter than 55 characters ... restart the trace."
    #[test]
    fn future_version_shorter_than_55_is_invalid() {
        let s = tp("cc", SUITE_TRACE, SUITE_PARENT, "1");
        assert_eq!(
            parse_err(&s),
            TraceContextError::TraceparentTooShort {
                version: 0xcc,
                len: 54
            }
        );
    }

    // §3.2.4: the fields of a higher version are checked like version 00's.
    #[test]
    fn future_version_fields_are_still_validated() {
        assert!(
            TraceParent::parse(&tp(
                "cc",
                "0AF7651916CD43DD8448EB211C80319C",
                SUITE_PARENT,
                "01"
            ))
            .is_err()
        );
        assert_eq!(
            parse_err(&tp("cc", &"0".repeat(32), SUITE_PARENT, "01-x")),
            TraceContextError::TraceIdZero
        );
        assert_eq!(
            parse_err(&tp("cc", SUITE_TRACE, &"0".repeat(16), "01")),
            TraceContextError::ParentIdZero
        );
    }

    // §3.2.2.3 trace-id: "All bytes as zero ... is considered an invalid value."
    #[test]
    fn trace_id_all_zeros_is_invalid() {
        let e = parse_err(&tp("00", &"0".repeat(32), SUITE_PARENT, "01"));
        assert_eq!(e, TraceContextError::TraceIdZero);
        assert_eq!(e.to_string(), "traceparent: trace id is all zeros");
    }

    // §3.2.2.4 parent-id: "All bytes as zero ... is considered an invalid value."
    #[test]
    fn parent_id_all_zeros_is_invalid() {
        let e = parse_err(&tp("00", SUITE_TRACE, &"0".repeat(16), "01"));
        assert_eq!(e, TraceContextError::ParentIdZero);
        assert_eq!(e.to_string(), "traceparent: parent id is all zeros");
    }

    // Test suite *_illegal_characters: any non-hex character in any field.
    #[test]
    fn illegal_characters_in_fields_are_invalid() {
        for s in [
            "00-.2345678901234567890123456789012-1234567890123456-01",
            "00-1234567890123456789012345678901.-1234567890123456-01",
            "00-12345678901234567890123456789012-.234567890123456-01",
            "00-12345678901234567890123456789012-123456789012345.-01",
            "00-12345678901234567890123456789012-1234567890123456-.0",
            "00-12345678901234567890123456789012-1234567890123456-0.",
            "00-1234567890123456789012345678901g-1234567890123456-01",
        ] {
            assert!(TraceParent::parse(s).is_err(), "{s}");
        }
    }

    // §3.2.2.1: "The value is US-ASCII encoded"; multi-byte input must never panic.
    #[test]
    fn non_ascii_input_is_invalid_and_never_panics() {
        let base = tp("00", SUITE_TRACE, SUITE_PARENT, "01");
        let base_cc = format!("{}-tail", tp("cc", SUITE_TRACE, SUITE_PARENT, "01"));
        for insert in ["é", "€", "😀", "\u{0}", "\u{a0}"] {
            for s in [&base, &base_cc] {
                for at in 0..=s.len() {
                    // Replace the char at `at` (all ASCII here) and also insert before it.
                    let mut replaced = String::new();
                    replaced.push_str(&s[..at]);
                    replaced.push_str(insert);
                    if at < s.len() {
                        replaced.push_str(&s[at + 1..]);
                    }
                    let mut inserted = String::new();
                    inserted.push_str(&s[..at]);
                    inserted.push_str(insert);
                    inserted.push_str(&s[at..]);
                    let r1 = TraceParent::parse(&replaced);
                    let r2 = TraceParent::parse(&inserted);
                    // Only the unknown tail of a higher version may hold anything.
                    if at < TRACEPARENT_LEN {
                        assert!(r1.is_err(), "{replaced:?}");
                        assert!(r2.is_err(), "{inserted:?}");
                    }
                }
            }
        }
        assert_eq!(
            parse_err("00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333é-01"),
            TraceContextError::TraceparentNonAscii
        );
        assert!(TraceParent::parse("ü").is_err());
        assert!(TraceParent::parse("üü-").is_err());
        assert!(TraceParent::parse("😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀").is_err());
    }

    // Test suite test_traceparent_ows_handling: leading/trailing spaces and tabs are OWS.
    #[test]
    fn surrounding_spaces_and_tabs_are_ignored() {
        for s in [
            format!(" {SPEC_TP_1}"),
            format!("\t{SPEC_TP_1}"),
            format!("{SPEC_TP_1} "),
            format!("{SPEC_TP_1}\t"),
            format!("\t {SPEC_TP_1} \t"),
        ] {
            let p = TraceParent::parse(&s).unwrap();
            assert_eq!(p.to_string(), SPEC_TP_1);
        }
    }

    // Our whitespace rule: only SP/HTAB are OWS; CR/LF and internal whitespace are invalid.
    #[test]
    fn other_and_internal_whitespace_is_invalid() {
        for s in [
            format!("{SPEC_TP_1}\n"),
            format!("\r\n{SPEC_TP_1}"),
            SPEC_TP_1.replacen('-', " -", 1),
            SPEC_TP_1.replacen('-', "- ", 1),
            SPEC_TP_1.replace("b7ad", "b7 d"),
            SPEC_TP_1.replace("-01", "-0\t"),
        ] {
            assert!(TraceParent::parse(&s).is_err(), "{s:?}");
        }
        assert_eq!(parse_err(""), TraceContextError::TraceparentEmpty);
        assert_eq!(parse_err(" \t "), TraceContextError::TraceparentEmpty);
    }

    // §3.2.4: "Vendors MUST use these fields to construct the new traceparent field according
    // to the highest version ... known to the implementation" — Display writes version 00.
    #[test]
    fn display_always_writes_version_00() {
        let p = TraceParent::parse(&format!(
            "{}-more",
            tp("cc", SUITE_TRACE, SUITE_PARENT, "01")
        ))
        .unwrap();
        assert_eq!(p.to_string(), tp("00", SUITE_TRACE, SUITE_PARENT, "01"));
        let q = TraceParent::new(
            TraceId::from(1u128),
            SpanId::from(u64::MAX),
            TraceFlags::NOT_SAMPLED,
        );
        assert_eq!(
            q.to_string(),
            "00-00000000000000000000000000000001-ffffffffffffffff-00"
        );
        assert_eq!(q.version, 0);
    }

    // Formatting round-trips and write_hex matches Display.
    #[test]
    fn format_round_trips_and_write_hex_matches_display() {
        for _ in 0..200 {
            let p = TraceParent::new(new_trace_id(), new_span_id(), TraceFlags::new(0x03));
            let s = p.to_string();
            assert_eq!(s.len(), TRACEPARENT_LEN);
            assert_eq!(TraceParent::parse(&s).unwrap(), p);
            assert_eq!(s.parse::<TraceParent>().unwrap(), p);
            let mut buf = String::from("x");
            p.write_hex(&mut buf);
            assert_eq!(&buf[1..], s);
            assert_eq!(format!("{:032x}", p.trace_id), &s[3..35]);
            assert_eq!(format!("{:016x}", p.parent_id), &s[36..52]);
        }
    }

    // Error messages: one line, lower-case, prefixed with the header they concern.
    #[test]
    fn error_messages_are_one_line_lower_case_and_prefixed() {
        let mut errors: Vec<TraceContextError> = [
            "",
            "zz",
            "ff-12345678901234567890123456789012-1234567890123456-01",
            "00-12345678901234567890123456789012-1234567890123456-0",
            "cc-12345678901234567890123456789012-1234567890123456-0",
            "00-1234567890123456789012345678901G-1234567890123456-01",
            "00-12345678901234567890123456789012_1234567890123456-01",
            "cc-12345678901234567890123456789012-1234567890123456-01x",
            "00-00000000000000000000000000000000-1234567890123456-01",
            "é",
        ]
        .iter()
        .map(|s| parse_err(s))
        .collect();
        errors.extend(
            [
                "Foo=1",
                "foo",
                "foo=",
                "foo=a=b",
                "foo=1,foo=2",
                "\u{7}\n=1",
            ]
            .iter()
            .map(|s| state_err(s)),
        );
        errors.push(state_err(&format!("{}=1", "a".repeat(257))));
        errors.push(state_err(&format!("a={}", "v".repeat(257))));
        errors.push(state_err(&vec!["a=1"; 33].join(",")));
        for e in errors {
            let msg = e.to_string();
            assert!(!msg.contains('\n') && !msg.contains('\r'), "{msg}");
            assert!(
                msg.starts_with("traceparent: ") || msg.starts_with("tracestate: "),
                "{msg}"
            );
            let rest = msg.split_once(": ").unwrap().1;
            assert!(rest.starts_with(|c: char| c.is_ascii_lowercase()), "{msg}");
        }
        assert_eq!(
            TraceContextError::TraceparentHex {
                field: TraceparentField::TraceId
            }
            .to_string(),
            "traceparent: trace id must be 32 lower-case hex digits"
        );
    }

    // ---- tracestate ----

    // §3.1 / §3.3.2 Examples of tracestate HTTP Headers.
    #[test]
    fn spec_example_rojo_congo_is_valid_and_ordered() {
        let t = TraceState::parse("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.get("rojo"), Some("00f067aa0ba902b7"));
        assert_eq!(t.get("congo"), Some("t61rcWkgMzE"));
        assert_eq!(t.get("nope"), None);
        let keys: Vec<&str> = t.members().map(|(k, _)| k).collect();
        assert_eq!(keys, ["rojo", "congo"]);
        assert_eq!(t.header(), "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
        assert_eq!(t.to_string(), t.header());
        let single = TraceState::parse("congo=t61rcWkgMzE").unwrap();
        assert_eq!(single.header(), "congo=t61rcWkgMzE");
    }

    // Level 1 §3.3.1.3.1 multi-tenant key example, still valid under the Level 2 grammar.
    #[test]
    fn multi_tenant_key_is_valid() {
        let t = TraceState::parse("fw529a3039@dt=some-value,rojo=1").unwrap();
        assert_eq!(t.get("fw529a3039@dt"), Some("some-value"));
    }

    // Level 2 / Level 3 ED §3.3.1.3.1 Key (2026 suite, w3c/trace-context#584): "@" is an
    // ordinary keychar, keys may start with a digit, 256 characters total.
    #[test]
    fn level_2_key_grammar_accepts_at_signs_anywhere_after_the_first_char() {
        for key in [
            "foo@".to_owned(),
            "foo@@bar".to_owned(),
            "foo@bar@baz".to_owned(),
            "1foo".to_owned(),
            "0".to_owned(),
            "a_-*/@9".to_owned(),
            // Over Level 1's tenant (241) and system (14) limits, valid in Level 2.
            format!("{}@v", "t".repeat(242)),
            format!("t@{}", "v".repeat(15)),
            // Level 1 required a system id starting with lcalpha.
            "tenant@1system".to_owned(),
        ] {
            let t = TraceState::parse(&format!("{key}=1,bar=2"))
                .unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(t.get(&key), Some("1"));
            assert_eq!(t.get("bar"), Some("2"));
        }
    }

    // §3.3.1.3.1: key = ( lcalpha / DIGIT ) ...: a key cannot start with "@" or another keychar.
    #[test]
    fn key_must_start_with_lower_case_letter_or_digit() {
        for s in ["@foo=1", "_foo=1", "-foo=1", "*foo=1", "/foo=1", "=1"] {
            assert!(
                matches!(state_err(s), TraceContextError::TracestateKey { .. }),
                "{s}"
            );
        }
    }

    // §3.3.1.3.1: lcalpha only (test suite test_tracestate_key_illegal_characters).
    #[test]
    fn key_with_upper_case_or_illegal_characters_is_invalid() {
        assert_eq!(
            state_err("foo=1,bar=2,Foo=3").to_string(),
            "tracestate: member 3: invalid key \"Foo\""
        );
        for s in [
            "FOO=1",
            "foo.bar=1",
            "foo =1",
            "fo o=1",
            "föo=1",
            "foo\t=1",
            "foo:bar=1",
        ] {
            assert!(
                matches!(state_err(s), TraceContextError::TracestateKey { .. }),
                "{s:?}"
            );
        }
    }

    // §3.3.1.3.1: at most 256 characters (test suite test_tracestate_key_length_limit).
    #[test]
    fn key_of_256_is_valid_and_257_is_too_long() {
        let ok = format!("foo=1,{}=1", "z".repeat(256));
        assert_eq!(TraceState::parse(&ok).unwrap().len(), 2);
        let too_long = format!("foo=1,{}=1", "z".repeat(257));
        assert_eq!(
            state_err(&too_long),
            TraceContextError::TracestateKeyTooLong {
                member: 2,
                len: 257
            }
        );
        let with_at = format!("{}@{}=1", "t".repeat(200), "v".repeat(55));
        assert!(TraceState::parse(&with_at).is_ok());
        let with_at_too_long = format!("{}@{}=1", "t".repeat(200), "v".repeat(56));
        assert!(TraceState::parse(&with_at_too_long).is_err());
    }

    // Test suite test_tracestate_all_allowed_characters.
    #[test]
    fn all_allowed_key_and_value_characters_are_accepted() {
        let key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/";
        let key_at = format!("{key}@a-z0-9_-*/");
        let value: String = (0x20u8..=0x7e)
            .filter(|&b| b != b',' && b != b'=')
            .map(char::from)
            .collect();
        for k in [key.to_owned(), key_at] {
            let t = TraceState::parse(&format!("{k}={value}")).unwrap();
            assert_eq!(t.get(&k), Some(value.as_str()));
        }
    }

    // §3.3.1.3.2 Value: no "=" (test suite test_tracestate_value_illegal_characters).
    #[test]
    fn value_with_equals_sign_is_invalid() {
        assert_eq!(
            state_err("foo=bar=baz"),
            TraceContextError::TracestateValueChar {
                member: 1,
                key: "foo".to_owned(),
                found: '='
            }
        );
    }

    // §3.3.1.3.2: no "," — a comma always separates members, so what follows is a new member.
    #[test]
    fn comma_in_value_splits_the_member() {
        assert_eq!(
            state_err("foo=a,b"),
            TraceContextError::TracestateMissingEquals { member: 2 }
        );
        assert_eq!(
            TraceState::parse("foo=a,b=c").unwrap().get("foo"),
            Some("a")
        );
    }

    // §3.3.1.3.2: "all trailing spaces are considered to be optional whitespace characters not
    // part of the value"; leading spaces "MUST be preserved".
    #[test]
    fn value_trailing_spaces_are_ows_and_leading_spaces_are_kept() {
        let t = TraceState::parse("foo=1 ,bar=a b  \t,baz=  x").unwrap();
        assert_eq!(t.get("foo"), Some("1"));
        assert_eq!(t.get("bar"), Some("a b"));
        assert_eq!(t.get("baz"), Some("  x"));
        assert_eq!(t.header(), "foo=1,bar=a b,baz=  x");
    }

    // §3.3.1.3.2: value = 0*255(chr) nblk-chr — at least one non-blank character.
    #[test]
    fn empty_value_is_invalid() {
        for s in ["foo=", "foo=,bar=3", "foo=   ", "bar=1,foo= \t"] {
            assert!(
                matches!(state_err(s), TraceContextError::TracestateEmptyValue { .. }),
                "{s:?}"
            );
        }
    }

    // §3.3.1.3.2: at most 256 characters.
    #[test]
    fn value_of_256_is_valid_and_257_is_too_long() {
        let ok = format!("foo={}", "v".repeat(256));
        assert_eq!(
            TraceState::parse(&ok).unwrap().get("foo").unwrap().len(),
            256
        );
        assert_eq!(
            state_err(&format!("foo={}", "v".repeat(257))),
            TraceContextError::TracestateValueTooLong {
                member: 1,
                key: "foo".to_owned(),
                len: 257
            }
        );
    }

    // §3.3.1.3.2: printable ASCII only — "this also excludes tabs, newlines, carriage returns".
    #[test]
    fn value_with_control_or_non_ascii_characters_is_invalid() {
        for (s, found) in [
            ("foo=a\tb", '\t'),
            ("foo=a\nb", '\n'),
            ("foo=a\rb", '\r'),
            ("foo=\u{7f}", '\u{7f}'),
            ("foo=é", 'é'),
            ("foo=x😀", '😀'),
        ] {
            assert_eq!(
                state_err(s),
                TraceContextError::TracestateValueChar {
                    member: 1,
                    key: "foo".to_owned(),
                    found
                },
                "{s:?}"
            );
        }
    }

    // §3.3.1.2 list: "There can be a maximum of 32 list-members" (test suite member count).
    #[test]
    fn thirty_two_members_are_valid_and_thirty_three_are_not() {
        let members: Vec<String> = (1..=33).map(|i| format!("bar{i:02}={i:02}")).collect();
        let t = TraceState::parse(&members[..32].join(",")).unwrap();
        assert_eq!(t.len(), 32);
        assert_eq!(t.get("bar01"), Some("01"));
        assert_eq!(t.get("bar32"), Some("32"));
        assert_eq!(
            state_err(&members.join(",")),
            TraceContextError::TracestateTooManyMembers
        );
    }

    // §3.3.1.1: "Empty and whitespace-only list members are allowed"; they are not counted.
    #[test]
    fn empty_members_and_ows_are_ignored() {
        let t = TraceState::parse(",, foo=1 \t , \t bar=2,\t \t,baz=3 ,").unwrap();
        assert_eq!(t.header(), "foo=1,bar=2,baz=3");
        let t = TraceState::parse("foo=1\t \t,\t \tbar=2,\t \tbaz=3").unwrap();
        assert_eq!(t.len(), 3);
        for s in ["", " ", "\t", ",", " , ,\t,"] {
            let t = TraceState::parse(s).unwrap();
            assert!(t.is_empty(), "{s:?}");
            assert_eq!(t.header(), "");
        }
        // 32 real members plus empty ones are still within the limit.
        let mut items: Vec<String> = (1..=32).map(|i| format!("k{i}=v")).collect();
        items.extend(std::iter::repeat_n(String::new(), 10));
        assert_eq!(TraceState::parse(&items.join(" , ")).unwrap().len(), 32);
    }

    // §3.3.1.4 Combined Header Value: "Only one entry per key is allowed."
    #[test]
    fn duplicate_keys_are_invalid() {
        assert_eq!(
            state_err("foo=1,foo=1"),
            TraceContextError::TracestateDuplicateKey {
                member: 2,
                key: "foo".to_owned()
            }
        );
        assert!(TraceState::parse("foo=1,bar=2,foo=2").is_err());
        assert!(TraceState::parse("foo=1, ,\tfoo=2").is_err());
        // Different keys that share a prefix are not duplicates.
        assert!(TraceState::parse("foo=1,foo@t=2,foo1=3").is_ok());
    }

    // §3.3.1.5 tracestate Limits: 512 characters is a propagation minimum, not a parse limit.
    #[test]
    fn no_total_length_limit_beyond_the_per_member_limits() {
        let list: Vec<String> = (0..32)
            .map(|i| format!("{}{i:02}={}", "k".repeat(254), "v".repeat(256)))
            .collect();
        let header = list.join(",");
        assert!(header.len() > 16_000);
        let t = TraceState::parse(&header).unwrap();
        assert_eq!(t.len(), 32);
        assert_eq!(t.header(), header);
    }

    // Non-ASCII anywhere in a tracestate is an error, never a panic (byte-safe slicing).
    #[test]
    fn non_ascii_tracestate_is_invalid_and_never_panics() {
        let base = "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE";
        for insert in ["é", "€", "😀", "\u{a0}"] {
            for at in 0..=base.len() {
                let s = format!("{}{insert}{}", &base[..at], &base[at..]);
                assert!(TraceState::parse(&s).is_err(), "{s:?}");
            }
        }
        let long_key = format!("{}=1", "É".repeat(300));
        let e = state_err(&long_key);
        let TraceContextError::TracestateKey { key, .. } = &e else {
            panic!("{e:?}");
        };
        assert_eq!(key.chars().count(), MAX_KEY_IN_ERROR + 3);
        assert!(!e.to_string().contains('\n'));
    }

    // ---- Incoming / ProducerContext ----

    // Nothing given (or only whitespace): start a new trace.
    #[test]
    fn read_absent_traceparent() {
        assert_eq!(Incoming::read(None, None), Incoming::Absent);
        assert_eq!(Incoming::read(Some(""), None), Incoming::Absent);
        assert_eq!(Incoming::read(Some(" \t\n"), None), Incoming::Absent);
    }

    // §3.3: tracestate without a (valid) traceparent is ignored (test suite
    // test_tracestate_included_traceparent_missing).
    #[test]
    fn read_tracestate_without_traceparent_is_ignored() {
        assert_eq!(Incoming::read(None, Some("foo=1")), Incoming::Absent);
        assert_eq!(Incoming::read(Some("  "), Some("foo=1")), Incoming::Absent);
    }

    #[test]
    fn read_valid_traceparent_without_tracestate() {
        let Incoming::Valid {
            parent,
            state,
            state_error,
        } = Incoming::read(Some(SPEC_TP_2), None)
        else {
            panic!("expected Valid");
        };
        assert_eq!(parent, TraceParent::parse(SPEC_TP_2).unwrap());
        assert!(state.is_empty());
        assert_eq!(state_error, None);
    }

    #[test]
    fn read_valid_traceparent_with_tracestate() {
        let incoming = Incoming::read(
            Some(SPEC_TP_2),
            Some(" rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        );
        let Incoming::Valid {
            state, state_error, ..
        } = incoming
        else {
            panic!("expected Valid");
        };
        assert_eq!(state.header(), "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
        assert_eq!(state_error, None);
    }

    // §3.3: "failure to parse tracestate MUST NOT affect the parsing of traceparent".
    #[test]
    fn read_valid_traceparent_with_invalid_tracestate_keeps_parent() {
        let incoming = Incoming::read(Some(SPEC_TP_2), Some("foo=1,Foo=2"));
        let Incoming::Valid {
            parent,
            state,
            state_error,
        } = incoming
        else {
            panic!("expected Valid");
        };
        assert_eq!(parent.to_string(), SPEC_TP_2);
        assert!(state.is_empty());
        assert_eq!(
            state_error,
            Some(TraceContextError::TracestateKey {
                member: 2,
                key: "Foo".to_owned()
            })
        );
    }

    // §3.3: "If the vendor failed to parse traceparent, it MUST NOT attempt to parse tracestate."
    #[test]
    fn read_invalid_traceparent_restarts_and_drops_tracestate() {
        let incoming = Incoming::read(
            Some("00-00000000000000000000000000000000-1234567890123456-01"),
            Some("foo=1"),
        );
        assert_eq!(incoming, Incoming::Invalid(TraceContextError::TraceIdZero));
        let child = incoming.child();
        assert!(child.tracestate.is_empty());
        assert_eq!(child.parent_span_id, None);
        assert_ne!(child.traceparent.trace_id, TraceId::INVALID);
    }

    // §3.4 Mutating the traceparent Field, "Update parent-id": same trace id, new parent id.
    #[test]
    fn child_of_valid_keeps_trace_id_flags_and_tracestate_with_new_span_id() {
        for flags in ["00", "01", "02", "03"] {
            let given = tp("00", SUITE_TRACE, SUITE_PARENT, flags);
            let incoming = Incoming::read(Some(&given), Some("rojo=1,congo=2"));
            let parent = TraceParent::parse(&given).unwrap();
            let child = incoming.child();
            assert_eq!(child.traceparent.version, 0);
            assert_eq!(child.traceparent.trace_id, parent.trace_id);
            assert_eq!(child.traceparent.flags, parent.flags);
            assert_ne!(child.traceparent.parent_id, parent.parent_id);
            assert_ne!(child.traceparent.parent_id, SpanId::INVALID);
            assert_eq!(child.parent_span_id, Some(parent.parent_id));
            assert_eq!(child.tracestate.header(), "rojo=1,congo=2");
            let s = child.traceparent.to_string();
            assert!(s.starts_with(&format!("00-{SUITE_TRACE}-")), "{s}");
            assert!(s.ends_with(&format!("-{flags}")), "{s}");
            // Two children of the same parent get different span ids.
            assert_ne!(
                incoming.child().traceparent.parent_id,
                child.traceparent.parent_id
            );
        }
    }

    // §3.2.2.5.2 Other Flags: "Vendors MUST set those to zero"; §3.2.4: downgrade to version 00.
    #[test]
    fn child_clears_undefined_flags_and_downgrades_version() {
        let given = format!("{}-future", tp("cc", SUITE_TRACE, SUITE_PARENT, "ff"));
        let child = Incoming::read(Some(&given), None).child();
        assert_eq!(child.traceparent.version, 0);
        assert_eq!(child.traceparent.flags.to_u8(), FLAG_SAMPLED | FLAG_RANDOM);
        assert!(child.traceparent.to_string().starts_with("00-"));
    }

    // Processing model for starting a trace: all of trace-id, parent-id, flags generated.
    #[test]
    fn child_of_absent_starts_a_sampled_trace() {
        let a = Incoming::Absent.child();
        let b = Incoming::Absent.child();
        assert_ne!(a.traceparent.trace_id, TraceId::INVALID);
        assert_ne!(a.traceparent.parent_id, SpanId::INVALID);
        assert_ne!(a.traceparent.trace_id, b.traceparent.trace_id);
        assert_eq!(a.traceparent.flags, TraceFlags::SAMPLED);
        assert!(a.traceparent.sampled());
        assert!(a.tracestate.is_empty());
        assert_eq!(a.parent_span_id, None);
        assert!(a.traceparent.to_string().ends_with("-01"));
    }

    // Generated ids are never the invalid all-zero value, and do not repeat.
    #[test]
    fn generated_ids_are_non_zero_and_distinct() {
        let mut traces = std::collections::HashSet::new();
        let mut spans = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let t = new_trace_id();
            let s = new_span_id();
            assert_ne!(t, TraceId::INVALID);
            assert_ne!(s, SpanId::INVALID);
            assert!(traces.insert(t));
            assert!(spans.insert(s));
        }
    }
}
