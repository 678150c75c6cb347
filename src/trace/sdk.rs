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

use super::otlp::{export_attributes, export_end};
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
