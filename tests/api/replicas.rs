//! Three `apikeyd` processes sharing one Redis and one PostgreSQL database
//! count as one: limits hold exactly across replicas.

use std::time::Duration;

use apikeyd::grpc::pb::rate_limit_service_client::RateLimitServiceClient;
use apikeyd::grpc::pb::validation_service_client::ValidationServiceClient;
use apikeyd::grpc::pb::{self, RateLimitAlgorithm, ValidationCode};

use crate::helpers::{
    ServerProcess, connect, create_request, fresh_postgres_database, with_bearer,
};
use crate::limiter_harness::{check_request, concurrently, rate_limit, shared_redis_url, unique};

/// The longest window (30 days, epoch-aligned): a test never straddles its boundary.
const LONG_WINDOW_MS: u64 = 30 * 86_400_000;

struct Replicas {
    servers: Vec<ServerProcess>,
    root_key: String,
    _dirs: Vec<tempfile::TempDir>,
}

async fn start_three_replicas() -> Replicas {
    let database_url = fresh_postgres_database().await;
    let redis_url = shared_redis_url();
    let prefix = unique("apikeyd-test");
    let env = [
        ("APIKEYD_DATABASE_URL", database_url.as_str()),
        ("APIKEYD_REDIS_URL", redis_url.as_str()),
        ("APIKEYD_REDIS_KEY_PREFIX", prefix.as_str()),
        // On a loaded two-core machine answers come late; calls without a
        // deadline wait this long before failing UNAVAILABLE.
        ("APIKEYD_REDIS_TIMEOUT_MS", "2000"),
    ];
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // The first one bootstraps the root key into its data directory.
    let servers: Vec<_> = dirs
        .iter()
        .map(|d| ServerProcess::start(d.path(), &env))
        .collect();
    let root_key = std::fs::read_to_string(dirs[0].path().join("bootstrap-root-key"))
        .unwrap()
        .trim()
        .to_owned();
    Replicas {
        servers,
        root_key,
        _dirs: dirs,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_sharing_redis_hold_every_limit_exactly() {
    let test = async {
        let replicas = start_three_replicas().await;
        let mut limiters = Vec::new();
        let mut validators = Vec::new();
        for server in &replicas.servers {
            let channel = connect(server.addr).await;
            limiters.push(RateLimitServiceClient::new(channel.clone()));
            validators.push(ValidationServiceClient::new(channel));
        }

        // 300 concurrent requests, 100 per replica, against a limit of 50.
        for algorithm in [
            RateLimitAlgorithm::FixedWindow,
            RateLimitAlgorithm::SlidingWindow,
            RateLimitAlgorithm::TokenBucket,
        ] {
            let request =
                check_request("replicas", &unique("id"), 50, LONG_WINDOW_MS, algorithm, 1);
            let answers = concurrently(&limiters, 300, request).await;
            let admitted = answers.iter().filter(|a| a.allowed).count();
            assert_eq!(
                admitted, 50,
                "{algorithm:?} admits exactly its bound across replicas"
            );
        }

        // Cost above one, spread over the replicas.
        let id = unique("id");
        let costly = |cost| {
            check_request(
                "replicas",
                &id,
                10,
                LONG_WINDOW_MS,
                RateLimitAlgorithm::FixedWindow,
                cost,
            )
        };
        let mut answers = Vec::new();
        for (client, cost) in limiters.iter().zip([3, 4, 4]) {
            answers.push(
                client
                    .clone()
                    .check_rate_limit(costly(cost))
                    .await
                    .unwrap()
                    .into_inner(),
            );
        }
        let outcome: Vec<(bool, u32)> = answers.iter().map(|a| (a.allowed, a.remaining)).collect();
        assert_eq!(
            outcome,
            vec![(true, 7), (true, 3), (false, 3)],
            "3 + 4 admitted, then 4 > 3 left is denied"
        );

        // Rollover: a one-second window spent on one replica is fresh on another after it.
        let rolling = check_request(
            "replicas",
            &unique("id"),
            2,
            1_000,
            RateLimitAlgorithm::FixedWindow,
            2,
        );
        let spent = limiters[0]
            .clone()
            .check_rate_limit(rolling.clone())
            .await
            .unwrap()
            .into_inner();
        assert!(spent.allowed);
        assert!(
            !limiters[1]
                .clone()
                .check_rate_limit(rolling.clone())
                .await
                .unwrap()
                .into_inner()
                .allowed
        );
        let reset = spent.reset_at.unwrap();
        let wait = reset.seconds * 1000 + i64::from(reset.nanos) / 1_000_000
            - chrono::Utc::now().timestamp_millis();
        tokio::time::sleep(Duration::from_millis(wait.max(0) as u64 + 30)).await;
        assert!(
            limiters[2]
                .clone()
                .check_rate_limit(rolling)
                .await
                .unwrap()
                .into_inner()
                .allowed
        );

        // A key's limit through Validate, 150 calls over three replicas.
        let mut keys =
            pb::key_service_client::KeyServiceClient::new(connect(replicas.servers[1].addr).await);
        let mut request = create_request(&unique("owner"), &["*"]);
        request.rate_limits = vec![rate_limit(
            50,
            LONG_WINDOW_MS,
            RateLimitAlgorithm::FixedWindow,
        )];
        let key = keys
            .create_key(with_bearer(request, &replicas.root_key))
            .await
            .unwrap()
            .into_inner()
            .key;
        let calls: Vec<_> = (0..150)
            .map(|i| {
                let mut client = validators[i % 3].clone();
                let key = key.clone();
                tokio::spawn(async move {
                    client
                        .validate(pb::ValidateRequest {
                            key,
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                        .into_inner()
                })
            })
            .collect();
        let mut valid = 0;
        for call in calls {
            let verdict = call.await.unwrap();
            match ValidationCode::try_from(verdict.code).unwrap() {
                ValidationCode::Valid => valid += 1,
                ValidationCode::RateLimited => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            valid, 50,
            "exactly the key's limit validates across replicas"
        );
    };
    tokio::time::timeout(Duration::from_secs(180), test)
        .await
        .expect("the test finished within 3 minutes");
}
