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
    let id = |hex: &str| SpanId::from_hex(hex).unwrap_or(SpanId::INVALID).to_bytes();
    let (code, message) = status_code(s.status, s.status_message.as_deref());
    encode_span_message(
        SpanMessage {
            trace_id: TraceId::from_hex(trace_id)
                .unwrap_or(TraceId::INVALID)
                .to_bytes(),
            span_id: id(&s.span_id),
            parent: s.parent_span_id.as_deref().map(id),
            parent_is_remote: s.parent_is_remote,
            trace_flags: s.flags,
            name: [s.name.as_bytes(), b""],
            kind: s.kind,
            start: nanos(s.start),
            end: nanos(export_end(s, now)),
            links: s.links.iter().map(|l| id(l)),
            code,
            message,
        },
        |out| {
            for (key, value) in export_attributes(s) {
                attribute(key, value, out);
            }
        },
        out,
    );
}

/// Appends the OTLP protobuf `Span` message of one attempt as the worker settles it:
/// the message [`encode_proto_span`] writes for [`super::attempt_span`]'s span, written
/// from the attempt's parts without building that span (its strings and ids).
pub fn encode_attempt_span(p: &super::AttemptParts<'_>, head: &mut AttemptHead, out: &mut Vec<u8>) {
    let status = super::attempt_status(p.outcome);
    let (code, message) = status_code(status, p.message.as_deref());
    let producer = p.producer.parent_id.to_bytes();
    encode_span_message(
        SpanMessage {
            trace_id: p.producer.trace_id.to_bytes(),
            span_id: p.span_id.to_bytes(),
            parent: Some(producer),
            parent_is_remote: true,
            trace_flags: p.producer.flags.defined().to_u8(),
            name: [b"task:", p.task.as_bytes()],
            kind: SpanKind::Consumer,
            start: nanos(p.start),
            end: nanos(p.end.max(p.start)),
            links: std::iter::once(producer),
            code,
            message,
        },
        |out| {
            // `Span::attributes` of a consumer span, in its order (a test holds the
            // two to the same bytes): the queue's and task's part, encoded once.
            use wire::{Any, key_value};
            out.extend_from_slice(head.get(p.queue, p.task));
            let mut uuid = [0u8; uuid::fmt::Hyphenated::LENGTH];
            let id = p
                .execution_id
                .hyphenated()
                .encode_lower(&mut uuid)
                .as_bytes();
            key_value(9, b"messaging.message.id", Any::Str(id), out);
            key_value(9, b"pgconductor.execution_id", Any::Str(id), out);
            if let Some(parent) = p.parent_execution_id {
                attribute(
                    "pgconductor.parent_execution_id",
                    AttrValue::Uuid(parent),
                    out,
                );
            }
            key_value(9, b"pgconductor.attempt", Any::Int(p.attempt.into()), out);
            key_value(
                9,
                b"pgconductor.attempt.outcome",
                Any::Str(p.outcome.as_bytes()),
                out,
            );
            if status == SpanStatus::Error {
                key_value(9, b"error.type", Any::Str(p.outcome.as_bytes()), out);
            }
        },
        out,
    );
}

/// The attributes an attempt's span shares with every attempt of the same queue and
/// task, encoded for the last (queue, task) asked for: a worker settles long runs of
/// attempts of one task, and writing these five attributes was most of what encoding
/// its spans cost.
#[derive(Debug, Default)]
pub struct AttemptHead {
    queue: String,
    task: String,
    bytes: Vec<u8>,
}

impl AttemptHead {
    /// The encoded attributes of (`queue`, `task`).
    fn get(&mut self, queue: &str, task: &str) -> &[u8] {
        if self.bytes.is_empty() || self.queue != queue || self.task != task {
            self.queue.clear();
            self.queue.push_str(queue);
            self.task.clear();
            self.task.push_str(task);
            self.bytes.clear();
            for (key, value) in [
                ("messaging.system", "pgconductor"),
                ("messaging.operation.type", "process"),
                ("messaging.destination.name", queue),
                ("pgconductor.task", task),
                ("pgconductor.queue", queue),
            ] {
                attribute(key, AttrValue::Str(value), &mut self.bytes);
            }
        }
        &self.bytes
    }
}

/// What an OTLP `Span` message holds besides its attributes, as bytes and numbers.
struct SpanMessage<'a, L> {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    /// An all-zero parent is written as none.
    parent: Option<[u8; 8]>,
    parent_is_remote: bool,
    trace_flags: u8,
    /// The name, in two pieces written one after the other.
    name: [&'a [u8]; 2],
    kind: SpanKind,
    start: u64,
    end: u64,
    /// The span ids of the links (all in the same trace, none remote).
    links: L,
    /// The status code (0 unset, 1 ok, 2 error) and message.
    code: i64,
    message: &'a str,
}

