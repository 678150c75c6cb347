//! A rebuilt trace as an OTLP/JSON `ExportTraceServiceRequest` (written here, following
//! the OTLP/JSON encoding rules, with no OpenTelemetry crate), and the resource exported
//! spans carry.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{AttrValue, Span, SpanKind, SpanStatus, Trace};

/// The resource every exported span carries: `service.name` from `OTEL_SERVICE_NAME`,
/// else from `OTEL_RESOURCE_ATTRIBUTES`, else `pgc`; the other
/// `OTEL_RESOURCE_ATTRIBUTES` entries as given (percent-decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Key/value pairs, `service.name` first.
    pub attributes: Vec<(String, String)>,
}

impl Resource {
    /// Reads the standard variables. A malformed `OTEL_RESOURCE_ATTRIBUTES` is discarded
    /// whole, as the specification asks, and the reason is returned as a warning.
    pub fn from_env() -> (Resource, Option<String>) {
        let service = std::env::var("OTEL_SERVICE_NAME").ok();
        let listed = std::env::var("OTEL_RESOURCE_ATTRIBUTES").ok();
        Resource::from_values(service.as_deref(), listed.as_deref())
    }

    /// [`Resource::from_env`] with the variables' values given.
    pub fn from_values(
        service_name: Option<&str>,
        resource_attributes: Option<&str>,
    ) -> (Resource, Option<String>) {
        let (mut listed, warning) = match resource_attributes.map(parse_resource_attributes) {
            None => (Vec::new(), None),
            Some(Ok(list)) => (list, None),
            Some(Err(why)) => (
                Vec::new(),
                Some(format!("ignoring OTEL_RESOURCE_ATTRIBUTES: {why}")),
            ),
        };
        let from_list = listed
            .iter()
            .position(|(k, _)| k == "service.name")
            .map(|i| listed.remove(i).1);
        let service = service_name
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .or(from_list)
            .unwrap_or_else(|| "pgc".to_string());
        let mut attributes = vec![("service.name".to_string(), service)];
        attributes.extend(listed);
        (Resource { attributes }, warning)
    }

    /// The service name.
    pub fn service_name(&self) -> &str {
        &self.attributes[0].1
    }
}

