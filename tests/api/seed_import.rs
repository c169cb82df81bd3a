//! Issue 13's "done when": the seed design's store on PostgreSQL (its
//! Prisma tables, keys made its way, revoked and expired ones, usage rows),
//! imported with the real `apikeyd import --from-seed … --usage`; every
//! original key then validates over gRPC with the answer the seed gave it,
//! and a second import changes nothing.

use std::process::Output;

use apikeyd::config::RedisUrl;
use apikeyd::grpc::pb::{self, ValidationCode};
use chrono::{Duration, NaiveDateTime, Utc};
use sea_orm::sqlx::{self, Connection, PgConnection};

use crate::helpers::{Backend, TestApp, code_of, fresh_postgres_database, spawn_app_with};
use crate::imported_keys::{seed_key, sha256_hex};
use crate::limiter_harness::{shared_redis_url, unique};

/// The seed's tables as Prisma makes them.
pub const SEED_SCHEMA: &str = include_str!("../fixtures/seed-prisma-schema.sql");

/// A key as the seed's `generateApiKey` made it, and its row's id.
pub struct SeedKey {
    pub key: String,
    pub id: String,
}

/// A seed row's settings, for [`insert_seed_key`].
#[derive(Default)]
pub struct SeedRow<'a> {
    pub user: &'a str,
    pub scopes: &'a [&'a str],
    pub expires_at: Option<NaiveDateTime>,
    pub last_used_at: Option<NaiveDateTime>,
    pub revoked_at: Option<NaiveDateTime>,
    /// `sk_test_` instead of `sk_live_`.
    pub test: bool,
}

/// Creates the seed's schema in a fresh database; returns its URL and a connection.
pub async fn seed_database(users: &[&str]) -> (String, PgConnection) {
    let url = fresh_postgres_database().await;
    let mut connection = PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(SEED_SCHEMA)
        .execute(&mut connection)
        .await
        .unwrap();
    for user in users {
        sqlx::query(r#"INSERT INTO "User" ("id", "email") VALUES ($1, $2)"#)
            .bind(user)
            .bind(format!("{user}@example.com"))
            .execute(&mut connection)
            .await
            .unwrap();
    }
    (url, connection)
}

/// Inserts a key made the seed's way: the key is `sk_live_` and 32 random
/// bytes in hex, the row holds its SHA-256 hex and its first 12 characters.
pub async fn insert_seed_key(connection: &mut PgConnection, row: SeedRow<'_>) -> SeedKey {
    let mut key = seed_key();
    if row.test {
        key = key.replacen("sk_live_", "sk_test_", 1);
    }
    let id = unique("c").replace('-', "");
    let now = Utc::now().naive_utc();
    sqlx::query(
        r#"INSERT INTO "ApiKey" ("id", "name", "key", "prefix", "userId", "scopes",
               "expiresAt", "lastUsedAt", "revokedAt", "createdAt", "updatedAt")
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)"#,
    )
    .bind(&id)
    .bind("Production integration")
    .bind(sha256_hex(&key))
    .bind(&key[..12])
    .bind(row.user)
    .bind(row.scopes.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    .bind(row.expires_at)
    .bind(row.last_used_at)
    .bind(row.revoked_at)
    .bind(now)
    .execute(&mut *connection)
    .await
    .unwrap();
    SeedKey { key, id }
}

async fn insert_usage(
    connection: &mut PgConnection,
    key: &SeedKey,
    status: i32,
    at: NaiveDateTime,
) {
    sqlx::query(
        r#"INSERT INTO "ApiKeyUsage" ("id", "keyId", "endpoint", "method", "status", "ip", "userAgent", "createdAt")
           VALUES ($1, $2, '/api/v1/posts', 'GET', $3, '203.0.113.7', 'seed-client/1.0', $4)"#,
    )
    .bind(unique("u"))
    .bind(&key.id)
    .bind(status)
    .bind(at)
    .execute(connection)
    .await
    .unwrap();
}