/// OTLP's status code (0 unset, 1 ok, 2 error) and message: only an error keeps its
/// message.
fn status_code(status: SpanStatus, message: Option<&str>) -> (i64, &str) {
    match status {
        SpanStatus::Error => (2, message.unwrap_or_default()),
        SpanStatus::Ok => (1, ""),
        SpanStatus::Unset => (0, ""),
    }
}

/// One attribute as a `KeyValue` field of a `Span` (9).
#[inline]
fn attribute(key: &str, value: AttrValue<'_>, out: &mut Vec<u8>) {
    use wire::{Any, key_value};
    let mut uuid = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let value = match value {
        AttrValue::Str(v) => Any::Str(v.as_bytes()),
        AttrValue::Uuid(u) => Any::Str(u.hyphenated().encode_lower(&mut uuid).as_bytes()),
        AttrValue::Int(i) => Any::Int(i),
        AttrValue::Bool(b) => Any::Bool(b),
    };
    key_value(9, key.as_bytes(), value, out);
}

/// Writes a `Span` message's fields in prost's order; `attributes` writes field 9.
fn encode_span_message<L: Iterator<Item = [u8; 8]>>(
    m: SpanMessage<'_, L>,
    attributes: impl FnOnce(&mut Vec<u8>),
    out: &mut Vec<u8>,
) {
    use wire::*;
    // The trace flags, with "whether the parent is remote" known (OTLP's span flags).
    let flags = |remote: bool| {
        let mut f = u32::from(m.trace_flags) | 0x100;
        if remote {
            f |= 0x200;
        }
        f
    };
    bytes(1, &m.trace_id, out);
    bytes(2, &m.span_id, out);
    if let Some(parent) = m.parent
        && parent.iter().any(|b| *b != 0)
    {
        bytes(4, &parent, out);
    }
    let name_len = m.name[0].len() + m.name[1].len();
    if name_len > 0 {
        header(5, name_len, out);
        out.extend_from_slice(m.name[0]);
        out.extend_from_slice(m.name[1]);
    }
    varint(
        6,
        match m.kind {
            SpanKind::Internal => 1,
            SpanKind::Producer => 4,
            SpanKind::Consumer => 5,
        },
        out,
    );
    fixed64(7, m.start, out);
    fixed64(8, m.end, out);
    attributes(out);
    for link_id in m.links {
        let link_flags = flags(false);
        // Link: trace_id (1), span_id (2), flags (6).
        let len = bytes_len(1, &m.trace_id) + bytes_len(2, &link_id) + fixed32_len(6, link_flags);
        header(13, len, out);
        bytes(1, &m.trace_id, out);
        bytes(2, &link_id, out);
        fixed32(6, link_flags, out);
    }
    // Status: message (2), code (3); always present.
    let len = bytes_len(2, m.message.as_bytes()) + varint_len(3, m.code);
    header(15, len, out);
    bytes(2, m.message.as_bytes(), out);
    varint(3, m.code, out);
    // Last, where prost puts it (field 16).
    fixed32(16, flags(m.parent_is_remote), out);
}

/// Protobuf field writers with proto3's defaults left out, as prost writes them.
pub(crate) mod wire {
    use prost::encoding::{WireType, encoded_len_varint, key_len};

    /// A varint, written here rather than by prost's `encode_varint` (not inlined, and
    /// checking the buffer's room byte by byte): a live attempt span writes some forty.
    #[inline]
    fn put_varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// A field's key (its tag and wire type).
    #[inline]
    fn put_key(tag: u32, wire_type: WireType, out: &mut Vec<u8>) {
        put_varint((u64::from(tag) << 3) | wire_type as u64, out);
    }

    /// A length-delimited field's tag and length.
    #[inline]
    pub fn header(tag: u32, len: usize, out: &mut Vec<u8>) {
        put_key(tag, WireType::LengthDelimited, out);
        put_varint(len as u64, out);
    }

    /// Bytes of a length-delimited field with `len` bytes of content.
    #[inline]
    pub fn header_len(tag: u32, len: usize) -> usize {
        key_len(tag) + encoded_len_varint(len as u64) + len
    }

    /// A bytes or string field; nothing when empty.
    #[inline]
    pub fn bytes(tag: u32, b: &[u8], out: &mut Vec<u8>) {
        if !b.is_empty() {
            header(tag, b.len(), out);
            out.extend_from_slice(b);
        }
    }

