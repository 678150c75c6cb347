//! A rebuilt trace as the OpenTelemetry SDK's span records (`SpanData`) and resource,
//! which its exporters take (`pgc trace --format stdout`, `--export otlp`). Only with
//! the `otel` feature.

use std::borrow::Cow;
use std::time::SystemTime;

use opentelemetry::trace::{
    Link, SpanContext, SpanId, SpanKind as OtelKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, Value as OtelValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::otlp::{export_attributes, export_end, nanos};
use chrono::{DateTime, Utc};

use super::{AttrValue, Resource, Span, SpanKind, SpanStatus, Trace};

impl Resource {
    /// As the SDK's resource type.
    pub fn to_sdk(&self) -> opentelemetry_sdk::Resource {
        opentelemetry_sdk::Resource::builder_empty()
            .with_attributes(
                self.attributes
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            )
            .build()
    }
}

/// The trace as the SDK's span records, for its exporters (stdout, OTLP).
pub fn span_data(trace: &Trace) -> Vec<SpanData> {
    trace
        .spans
        .iter()
        .map(|s| to_span_data(&trace.trace_id, trace.now, s))
        .collect()
}

/// One span of trace `trace_id` as the SDK's span record; a span still running ends at
/// `now`.
pub fn to_span_data(trace_id: &str, now: DateTime<Utc>, s: &Span) -> SpanData {
    let trace_id = TraceId::from_hex(trace_id).unwrap_or(TraceId::INVALID);
    let context = |span_id: &str, flags: u8| {
        SpanContext::new(
            trace_id,
            SpanId::from_hex(span_id).unwrap_or(SpanId::INVALID),
            TraceFlags::new(flags),
            false,
            TraceState::default(),
        )
    };
    let mut links = SpanLinks::default();
    links.links = s
        .links
        .iter()
        .map(|l| Link::with_context(context(l, s.flags)))
        .collect();
    SpanData {
        span_context: context(&s.span_id, s.flags),
        parent_span_id: s
            .parent_span_id
            .as_deref()
            .and_then(|p| SpanId::from_hex(p).ok())
            .unwrap_or(SpanId::INVALID),
        parent_span_is_remote: s.parent_is_remote,
        span_kind: match s.kind {
            SpanKind::Producer => OtelKind::Producer,
            SpanKind::Consumer => OtelKind::Consumer,
            SpanKind::Internal => OtelKind::Internal,
        },
        name: Cow::Owned(s.name.clone()),
        start_time: SystemTime::from(s.start),
        end_time: SystemTime::from(export_end(s, now)),
        attributes: export_attributes(s)
            .into_iter()
            .map(|(k, v)| {
                let value = match v {
                    AttrValue::Str(s) => OtelValue::from(s.to_string()),
                    AttrValue::Uuid(u) => OtelValue::from(u.to_string()),
                    AttrValue::Int(i) => OtelValue::from(i),
                    AttrValue::Bool(b) => OtelValue::from(b),
                };
                KeyValue::new(k, value)
            })
            .collect(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links,
        status: match (s.status, &s.status_message) {
            (SpanStatus::Error, m) => Status::error(m.clone().unwrap_or_default()),
            (SpanStatus::Ok, _) => Status::Ok,
            (SpanStatus::Unset, _) => Status::Unset,
        },
        instrumentation_scope: scope(),
    }
}

/// pgc's instrumentation scope, built once.
fn scope() -> InstrumentationScope {
    static SCOPE: std::sync::OnceLock<InstrumentationScope> = std::sync::OnceLock::new();
    SCOPE
        .get_or_init(|| {
            InstrumentationScope::builder("pgc")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build()
        })
        .clone()
}

/// One span of trace `trace_id` as an OTLP protobuf span, built straight from pgc's span
/// (live export: no SDK span record in between); a span still running ends at `now`.
/// The same content as [`to_span_data`] gives after the SDK's own conversion.
pub fn to_proto_span(
    trace_id: &str,
    now: DateTime<Utc>,
    s: &Span,
) -> opentelemetry_proto::tonic::trace::v1::Span {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue as ProtoKeyValue, any_value};
    use opentelemetry_proto::tonic::trace::v1::{
        Span as ProtoSpan, SpanFlags, Status as ProtoStatus, span, status,
    };
    let trace_id = TraceId::from_hex(trace_id)
        .unwrap_or(TraceId::INVALID)
        .to_bytes()
        .to_vec();
    let id = |hex: &str| {
        SpanId::from_hex(hex)
            .unwrap_or(SpanId::INVALID)
            .to_bytes()
            .to_vec()
    };
    // The trace flags, with "whether the parent is remote" known (OTLP's span flags).
    let flags = |remote: bool| {
        let mut f = u32::from(s.flags) | SpanFlags::ContextHasIsRemoteMask as u32;
        if remote {
            f |= SpanFlags::ContextIsRemoteMask as u32;
        }
        f
    };
    let attributes = export_attributes(s)
        .into_iter()
        .map(|(k, v)| ProtoKeyValue {
            key: k.to_string(),
            value: Some(AnyValue {
                value: Some(match v {
                    AttrValue::Str(s) => any_value::Value::StringValue(s.to_string()),
                    AttrValue::Uuid(u) => any_value::Value::StringValue(u.to_string()),
                    AttrValue::Int(i) => any_value::Value::IntValue(i),
                    AttrValue::Bool(b) => any_value::Value::BoolValue(b),
                }),
            }),
            ..Default::default()
        })
        .collect();
    let (code, message) = match (s.status, &s.status_message) {
        (SpanStatus::Error, m) => (status::StatusCode::Error, m.clone().unwrap_or_default()),
        (SpanStatus::Ok, _) => (status::StatusCode::Ok, String::new()),
        (SpanStatus::Unset, _) => (status::StatusCode::Unset, String::new()),
    };
    ProtoSpan {
        trace_id: trace_id.clone(),
        span_id: id(&s.span_id),
        parent_span_id: s
            .parent_span_id
            .as_deref()
            .map(id)
            .filter(|p| p.iter().any(|b| *b != 0))
            .unwrap_or_default(),
        flags: flags(s.parent_is_remote),
        name: s.name.clone(),
        kind: match s.kind {
            SpanKind::Producer => span::SpanKind::Producer,
            SpanKind::Consumer => span::SpanKind::Consumer,
            SpanKind::Internal => span::SpanKind::Internal,
        } as i32,
        start_time_unix_nano: nanos(s.start),
        end_time_unix_nano: nanos(export_end(s, now)),
        attributes,
        links: s
            .links
            .iter()
            .map(|l| span::Link {
                trace_id: trace_id.clone(),
                span_id: id(l),
                flags: flags(false),
                ..Default::default()
            })
            .collect(),
        status: Some(ProtoStatus {
            code: code as i32,
            message,
        }),
        ..Default::default()
    }
}

/// Appends one span of trace `trace_id` to `out` as the body of an OTLP protobuf `Span`
/// message: the same message as [`to_proto_span`] builds, written straight from pgc's
/// span without building it (no allocation when `out` has room). Live export encodes
/// every attempt's span; building the message first, then encoding and dropping it,
/// was most of what tracing cost a busy worker.
pub fn encode_proto_span(trace_id: &str, now: DateTime<Utc>, s: &Span, out: &mut Vec<u8>) {
    use wire::*;
    let trace_id = TraceId::from_hex(trace_id)
        .unwrap_or(TraceId::INVALID)
        .to_bytes();
    let id = |hex: &str| SpanId::from_hex(hex).unwrap_or(SpanId::INVALID).to_bytes();
    let flags = |remote: bool| {
        let mut f = u32::from(s.flags) | 0x100;
        if remote {
            f |= 0x200;
        }
        f
    };
    bytes(1, &trace_id, out);
    bytes(2, &id(&s.span_id), out);
    if let Some(parent) = s.parent_span_id.as_deref().map(id)
        && parent.iter().any(|b| *b != 0)
    {
        bytes(4, &parent, out);
    }
    bytes(5, s.name.as_bytes(), out);
    varint(
        6,
        match s.kind {
            SpanKind::Internal => 1,
            SpanKind::Producer => 4,
            SpanKind::Consumer => 5,
        },
        out,
    );
    fixed64(7, nanos(s.start), out);
    fixed64(8, nanos(export_end(s, now)), out);
    for (key, value) in export_attributes(s) {
        let mut uuid = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let value = match value {
            AttrValue::Str(v) => Any::Str(v.as_bytes()),
            AttrValue::Uuid(u) => Any::Str(u.hyphenated().encode_lower(&mut uuid).as_bytes()),
            AttrValue::Int(i) => Any::Int(i),
            AttrValue::Bool(b) => Any::Bool(b),
        };
        key_value(9, key.as_bytes(), value, out);
    }
    for link in &s.links {
        let link_id = id(link);
        let link_flags = flags(false);
        // Link: trace_id (1), span_id (2), flags (6).
        let len = bytes_len(1, &trace_id) + bytes_len(2, &link_id) + fixed32_len(6, link_flags);
        header(13, len, out);
        bytes(1, &trace_id, out);
        bytes(2, &link_id, out);
        fixed32(6, link_flags, out);
    }
    // Status: message (2), code (3); always present.
    let (code, message) = match (s.status, &s.status_message) {
        (SpanStatus::Error, m) => (2, m.as_deref().unwrap_or_default()),
        (SpanStatus::Ok, _) => (1, ""),
        (SpanStatus::Unset, _) => (0, ""),
    };
    let len = bytes_len(2, message.as_bytes()) + varint_len(3, code);
    header(15, len, out);
    bytes(2, message.as_bytes(), out);
    varint(3, code, out);
    // Last, where prost puts it (field 16).
    fixed32(16, flags(s.parent_is_remote), out);
}

/// Protobuf field writers with proto3's defaults left out, as prost writes them.
pub(crate) mod wire {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

    /// A length-delimited field's tag and length.
    pub fn header(tag: u32, len: usize, out: &mut Vec<u8>) {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(len as u64, out);
    }

    /// Bytes of a length-delimited field with `len` bytes of content.
    pub fn header_len(tag: u32, len: usize) -> usize {
        key_len(tag) + encoded_len_varint(len as u64) + len
    }

    /// A bytes or string field; nothing when empty.
    pub fn bytes(tag: u32, b: &[u8], out: &mut Vec<u8>) {
        if !b.is_empty() {
            header(tag, b.len(), out);
            out.extend_from_slice(b);
        }
    }

    pub fn bytes_len(tag: u32, b: &[u8]) -> usize {
        if b.is_empty() {
            0
        } else {
            header_len(tag, b.len())
        }
    }

    /// A varint (enum, int64) field; nothing when 0.
    pub fn varint(tag: u32, v: i64, out: &mut Vec<u8>) {
        if v != 0 {
            encode_key(tag, WireType::Varint, out);
            encode_varint(v as u64, out);
        }
    }

    pub fn varint_len(tag: u32, v: i64) -> usize {
        if v == 0 {
            0
        } else {
            key_len(tag) + encoded_len_varint(v as u64)
        }
    }

    /// A fixed64 field; nothing when 0.
    pub fn fixed64(tag: u32, v: u64, out: &mut Vec<u8>) {
        if v != 0 {
            encode_key(tag, WireType::SixtyFourBit, out);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// A fixed32 field; nothing when 0.
    pub fn fixed32(tag: u32, v: u32, out: &mut Vec<u8>) {
        if v != 0 {
            encode_key(tag, WireType::ThirtyTwoBit, out);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    pub fn fixed32_len(tag: u32, v: u32) -> usize {
        if v == 0 { 0 } else { key_len(tag) + 4 }
    }

    /// An `AnyValue`'s one value.
    #[derive(Clone, Copy)]
    pub enum Any<'a> {
        Str(&'a [u8]),
        Int(i64),
        Bool(bool),
    }

    /// A `KeyValue` message field: key (1), value (2, an `AnyValue` whose `oneof` is
    /// written even when it holds a default).
    pub fn key_value(tag: u32, key: &[u8], value: Any<'_>, out: &mut Vec<u8>) {
        let any_len = match value {
            Any::Str(s) => header_len(1, s.len()),
            Any::Bool(_) => key_len(2) + 1,
            Any::Int(i) => key_len(3) + encoded_len_varint(i as u64),
        };
        header(tag, bytes_len(1, key) + header_len(2, any_len), out);
        bytes(1, key, out);
        header(2, any_len, out);
        match value {
            Any::Str(s) => {
                header(1, s.len(), out);
                out.extend_from_slice(s);
            }
            Any::Bool(b) => {
                encode_key(2, WireType::Varint, out);
                encode_varint(u64::from(b), out);
            }
            Any::Int(i) => {
                encode_key(3, WireType::Varint, out);
                encode_varint(i as u64, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prost::Message as _;

    use super::*;
    use crate::trace::Execution;

    fn span(kind: SpanKind, status: SpanStatus) -> Span {
        let t =
            |s: i64| DateTime::from_timestamp(1_764_000_000 + s, 123_456_000).unwrap_or_default();
        Span {
            span_id: "b7ad6b7169203331".into(),
            parent_span_id: Some("00f067aa0ba902b7".into()),
            parent_is_remote: true,
            flags: 1,
            name: "task:report".into(),
            kind,
            start: t(0),
            end: Some(t(2)),
            waiting_since: None,
            status,
            status_message: Some("exit status 3: broken".into()),
            outcome: "failed",
            execution: Arc::new(Execution {
                id: uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
                task: "report".into(),
                queue: "q1".into(),
                status: "failed".into(),
                priority: -3,
                max_attempts: 0,
                parent_execution_id: Some(uuid::Uuid::from_u128(7)),
                flags: 1,
            }),
            attempt: Some(2),
            exit_code: Some(3),
            links: vec!["00f067aa0ba902b7".into(), "0000000000000001".into()],
        }
    }

    /// Decodes what `encode_proto_span` wrote and compares it with `to_proto_span`.
    fn agree(s: &Span) {
        let now = DateTime::from_timestamp(1_764_000_100, 0).unwrap_or_default();
        let trace_id = "0af7651916cd43dd8448eb211c80319c";
        let mut out = vec![0xAA];
        encode_proto_span(trace_id, now, s, &mut out);
        assert_eq!(out[0], 0xAA, "appends");
        let decoded = opentelemetry_proto::tonic::trace::v1::Span::decode(&out[1..])
            .expect("a valid protobuf Span");
        let built = to_proto_span(trace_id, now, s);
        assert_eq!(decoded, built);
        assert_eq!(
            out[1..],
            built.encode_to_vec()[..],
            "the same bytes as prost"
        );
    }

    #[test]
    fn the_direct_encoding_is_the_built_message() {
        agree(&span(SpanKind::Consumer, SpanStatus::Error));
        let mut s = span(SpanKind::Producer, SpanStatus::Ok);
        s.parent_span_id = None;
        s.parent_is_remote = false;
        s.links.clear();
        agree(&s);
        // Still running: ends at `now`, marked in progress.
        let mut s = span(SpanKind::Internal, SpanStatus::Unset);
        s.end = None;
        s.status_message = None;
        s.name = "task.step:build".into();
        agree(&s);
        // An all-zero parent is no parent; an error without a message; flags 0.
        let mut s = span(SpanKind::Consumer, SpanStatus::Error);
        s.parent_span_id = Some("0000000000000000".into());
        s.status_message = None;
        s.flags = 0;
        s.attempt = Some(0);
        agree(&s);
    }
}
