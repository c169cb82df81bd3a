//! A raw key reaches no log line and no database row.

use apikeyd::grpc::pb;
use apikeyd::grpc::pb::key_service_client::KeyServiceClient;
use apikeyd::grpc::pb::validation_service_client::ValidationServiceClient;
use sea_orm::{ConnectionTrait, Database, Statement};

use crate::helpers::{
    Backend, ServerProcess, connect, create_request, fresh_postgres_database, with_bearer,
};

async fn no_raw_key_in_logs_or_rows(backend: Backend) {
    let data_dir = tempfile::tempdir().unwrap();
    let database_url = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(fresh_postgres_database().await),
    };
    let mut env = vec![("APIKEYD_LOG", "debug")];
    if let Some(url) = &database_url {
        env.push(("APIKEYD_DATABASE_URL", url));
    }
    let server = ServerProcess::start(data_dir.path(), &env);
    let root_key = std::fs::read_to_string(data_dir.path().join("bootstrap-root-key"))
        .unwrap()
        .trim()
        .to_owned();
    let channel = connect(server.addr).await;
    let mut keys = KeyServiceClient::new(channel.clone());
    let mut validation = ValidationServiceClient::new(channel);

    let created = keys
        .create_key(with_bearer(
            create_request("user_1", &["posts:read"]),
            &root_key,
        ))
        .await
        .unwrap()
        .into_inner();
    let id = created.api_key.unwrap().id;
    let mut secrets = vec![created.key.clone(), root_key.clone()];
    for required in [
        vec!["posts:read".to_owned()],
        vec!["posts:write".to_owned()],
    ] {
        validation
            .validate(pb::ValidateRequest {
                key: created.key.clone(),
                required_scopes: required,
                context: None,
                cost: 0,
            })
            .await
            .unwrap();
    }
    let rotated = keys
        .rotate_key(with_bearer(
            pb::RotateKeyRequest {
                id,
                grace_period: None,
            },
            &root_key,
        ))
        .await
        .unwrap()
        .into_inner();
    secrets.push(rotated.key.clone());
    validation
        .validate(pb::ValidateRequest {
            key: rotated.key.clone(),
            ..Default::default()
        })
        .await
        .unwrap();

    let (status, log) = server.terminate();
    assert!(status.success());
    let log = log.join("\n");
    assert!(log.contains("apikeyd is serving"), "the log was captured");
    let database_text = database_dump(backend, data_dir.path(), database_url.as_deref()).await;
    assert!(
        database_text.contains("argon2id"),
        "the dump holds the hashes"
    );
    for secret in &secrets {
        // The secret part: everything after the public "<prefix><id>_".
        let secret_part = &secret[secret.rfind('_').unwrap() + 1..];
        assert!(!log.contains(secret_part), "a secret reached the log");
        assert!(
            !database_text.contains(secret_part),
            "a secret reached the database"
        );
    }
}

/// Every byte of every row: the SQLite files as they are on disk, or each
/// PostgreSQL row as text.
async fn database_dump(backend: Backend, data_dir: &std::path::Path, url: Option<&str>) -> String {
    match backend {
        Backend::Sqlite => {
            let mut text = String::new();
            for entry in std::fs::read_dir(data_dir).unwrap() {
                let path = entry.unwrap().path();
                if path
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("apikeyd.db")
                {
                    text.push_str(&String::from_utf8_lossy(&std::fs::read(path).unwrap()));
                }
            }
            text
        }
        Backend::Postgres => {
            let db = Database::connect(url.unwrap()).await.unwrap();
            let mut text = String::new();
            for table in ["api_keys", "root_keys", "key_owners"] {
                let rows = db
                    .query_all(Statement::from_string(
                        db.get_database_backend(),
                        format!("SELECT t::text AS row FROM {table} t"),
                    ))
                    .await
                    .unwrap();
                for row in rows {
                    text.push_str(&row.try_get::<String>("", "row").unwrap());
                }
            }
            text
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_no_raw_key_reaches_a_log_line_or_a_row() {
    no_raw_key_in_logs_or_rows(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_no_raw_key_reaches_a_log_line_or_a_row() {
    no_raw_key_in_logs_or_rows(Backend::Postgres).await;
}