    #[inline]
    pub fn bytes_len(tag: u32, b: &[u8]) -> usize {
        if b.is_empty() {
            0
        } else {
            header_len(tag, b.len())
        }
    }

    /// A varint (enum, int64) field; nothing when 0.
    #[inline]
    pub fn varint(tag: u32, v: i64, out: &mut Vec<u8>) {
        if v != 0 {
            put_key(tag, WireType::Varint, out);
            put_varint(v as u64, out);
        }
    }

    #[inline]
    pub fn varint_len(tag: u32, v: i64) -> usize {
        if v == 0 {
            0
        } else {
            key_len(tag) + encoded_len_varint(v as u64)
        }
    }

    /// A fixed64 field; nothing when 0.
    #[inline]
    pub fn fixed64(tag: u32, v: u64, out: &mut Vec<u8>) {
        if v != 0 {
            put_key(tag, WireType::SixtyFourBit, out);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// A fixed32 field; nothing when 0.
    #[inline]
    pub fn fixed32(tag: u32, v: u32, out: &mut Vec<u8>) {
        if v != 0 {
            put_key(tag, WireType::ThirtyTwoBit, out);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    #[inline]
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
    #[inline]
    pub fn key_value(tag: u32, key: &[u8], value: Any<'_>, out: &mut Vec<u8>) {
        // The common case, a short key and string with a one-byte field key: every
        // length fits one byte, and the message is four pieces copied in.
        if let Any::Str(s) = value
            && tag < 16
            && key.len() + s.len() + 6 < 128
        {
            let any_len = 2 + s.len();
            let kv_len = 2 + key.len() + 2 + any_len;
            let ld = WireType::LengthDelimited as u8;
            out.reserve(2 + kv_len);
            out.extend_from_slice(&[
                (tag as u8) << 3 | ld,
                kv_len as u8,
                1 << 3 | ld,
                key.len() as u8,
            ]);
            out.extend_from_slice(key);
            out.extend_from_slice(&[2 << 3 | ld, any_len as u8, 1 << 3 | ld, s.len() as u8]);
            out.extend_from_slice(s);
            return;
        }
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
                put_key(2, WireType::Varint, out);
                put_varint(u64::from(b), out);
            }
            Any::Int(i) => {
                put_key(3, WireType::Varint, out);
                put_varint(i as u64, out);
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
    fn an_attempt_is_encoded_as_its_built_span_would_be() {
        let t = |s: i64| DateTime::from_timestamp(1_764_000_000 + s, 5_000).unwrap_or_default();
        let producer = crate::traceparent::TraceParent::parse(
            "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01",
        )
        .expect("a valid traceparent");
        // Not sampled, and flag bits the specification leaves undefined (stored by
        // another producer): both encodings clear them.
        let unsampled = crate::traceparent::TraceParent::parse(
            "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-fc",
        )
        .expect("a valid traceparent");
        let mut head = AttemptHead::default();
        let outcomes = [
            "completed",
            "failed",
            "timed_out",
            "released",
            "cancelled",
            "lost",
        ];
        for (i, outcome) in outcomes.into_iter().enumerate() {
            for variant in 0..4 {
                let parts = || super::super::AttemptParts {
                    producer: if variant == 3 { &unsampled } else { &producer },
                    span_id: crate::traceparent::SpanId::from_hex("b7ad6b7169203331")
                        .expect("a span id"),
                    execution_id: uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
                    task: if variant == 2 { "" } else { "report" },
                    queue: if variant == 3 { "q2" } else { "q1" },
                    parent_execution_id: (variant == 1).then(|| uuid::Uuid::from_u128(7)),
                    execution_status: "pending",
                    attempt: i32::try_from(i).unwrap_or(0) + 1,
                    start: t(0),
                    // An end before the start (clocks) ends at the start.
                    end: if variant == 2 { t(-1) } else { t(2) },
                    outcome,
                    message: (variant != 1).then(|| format!("exit status {i}: broken")),
                };
                let (trace_id, span) = super::super::attempt_span(parts());
                let now = t(100);
                let mut built = Vec::new();
                encode_proto_span(&trace_id, now, &span, &mut built);
                let mut direct = vec![0xAA];
                encode_attempt_span(&parts(), &mut head, &mut direct);
                assert_eq!(direct[0], 0xAA, "appends");
                assert_eq!(
                    direct[1..],
                    built[..],
                    "outcome {outcome}, variant {variant}"
                );
                agree(&span);
            }
        }
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
