//! What operators see: traces joined to the caller's, metrics that move,
//! and a SIGTERM that loses no call.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use apikeyd::grpc::pb;
use apikeyd::grpc::pb::key_service_client::KeyServiceClient;
use apikeyd::grpc::pb::validation_service_client::ValidationServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;

use crate::helpers::{
    Backend, ServerProcess, connect, create_request, sample, sample_or_zero, scrape, spawn_app,
    with_bearer,
};

/// A minimal OTLP/gRPC collector that keeps every span it receives.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn start_collector() -> (std::net::SocketAddr, Collector) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let collector = Collector::default();
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, collector)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_with_the_callers_trace_id() {
    let (collector_addr, collector) = start_collector().await;
    let data_dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{collector_addr}");
    let server = ServerProcess::start(
        data_dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let root_key = std::fs::read_to_string(data_dir.path().join("bootstrap-root-key"))
        .unwrap()
        .trim()
        .to_owned();
    let key = KeyServiceClient::new(connect(server.addr).await)
        .create_key(with_bearer(create_request("traced", &["*"]), &root_key))
        .await
        .unwrap()
        .into_inner()
        .key;
    let mut request = tonic::Request::new(pb::ValidateRequest {
        key: key.clone(),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );

    let verdict = ValidationServiceClient::new(connect(server.addr).await)
        .validate(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verdict.code, pb::ValidationCode::Valid as i32);
    // SIGTERM flushes buffered spans before exit.
    let (status, _) = server.terminate();
    assert!(status.success());

    let spans = collector.spans.lock().unwrap().clone();
    let ours: Vec<&Span> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) == trace_id)
        .collect();
    let rpc = ours
        .iter()
        .find(|s| s.name == "apikeyd.v1.ValidationService/Validate")
        .unwrap_or_else(|| {
            panic!(
                "no Validate span in the caller's trace; got {:?}",
                names(&spans)
            )
        });
    assert_eq!(
        hex(&rpc.parent_span_id),
        "00f067aa0ba902b7",
        "the RPC span's parent is the caller's span"
    );
    let db = ours
        .iter()
        .find(|s| s.name == "find_key")
        .expect("a database child span");
    assert_eq!(db.parent_span_id, rpc.span_id);
    let limiter = ours
        .iter()
        .find(|s| s.name == "decide")
        .expect("a rate-limit store child span");
    assert_eq!(limiter.parent_span_id, rpc.span_id);
    let secret = &key[key.rfind('_').unwrap() + 1..];
    assert!(
        !format!("{spans:?}").contains(secret),
        "a key reached a span"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn names(spans: &[Span]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_counters_moving_after_calls() {
    let app = spawn_app(Backend::Sqlite).await;
    let validations = r#"apikeyd_validations_total{code="malformed"}"#;
    let rpcs =
        r#"apikeyd_grpc_requests_total{method="apikeyd.v1.ValidationService/Validate",code="OK"}"#;
    let denied = r#"apikeyd_grpc_requests_total{method="apikeyd.v1.KeyService/CreateKey",code="UNAUTHENTICATED"}"#;
    let before = scrape(app.http_addr).await;

    for _ in 0..3 {
        app.validate("sk_live_garbage", &[]).await;
    }
    let _ = app
        .keys
        .clone()
        .create_key(tonic::Request::new(create_request("o", &["*"])))
        .await;

    let after = scrape(app.http_addr).await;
    assert!(
        sample(&after, validations) >= sample_or_zero(&before, validations) + 3.0,
        "{after}"
    );
    assert!(
        sample(&after, rpcs) >= sample_or_zero(&before, rpcs) + 3.0,
        "{after}"
    );
    assert!(
        sample(&after, denied) >= sample_or_zero(&before, denied) + 1.0,
        "{after}"
    );
    assert!(
        after.contains("apikeyd_grpc_request_duration_seconds_bucket"),
        "latency histograms are exported"
    );
}

/// `package.Service/Method` of every RPC the server serves: its contract,
/// Envoy's, health and reflection, from their descriptor sets.
fn served_rpcs() -> Vec<String> {
    use prost::Message;
    let sets = [
        pb::FILE_DESCRIPTOR_SET,
        apikeyd::envoy::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut rpcs = Vec::new();
    for set in sets {
        for file in prost_types::FileDescriptorSet::decode(set).unwrap().file {
            for service in &file.service {
                for method in &service.method {
                    rpcs.push(format!(
                        "{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
    }
    rpcs
}

/// POSTs an empty gRPC body to `path`: every RPC answers it (most with an
/// error status), which is all a label needs.
async fn call_path(
    channel: &mut tonic::transport::Channel,
    addr: std::net::SocketAddr,
    path: &str,
) {
    use tower::Service;
    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .unwrap();
    let request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::empty())
        .unwrap();
    let response = channel.call(request).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::OK, "{path}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_served_rpc_is_counted_under_its_own_name() {
    let app = spawn_app(Backend::Sqlite).await;
    let rpcs = served_rpcs();
    assert!(rpcs.len() >= 15, "the contract's RPCs: {rpcs:?}");
    let series = |method: &str| format!("apikeyd_grpc_requests_total{{method=\"{method}\",");
    let calls_of = |page: &str, method: &str| -> f64 {
        let prefix = series(method);
        page.lines()
            .filter_map(|line| line.strip_prefix(prefix.as_str()))
            .filter_map(|rest| rest.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let before = scrape(app.http_addr).await;
    let mut channel = connect(app.addr).await;

    for rpc in &rpcs {
        call_path(&mut channel, app.addr, &format!("/{rpc}")).await;
    }
    call_path(
        &mut channel,
        app.addr,
        "/apikeyd.v1.KeyService/NoSuchMethod",
    )
    .await;

    let after = scrape(app.http_addr).await;
    for rpc in &rpcs {
        assert!(
            calls_of(&after, rpc) >= calls_of(&before, rpc) + 1.0,
            "{rpc} has no series of its own:\n{after}"
        );
    }
    assert!(
        calls_of(&after, "other") >= calls_of(&before, "other") + 1.0,
        "a path outside the contract is `other`:\n{after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_load_loses_no_call_and_exits_zero() {
    let _alone = crate::helpers::measuring_alone().await;
    let data_dir = tempfile::tempdir().unwrap();
    // A costly hash (19 MiB, 8 passes: over 100 ms) on one argon2 thread
    // makes each CreateKey slow enough that all 30 are queued before the
    // first few are done, however slowly the calls arrive.
    let mut server = ServerProcess::start(
        data_dir.path(),
        &[
            ("APIKEYD_API_KEY_ARGON2_MEMORY_KIB", "19456"),
            ("APIKEYD_API_KEY_ARGON2_ITERATIONS", "8"),
            ("APIKEYD_ARGON2_MAX_IN_FLIGHT", "1"),
            ("APIKEYD_SHUTDOWN_GRACE_SECS", "60"),
        ],
    );
    let root_key = std::fs::read_to_string(data_dir.path().join("bootstrap-root-key"))
        .unwrap()
        .trim()
        .to_owned();
    let channel = connect(server.addr).await;
    let calls: Vec<_> = (0..30)
        .map(|i| {
            let mut client = KeyServiceClient::new(channel.clone());
            let request = with_bearer(create_request(&format!("owner_{i}"), &["*"]), &root_key);
            tokio::spawn(async move { client.create_key(request).await })
        })
        .collect();
    // Every call holds or awaits an argon2 slot once the queue is this deep,
    // so all of them are in flight when the signal lands.
    let mut in_flight = false;
    for _ in 0..2_000 {
        // The gauge appears with the first queued argon2 run.
        if sample_or_zero(
            &scrape(server.http_addr).await,
            "apikeyd_argon2_queue_depth",
        ) >= 30.0
        {
            in_flight = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(in_flight, "the calls never were all in flight at once");

    server.signal_terminate();
    let mut outcomes = Vec::new();
    for call in calls {
        outcomes.push(call.await.unwrap());
    }
    let status = tokio::task::spawn_blocking(move || {
        let status = server.wait();
        (status, server.log())
    })
    .await
    .unwrap();

    let failures: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(failures.is_empty(), "in-flight calls failed: {failures:?}");
    assert!(status.0.success(), "exit status {:?}", status.0);
    assert!(
        status.1.iter().any(|line| line.contains("\"stopped\"")),
        "the drain finished: {:?}",
        status.1
    );
}

#[test]
fn config_check_explains_what_is_wrong_and_never_prints_a_password() {
    let run = |env: &[(&str, &str)]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_apikeyd"));
        command.args(["config", "check"]).env_clear();
        for (name, value) in env {
            command.env(name, value);
        }
        command.output().expect("run apikeyd config check")
    };

    let good = run(&[("APIKEYD_DATABASE_URL", "postgres://app:hunter2@db/keys")]);
    let bad = run(&[
        ("APIKEYD_MAX_ACTIVE_KEYS_PER_OWNER", "0"),
        ("APIKEYD_DATABASE_URL", "mysql://app:hunter2@db/keys"),
    ]);

    assert!(good.status.success());
    let described = String::from_utf8_lossy(&good.stdout);
    assert!(
        described.contains("postgres://app:***@db/keys"),
        "{described}"
    );
    assert_eq!(bad.status.code(), Some(2));
    let explained = String::from_utf8_lossy(&bad.stderr);
    assert!(
        explained.contains("max_active_keys_per_owner") && explained.contains("database_url"),
        "{explained}"
    );
    for output in [&good.stdout, &good.stderr, &bad.stdout, &bad.stderr] {
        assert!(!String::from_utf8_lossy(output).contains("hunter2"));
    }
}
