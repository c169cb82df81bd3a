//! The bootstrap root key: written to an owner-only file before it is
//! committed; an existing file (or one that cannot be written) stops the
//! first start and leaves the database without a root key.

use std::os::unix::fs::PermissionsExt;

use apikeyd::grpc::pb;
use apikeyd::startup::Application;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};

use crate::helpers::{Backend, fresh_postgres_database, spawn_app, test_settings};
use crate::root_keys::root_key_client;

async fn root_key_rows(database_url: Option<&str>, data_dir: &std::path::Path) -> i64 {
    let db: DatabaseConnection = match database_url {
        Some(url) => Database::connect(url).await.unwrap(),
        None => Database::connect(format!(
            "sqlite://{}",
            data_dir.join("apikeyd.db").display()
        ))
        .await
        .unwrap(),
    };
    let row = db
        .query_one(Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM root_keys",
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get::<i64>("", "n").unwrap()
}

async fn database_for(backend: Backend) -> Option<String> {
    match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(fresh_postgres_database().await),
    }
}

async fn an_existing_bootstrap_file_stops_the_first_start(backend: Backend) {
    let data_dir = tempfile::tempdir().unwrap();
    let file = data_dir.path().join("bootstrap-root-key");
    std::fs::write(&file, "rk_an_older_key\n").unwrap();
    let database_url = database_for(backend).await;

    let built = Application::build(test_settings(data_dir.path(), database_url.clone())).await;

    let message = format!("{:#}", built.err().expect("the start is refused"));
    assert!(
        message.contains("already exists") && message.contains("move it away"),
        "{message}"
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "rk_an_older_key\n",
        "never overwritten"
    );
    assert_eq!(
        root_key_rows(database_url.as_deref(), data_dir.path()).await,
        0
    );
}

async fn the_bootstrap_file_is_owner_only_and_its_creation_audited(backend: Backend) {
    let app = spawn_app(backend).await;
    let file = app.data_dir.path().join("bootstrap-root-key");

    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    let leftovers: Vec<_> = std::fs::read_dir(app.data_dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    let listed = root_key_client(&app)
        .await
        .list_root_keys(app.authed(pb::ListRootKeysRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .root_keys;

    assert_eq!(mode & 0o777, 0o600);
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].name.as_str(), listed[0].permissions.as_slice()),
        ("bootstrap", ["*".to_owned()].as_slice())
    );
    assert!(app.root_key.starts_with(&listed[0].prefix));
}

/// PostgreSQL only: with SQLite the database itself lives in the data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_file_that_cannot_be_written_commits_no_root_key() {
    let parent = tempfile::tempdir().unwrap();
    let not_a_directory = parent.path().join("data");
    std::fs::write(
        &not_a_directory,
        "a file where the data directory should be",
    )
    .unwrap();
    let database_url = fresh_postgres_database().await;

    let built =
        Application::build(test_settings(&not_a_directory, Some(database_url.clone()))).await;

    let message = format!("{:#}", built.err().expect("the start is refused"));
    assert!(message.contains("data directory"), "{message}");
    assert_eq!(root_key_rows(Some(&database_url), parent.path()).await, 0);
}

mod sqlite {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_existing_bootstrap_file_stops_the_first_start() {
        super::an_existing_bootstrap_file_stops_the_first_start(crate::helpers::Backend::Sqlite)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_bootstrap_file_is_owner_only_and_its_creation_audited() {
        super::the_bootstrap_file_is_owner_only_and_its_creation_audited(
            crate::helpers::Backend::Sqlite,
        )
        .await;
    }
}

mod postgres {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_existing_bootstrap_file_stops_the_first_start() {
        super::an_existing_bootstrap_file_stops_the_first_start(crate::helpers::Backend::Postgres)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_bootstrap_file_is_owner_only_and_its_creation_audited() {
        super::the_bootstrap_file_is_owner_only_and_its_creation_audited(
            crate::helpers::Backend::Postgres,
        )
        .await;
    }
}