/// Runs the real `apikeyd import` against `app`'s database and Redis.
fn run_import(app: &TestApp, prefix: &str, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_apikeyd"))
        .arg("import")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("APIKEYD_DATA_DIR", app.data_dir.path())
        .env("APIKEYD_DATABASE_URL", app.database_url.as_deref().unwrap())
        .env("APIKEYD_REDIS_URL", shared_redis_url())
        .env("APIKEYD_REDIS_KEY_PREFIX", prefix)
        .output()
        .expect("run apikeyd import")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The seed's rows, as a fingerprint: an import must leave it as it was.
async fn fingerprint(connection: &mut PgConnection) -> String {
    sqlx::query_scalar(
        r#"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))
           FROM (SELECT * FROM "ApiKey") t"#,
    )
    .fetch_one(connection)
    .await
    .unwrap()
}

async fn owners_keys(app: &TestApp, owner: &str) -> usize {
    app.keys
        .clone()
        .list_keys(app.authed(pb::ListKeysRequest {
            owner_id: owner.into(),
            include_revoked: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .api_keys
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_store_imports_and_every_key_keeps_its_answer() {
    let (seed_url, mut seed) = seed_database(&["user_alice", "user_bob"]).await;
    let now = Utc::now().naive_utc();
    let valid = insert_seed_key(
        &mut seed,
        SeedRow {
            user: "user_alice",
            scopes: &["read:posts", "read:users"],
            expires_at: Some(now + Duration::days(30)),
            last_used_at: Some(now - Duration::hours(2)),
            ..Default::default()
        },
    )
    .await;
    let revoked = insert_seed_key(
        &mut seed,
        SeedRow {
            user: "user_alice",
            scopes: &["read:posts"],
            revoked_at: Some(now - Duration::days(1)),
            ..Default::default()
        },
    )
    .await;
    let expired = insert_seed_key(
        &mut seed,
        SeedRow {
            user: "user_bob",
            scopes: &["read:posts"],
            expires_at: Some(now - Duration::hours(1)),
            ..Default::default()
        },
    )
    .await;
    let test_key = insert_seed_key(
        &mut seed,
        SeedRow {
            user: "user_bob",
            scopes: &["*"],
            test: true,
            ..Default::default()
        },
    )
    .await;
    let wildcard = insert_seed_key(
        &mut seed,
        SeedRow {
            user: "user_bob",
            scopes: &["posts:*"],
            ..Default::default()
        },
    )
    .await;
    // The seed's default scope list, ['read'], is no scope in our grammar.
    let refused = insert_seed_key(
        &mut seed,
        SeedRow {
            user: "user_bob",
            scopes: &["read"],
            ..Default::default()
        },
    )
    .await;
    for _ in 0..3 {
        insert_usage(&mut seed, &valid, 200, now - Duration::hours(1)).await;
    }
    insert_usage(&mut seed, &valid, 403, now - Duration::minutes(30)).await;
    insert_usage(&mut seed, &valid, 200, now - Duration::days(100)).await;
    let before = fingerprint(&mut seed).await;
    let prefix = unique("apikeyd-seed");
    let prefix_for_app = prefix.clone();
    let app = spawn_app_with(Backend::Postgres, move |settings| {
        settings.redis.url = Some(RedisUrl::from(shared_redis_url().as_str()));
        settings.redis.key_prefix = prefix_for_app;
        settings.redis.timeout_ms = 2_000;
    })
    .await;

    let dry = run_import(
        &app,
        &prefix,
        &["--from-seed", &seed_url, "--usage", "--dry-run"],
    );
    assert!(
        stdout(&dry).starts_with("dry run: nothing was written"),
        "{}",
        stdout(&dry)
    );
    assert!(stdout(&dry).contains("imported 5, skipped 0 already present, refused 1"));
    assert_eq!(
        owners_keys(&app, "user_bob").await,
        0,
        "a dry run writes nothing"
    );

    let first = run_import(&app, &prefix, &["--from-seed", &seed_url, "--usage"]);

    let report = stdout(&first);
    assert_eq!(
        first.status.code(),
        Some(1),
        "a refused row fails the run: {report}"
    );
    assert!(
        report.starts_with("imported 5, skipped 0 already present, refused 1\n"),
        "{report}"
    );
    assert!(
        report.contains(&format!("  refused {}: scopes:", refused.id)),
        "{report}"
    );
    assert!(
        !report.contains(&valid.key)
            && !String::from_utf8_lossy(&first.stderr).contains(&valid.key)
    );

    let verdict = app.validate(&valid.key, &["read:posts"]).await;
    assert_eq!(code_of(&verdict), ValidationCode::Valid);
    let record = verdict.api_key.unwrap();
    assert_eq!(record.prefix, &valid.key[..12]);
    assert_eq!(record.owner_id, "user_alice");
    assert_eq!(record.metadata.get("seed_id"), Some(&valid.id));
    assert!(
        record.last_used_at.is_some(),
        "the seed's last use came along"
    );
    assert_eq!(
        code_of(&app.validate(&valid.key, &["write:posts"]).await),
        ValidationCode::InsufficientScope
    );
    assert_eq!(
        code_of(&app.validate(&revoked.key, &["read:posts"]).await),
        ValidationCode::Revoked
    );
    assert_eq!(
        code_of(&app.validate(&expired.key, &["read:posts"]).await),
        ValidationCode::Expired
    );
    let test_verdict = app.validate(&test_key.key, &["anything:at_all"]).await;
    assert_eq!(code_of(&test_verdict), ValidationCode::Valid);
    assert_eq!(
        test_verdict.api_key.unwrap().environment,
        pb::Environment::Test as i32
    );
    assert!(app.validate(&wildcard.key, &["posts:delete"]).await.valid);
    assert_eq!(
        code_of(&app.validate(&wildcard.key, &["users:read"]).await),
        ValidationCode::InsufficientScope
    );
    assert_eq!(
        code_of(&app.validate(&refused.key, &[]).await),
        ValidationCode::NotFound
    );

    let usage = app
        .keys
        .clone()
        .get_key_usage(app.authed(pb::GetKeyUsageRequest {
            id: record.id.clone(),
            granularity: pb::UsageGranularity::Day as i32,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let count = |code: ValidationCode| -> u64 {
        usage
            .buckets
            .iter()
            .flat_map(|b| &b.counts)
            .filter(|c| c.code == code as i32)
            .map(|c| c.count)
            .sum()
    };
    // Three valid and one 403 from the seed (the row 100 days old is past
    // the retention), and the two validations above.
    assert_eq!(count(ValidationCode::Valid), 3 + 1);
    assert_eq!(count(ValidationCode::InsufficientScope), 1 + 1);
    let from_seed = usage
        .recent_requests
        .iter()
        .filter(|r| r.user_agent == "seed-client/1.0")
        .count();
    assert_eq!(from_seed, 4, "{:?}", usage.recent_requests);

    let second = run_import(&app, &prefix, &["--from-seed", &seed_url, "--usage"]);

    assert!(
        stdout(&second).starts_with("imported 0, skipped 5 already present, refused 1\n"),
        "{}",
        stdout(&second)
    );
    assert_eq!(owners_keys(&app, "user_alice").await, 2);
    assert_eq!(owners_keys(&app, "user_bob").await, 3);
    let again = app
        .keys
        .clone()
        .get_key_usage(app.authed(pb::GetKeyUsageRequest {
            id: record.id.clone(),
            granularity: pb::UsageGranularity::Day as i32,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again.recent_requests.len(),
        usage.recent_requests.len(),
        "usage is not imported twice"
    );
    assert!(app.validate(&valid.key, &["read:users"]).await.valid);
    assert_eq!(
        code_of(&app.validate(&revoked.key, &[]).await),
        ValidationCode::Revoked
    );
    assert_eq!(
        fingerprint(&mut seed).await,
        before,
        "the seed's store is only read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_without_redis_is_refused_before_anything_is_read() {
    let app = spawn_app_with(Backend::Postgres, |_| {}).await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_apikeyd"))
        .args([
            "import",
            "--from-seed",
            "postgres://nobody@127.0.0.1:1/none",
            "--usage",
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("APIKEYD_DATA_DIR", app.data_dir.path())
        .env("APIKEYD_DATABASE_URL", app.database_url.as_deref().unwrap())
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--usage needs --redis-url"));
}