/// Parses `key1=value1,key2=value2` with percent-encoded keys and values (W3C Baggage
/// octets). Empty members are skipped; a later key replaces an earlier one.
pub(crate) fn parse_resource_attributes(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for member in s.split(',') {
        if member.trim().is_empty() {
            continue;
        }
        let (k, v) = member
            .split_once('=')
            .ok_or_else(|| format!("{member:?} is not key=value"))?;
        let k = percent_decode(k.trim())?;
        let v = percent_decode(v.trim())?;
        if k.is_empty() {
            return Err(format!("{member:?} has an empty key"));
        }
        out.retain(|(old, _)| *old != k);
        out.push((k, v));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Result<String, String> {
    let out = crate::percent::decode(s).ok_or_else(|| format!("{s:?} has a bad percent escape"))?;
    String::from_utf8(out).map_err(|_| format!("{s:?} does not decode to UTF-8"))
}

/// The end a span is exported with: its own, or the read time while it still runs.
pub(super) fn export_end(span: &Span, now: DateTime<Utc>) -> DateTime<Utc> {
    span.end.unwrap_or(now).max(span.start)
}

pub(super) fn nanos(t: DateTime<Utc>) -> u64 {
    // Times before 1970 or after 2554 cannot come from these rows' defaults; clamp.
    t.timestamp_nanos_opt()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0)
}

/// The attributes a span is exported with: its own, plus the execution's status on
/// enqueue spans and a marker on spans still in progress.
pub(super) fn export_attributes(span: &Span) -> Vec<(&'static str, AttrValue<'_>)> {
    let mut attrs = span.attributes();
    if span.kind == SpanKind::Producer {
        attrs.push((
            "pgconductor.execution.status",
            AttrValue::Str(&span.execution.status),
        ));
    }
    if span.in_progress() {
        attrs.push(("pgconductor.in_progress", AttrValue::Bool(true)));
    }
    attrs
}

fn kind_code(kind: SpanKind) -> u8 {
    // opentelemetry.proto.trace.v1.Span.SpanKind
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// The span's W3C trace flags in the low byte, `SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK`,
/// and `SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK` when the parent is a span from outside the
/// database (the caller's).
fn span_flags(span: &Span) -> u32 {
    let remote = if span.parent_is_remote { 0x200 } else { 0 };
    0x100 | remote | u32::from(span.flags)
}

/// The trace as one OTLP/JSON `ExportTraceServiceRequest` (hex ids, integer enums,
/// lowerCamelCase names, 64-bit integers as strings), ready for a collector's
/// `/v1/traces`.
pub fn otlp_json(trace: &Trace, resource: &Resource) -> Value {
    let attr = |k: &str, v: &AttrValue| {
        let value = match v {
            AttrValue::Str(s) => json!({ "stringValue": s }),
            AttrValue::Uuid(u) => json!({ "stringValue": u.to_string() }),
            AttrValue::Int(i) => json!({ "intValue": i.to_string() }),
            AttrValue::Bool(b) => json!({ "boolValue": b }),
        };
        json!({ "key": k, "value": value })
    };
    let spans: Vec<Value> = trace
        .spans
        .iter()
        .map(|s| {
            let mut span = json!({
                "traceId": trace.trace_id,
                "spanId": s.span_id,
                "name": s.name,
                "kind": kind_code(s.kind),
                "startTimeUnixNano": nanos(s.start).to_string(),
                "endTimeUnixNano": nanos(export_end(s, trace.now)).to_string(),
                "attributes": export_attributes(s).iter().map(|(k, v)| attr(k, v)).collect::<Vec<_>>(),
                "flags": span_flags(s),
                "status": match (s.status, &s.status_message) {
                    (SpanStatus::Error, Some(m)) => json!({ "code": 2, "message": m }),
                    (SpanStatus::Error, None) => json!({ "code": 2 }),
                    (SpanStatus::Ok, _) => json!({ "code": 1 }),
                    (SpanStatus::Unset, _) => json!({}),
                },
            });
            if let Some(parent) = &s.parent_span_id {
                span["parentSpanId"] = json!(parent);
            }
            if !s.links.is_empty() {
                span["links"] = s
                    .links
                    .iter()
                    .map(|l| {
                        json!({
                            "traceId": trace.trace_id,
                            "spanId": l,
                            "flags": 0x100 | u32::from(s.flags),
                        })
                    })
                    .collect();
            }
            span
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": {
                "attributes": resource.attributes.iter()
                    .map(|(k, v)| json!({ "key": k, "value": { "stringValue": v } }))
                    .collect::<Vec<_>>(),
            },
            "scopeSpans": [{
                "scope": { "name": "pgc", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans,
            }],
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_name_precedence() {
        let (r, w) = Resource::from_values(Some("api"), Some("service.name=other,team=ops"));
        assert_eq!(r.service_name(), "api");
        assert_eq!(r.attributes[1], ("team".into(), "ops".into()));
        assert!(w.is_none());
        let (r, _) = Resource::from_values(None, Some("service.name=my%20svc"));
        assert_eq!(r.service_name(), "my svc");
        let (r, _) = Resource::from_values(Some("  "), None);
        assert_eq!(r.service_name(), "pgc");
    }

    #[test]
    fn malformed_resource_attributes_are_discarded_whole() {
        let (r, w) = Resource::from_values(None, Some("service.name=a,broken,x=%zz"));
        assert_eq!(r.attributes, vec![("service.name".into(), "pgc".into())]);
        assert!(w.is_some_and(|w| w.contains("OTEL_RESOURCE_ATTRIBUTES")));
        let (_, w) = Resource::from_values(None, Some("x=%e2%28"));
        assert!(w.is_some(), "invalid UTF-8 after decoding is an error");
    }
}
