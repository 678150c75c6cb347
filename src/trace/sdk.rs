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
