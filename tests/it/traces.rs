//! Traces and request logs (SPEC section 7): the binary, pointed by
//! `OTEL_EXPORTER_OTLP_ENDPOINT` at a tiny OTLP/HTTP receiver on loopback,
//! exports each request's span (continuing the caller's `traceparent`, with
//! the ALB's `X-Amzn-Trace-Id`) and its storage child span; the slow-request
//! log line carries the request id, the trace id and the ALB's id.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use crate::process::{Running, listening_address};
use crate::util::Client;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";
const UNSAMPLED_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const AMZN_TRACE_ID: &str = "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1";

/// A span as exported, with the resource's service name.
struct Exported {
    service: String,
    span: Span,
}

impl Exported {
    fn attribute(&self, key: &str) -> Option<String> {
        let value = self.span.attributes.iter().find(|kv| kv.key == key)?;
        match value.value.as_ref()?.value.as_ref()? {
            Value::StringValue(text) => Some(text.clone()),
            Value::IntValue(number) => Some(number.to_string()),
            other => Some(format!("{other:?}")),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Serves OTLP/HTTP on loopback: every `POST /v1/traces` body is decoded
/// and its spans sent on the channel.
async fn receive(listener: tokio::net::TcpListener, spans: mpsc::Sender<Exported>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let spans = spans.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let spans = spans.clone();
                async move {
                    assert_eq!(request.uri().path(), "/v1/traces");
                    let body = request.into_body().collect().await.unwrap().to_bytes();
                    let export = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    for resource in export.resource_spans {
                        let service = resource
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|kv| kv.key == "service.name")
                            .and_then(|kv| kv.value.as_ref()?.value.clone());
                        let service = match service {
                            Some(Value::StringValue(name)) => name,
                            _ => String::new(),
                        };
                        for scope in resource.scope_spans {
                            for span in scope.spans {
                                let service = service.clone();
                                let _ = spans.send(Exported { service, span });
                            }
                        }
                    }
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Waits until spans with each of `names` were exported; returns them all.
fn spans_named(spans: &mpsc::Receiver<Exported>, names: &[&str]) -> Vec<Exported> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut exported = Vec::new();
    while !names
        .iter()
        .all(|name| exported.iter().any(|e: &Exported| e.span.name == *name))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        exported.push(spans.recv_timeout(left).expect("spans exported in time"));
    }
    exported
}

// The request spans continue the caller's trace and carry the ALB's id;
// each has a storage child span; the log lines carry the ids.
#[test]
fn requests_are_traced_through_otlp_and_logged_with_their_ids() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (sender, spans) = mpsc::channel();
    let receiver = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(receive(listener, sender));
        address
    });
    let endpoint = format!("http://{receiver}");
    let mut running = Running::start_with_env(
        &["--bind", "127.0.0.1", "--port", "0", "--storage", "memory"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
            ("SALDOS_SLOW_REQUEST", "0ms"),
        ],
    );
    let address: SocketAddr = listening_address(&running.line_with("listening"))
        .parse()
        .unwrap();
    let traceparent = format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01");
    let headers = [
        ("Content-Type", "application/json"),
        ("traceparent", traceparent.as_str()),
        ("X-Amzn-Trace-Id", AMZN_TRACE_ID),
        ("X-Request-Id", "pedido-trazado"),
    ];
    let body = r#"{"usuario":"usuario1","monto":1}"#;
    // A caller that did not sample its trace: parent-based sampling builds
    // no span for it (sent first, so its spans would precede the others).
    let unsampled = format!("00-{UNSAMPLED_TRACE_ID}-{PARENT_SPAN_ID}-00");
    let unsampled_headers = [
        ("Content-Type", "application/json"),
        ("traceparent", unsampled.as_str()),
    ];
    runtime.block_on(async {
        let mut client = Client::connect(address).await;
        let reply = client
            .request("POST", "/pago", &unsampled_headers, Some(body))
            .await;
        assert_eq!(reply.status, 200);
        let reply = client.request("POST", "/pago", &headers, Some(body)).await;
        assert_eq!(reply.status, 200);
        let reply = client
            .request("GET", "/saldo/usuario1", &headers, None)
            .await;
        assert_eq!(reply.status, 200);
    });

    let cases = [
        ("POST /pago", "/pago", "200", "storage.debit"),
        (
            "GET /saldo/{usuario}",
            "/saldo/{usuario}",
            "200",
            "storage.saldo",
        ),
    ];
    let names: Vec<&str> = cases.iter().flat_map(|case| [case.0, case.3]).collect();
    let exported = spans_named(&spans, &names);
    assert!(
        exported
            .iter()
            .all(|e| hex(&e.span.trace_id) != UNSAMPLED_TRACE_ID),
        "a span of an unsampled trace was exported"
    );
    let named = |name| exported.iter().find(|e| e.span.name == name).unwrap();
    for (name, route, status, storage) in cases {
        let request = named(name);
        assert_eq!(request.service, "saldos");
        assert_eq!(hex(&request.span.trace_id), TRACE_ID, "{name}");
        assert_eq!(hex(&request.span.parent_span_id), PARENT_SPAN_ID, "{name}");
        let attribute = |key| request.attribute(key);
        assert_eq!(
            attribute("aws.xray.trace_id").as_deref(),
            Some(AMZN_TRACE_ID)
        );
        assert_eq!(attribute("request_id").as_deref(), Some("pedido-trazado"));
        assert_eq!(attribute("http.route").as_deref(), Some(route));
        assert_eq!(
            attribute("http.response.status_code").as_deref(),
            Some(status)
        );
        let child = named(storage);
        assert_eq!(hex(&child.span.trace_id), TRACE_ID);
        assert_eq!(child.span.parent_span_id, request.span.span_id, "{storage}");
    }

    // `--slow-request 0ms`: every request is logged, with its ids, never
    // its account.
    // (The unsampled request's line came first: it carries no trace id.)
    let line = running.line_with(r#""request_id":"pedido-trazado""#);
    assert!(line.contains("slow request"), "{line}");
    for field in [
        r#""request_id":"pedido-trazado""#,
        &format!(r#""trace_id":"{TRACE_ID}""#),
        &format!(r#""amzn_trace_id":"{AMZN_TRACE_ID}""#),
        r#""route":"/pago""#,
        r#""status":200"#,
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
    assert!(!line.contains("usuario1"), "{line}");

    running.signal("TERM");
    assert_eq!(running.exit_code_within(Duration::from_secs(10)), Some(0));
}

// SPEC section 7's request log: at `RUST_LOG=saldos=debug` each finished
// request gets one line (route, method, status, duration, request id, trace
// id when traced), never its account; at the default level none.
#[tokio::test]
async fn debug_logs_one_line_per_request() {
    for (rust_log, logged) in [("saldos=debug", true), ("info", false)] {
        let running = Running::start_with_env(
            &["--bind", "127.0.0.1", "--port", "0"],
            &[("RUST_LOG", rust_log)],
        );
        let address = listening_address(&running.line_with("listening"));
        let mut client = Client::connect(address.parse().unwrap()).await;
        for (path, id) in [
            ("/saldo/usuario1", "pedido-leido"),
            ("/nope", "pedido-perdido"),
        ] {
            let reply = client
                .request("GET", path, &[("X-Request-Id", id)], None)
                .await;
            assert_eq!(reply.header("x-request-id"), Some(id));
        }
        running.signal("TERM");
        let lines = running.lines_until("exited cleanly");
        let line_of = |id: &str| {
            let needle = format!(r#""request_id":"{id}""#);
            let found: Vec<&String> = lines.iter().filter(|line| line.contains(&needle)).collect();
            assert!(found.len() <= 1, "{rust_log}: {found:?}");
            found.first().map(|line| line.to_string())
        };
        if !logged {
            assert_eq!(line_of("pedido-leido"), None, "{rust_log}");
            continue;
        }
        let read = line_of("pedido-leido").expect("the read's line");
        for field in [
            r#""level":"DEBUG""#,
            r#""message":"request""#,
            r#""route":"/saldo/{usuario}""#,
            r#""method":"GET""#,
            r#""status":200"#,
            r#""duration_us":"#,
        ] {
            assert!(read.contains(field), "{field} in {read}");
        }
        assert!(!read.contains("usuario1"), "{read}");
        let lost = line_of("pedido-perdido").expect("the 404's line");
        assert!(lost.contains(r#""status":404"#), "{lost}");
        assert!(lost.contains(r#""route":"unmatched""#), "{lost}");
    }
}
