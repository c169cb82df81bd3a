//! Health, reflection and draining, as operators and grpcurl see them.

use std::time::Duration;

use sea_orm::{ConnectionTrait, Database};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{Backend, TestApp, connect, postgres_admin_url, spawn_app};
use crate::on_every_backend;

async fn health(app: &TestApp, service: &str) -> ServingStatus {
    let mut client = HealthClient::new(connect(app.addr).await);
    let response = client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .expect("health answers")
        .into_inner();
    ServingStatus::try_from(response.status).unwrap()
}

/// `list_services` over one version of the reflection protocol; v1 and
/// v1alpha have the same shape in different modules.
macro_rules! list_services {
    ($version:ident, $app:expr) => {{
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(connect($app.addr).await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = client
            .server_reflection_info(tokio_stream::once(request))
            .await
            .unwrap()
            .into_inner();
        match responses.message().await.unwrap().unwrap().message_response {
            Some(MessageResponse::ListServicesResponse(list)) => list
                .service
                .into_iter()
                .map(|s| s.name)
                .collect::<Vec<String>>(),
            other => panic!("unexpected reflection answer {other:?}"),
        }
    }};
}

on_every_backend! {
    async fn every_service_reports_serving(app) {
        for service in ["", "apikeyd.v1.ImportService", "apikeyd.v1.KeyService", "apikeyd.v1.RateLimitService", "apikeyd.v1.ValidationService", "envoy.service.auth.v3.Authorization", "envoy.service.ratelimit.v3.RateLimitService"] {
            assert_eq!(health(&app, service).await, ServingStatus::Serving, "{service:?}");
        }
    }

    async fn reflection_lists_our_services_and_health_in_both_versions(app) {
        let expected = ["apikeyd.v1.ImportService", "apikeyd.v1.KeyService", "apikeyd.v1.RateLimitService", "apikeyd.v1.ValidationService", "envoy.service.auth.v3.Authorization", "envoy.service.ratelimit.v3.RateLimitService", "grpc.health.v1.Health"];
        let v1 = list_services!(v1, app);
        let v1alpha = list_services!(v1alpha, app);
        for service in expected {
            assert!(v1.iter().any(|s| s == service), "v1 lacks {service}: {v1:?}");
            assert!(v1alpha.iter().any(|s| s == service), "v1alpha lacks {service}: {v1alpha:?}");
        }
    }

    async fn stopping_drains_and_returns_cleanly(app) {
        let (key, _) = app.create_key("user_1", &["*"]).await;
        assert!(app.validate(&key, &[]).await.valid);

        let stopped = app.stop().await;

        assert!(stopped.is_ok(), "{stopped:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_while_the_database_is_unreachable() {
    let app = spawn_app(Backend::Postgres).await;
    let database = url::Url::parse(app.database_url.as_ref().unwrap())
        .unwrap()
        .path()
        .trim_start_matches('/')
        .to_owned();
    let admin = Database::connect(postgres_admin_url()).await.unwrap();

    // Refuse new connections to the test database and cut the live ones.
    admin
        .execute_unprepared(&format!(
            "ALTER DATABASE {database} ALLOW_CONNECTIONS false"
        ))
        .await
        .unwrap();
    admin
        .execute_unprepared(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"
        ))
        .await
        .unwrap();
    let went_down = wait_for(&app, ServingStatus::NotServing).await;

    admin
        .execute_unprepared(&format!("ALTER DATABASE {database} ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    let came_back = wait_for(&app, ServingStatus::Serving).await;

    assert!(went_down, "health never went NOT_SERVING");
    assert!(came_back, "health never returned to SERVING");
}

async fn wait_for(app: &TestApp, status: ServingStatus) -> bool {
    for _ in 0..100 {
        if health(app, "apikeyd.v1.ValidationService").await == status {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
