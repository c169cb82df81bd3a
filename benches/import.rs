//! The import benchmark of issue 13: `cargo bench --bench import`.
//!
//! Fills a fresh PostgreSQL database with the seed design's tables (the
//! Prisma schema of `tests/fixtures/seed-prisma-schema.sql`) and 100,000
//! keys made its way (`sk_live_` + 64 hex, stored as the SHA-256 hex of the
//! whole key; one in ten revoked, one in ten expired, ten per user), then
//! times `apikeyd import --from-seed` into another fresh database: once
//! (everything new) and again (everything already present). It calls the
//! same code the command runs, in this process, and prints the times; it
//! asserts nothing but that the rows arrived.
//!
//! `APIKEYD_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`)
//! names the server; `APIKEYD_BENCH_IMPORT_ROWS` the number of rows. Both
//! databases are dropped at the end.

use std::time::{Duration, Instant};

use anyhow::Context;
use apikeyd::cli::ImportArgs;
use apikeyd::config::{DatabaseSettings, DatabaseUrl, Settings};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};

const SEED_SCHEMA: &str = include_str!("../tests/fixtures/seed-prisma-schema.sql");
const DEFAULT_ROWS: u64 = 100_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin_url = std::env::var("APIKEYD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let rows: u64 = match std::env::var("APIKEYD_BENCH_IMPORT_ROWS") {
        Ok(raw) => raw
            .parse()
            .context("APIKEYD_BENCH_IMPORT_ROWS is not a number")?,
        Err(_) => DEFAULT_ROWS,
    };
    let seed = Fresh::create(&admin_url, "import_seed").await?;
    let keys = Fresh::create(&admin_url, "import_keys").await?;
    let outcome = run(&seed, &keys, rows).await;
    seed.drop_now().await?;
    keys.drop_now().await?;
    outcome
}

async fn run(seed: &Fresh, keys: &Fresh, rows: u64) -> anyhow::Result<()> {
    let filled = Instant::now();
    fill_seed(&seed.connect().await?, rows).await?;
    println!(
        "seed store: {rows} keys of {} users made the seed's way in {:.1} s",
        rows.div_ceil(10),
        filled.elapsed().as_secs_f64()
    );
    let data_dir = tempfile::tempdir()?;
    let settings = || Settings {
        database: DatabaseSettings {
            data_dir: data_dir.path().to_owned(),
            url: Some(DatabaseUrl::from(keys.url.as_str())),
        },
        ..Settings::default()
    };
    let args = || ImportArgs {
        from_seed: Some(seed.url.clone()),
        from_jsonl: None,
        usage: false,
        dry_run: false,
        batch_size: 500,
    };

    // The first run also creates apikeyd's schema; time that apart.
    let migrated = Instant::now();
    apikeyd::store::prepare(&keys.connect().await?, None).await?;
    let migration = migrated.elapsed();

    let first = timed(apikeyd::import::run(args(), settings())).await?;
    let second = timed(apikeyd::import::run(args(), settings())).await?;

    let imported: i64 = scalar(
        &keys.connect().await?,
        "SELECT count(*) FROM api_keys WHERE legacy_sha256 IS NOT NULL",
    )
    .await?;
    anyhow::ensure!(imported as u64 == rows, "{imported} of {rows} rows arrived");
    println!(
        "\nfirst import:  {rows} rows in {:.2} s ({:.0} rows/s; schema migration before it {:.2} s)",
        first.as_secs_f64(),
        rows as f64 / first.as_secs_f64(),
        migration.as_secs_f64()
    );
    println!(
        "second import: {rows} rows in {:.2} s ({:.0} rows/s), every one already present",
        second.as_secs_f64(),
        rows as f64 / second.as_secs_f64()
    );
    Ok(())
}

async fn timed(import: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<Duration> {
    let started = Instant::now();
    import.await?;
    Ok(started.elapsed())
}

/// `rows` keys, ten per user, in a few statements (PostgreSQL computes each
/// key's SHA-256 as the seed's `createHash('sha256')` would).
async fn fill_seed(db: &DatabaseConnection, rows: u64) -> anyhow::Result<()> {
    db.execute_unprepared(SEED_SCHEMA).await?;
    let users = rows.div_ceil(10);
    db.execute_unprepared(&format!(
        r#"INSERT INTO "User" ("id", "email")
           SELECT 'user_' || u, 'user_' || u || '@example.com' FROM generate_series(1, {users}) u"#
    ))
    .await?;
    db.execute_unprepared(&format!(
        r#"INSERT INTO "ApiKey" ("id", "name", "key", "prefix", "userId", "scopes",
                                 "expiresAt", "lastUsedAt", "revokedAt", "createdAt", "updatedAt")
           SELECT 'ck' || i, 'Key ' || i,
                  encode(sha256(convert_to(k, 'UTF8')), 'hex'), left(k, 12),
                  'user_' || ((i - 1) / 10 + 1),
                  ARRAY['read:posts', 'read:users'],
                  CASE WHEN i % 10 = 1 THEN now() - interval '1 day' WHEN i % 10 = 2 THEN now() + interval '30 days' END,
                  CASE WHEN i % 3 = 0 THEN now() - interval '2 hours' END,
                  CASE WHEN i % 10 = 0 THEN now() - interval '1 day' END,
                  now() - (i || ' seconds')::interval, now()
           FROM (SELECT i, 'sk_live_' || md5('k' || i) || md5('s' || i) AS k
                 FROM generate_series(1, {rows}) i) keys"#
    ))
    .await?;
    Ok(())
}

async fn scalar(db: &DatabaseConnection, sql: &str) -> anyhow::Result<i64> {
    let row = db
        .query_one(sea_orm::Statement::from_string(
            db.get_database_backend(),
            sql.to_owned(),
        ))
        .await?
        .context("a count answers one row")?;
    Ok(row.try_get_by_index(0)?)
}

/// A database of this run, dropped at the end.
struct Fresh {
    url: String,
    name: String,
    admin_url: String,
}

impl Fresh {
    async fn create(admin_url: &str, purpose: &str) -> anyhow::Result<Fresh> {
        let admin = Database::connect(admin_url).await.with_context(|| {
            format!("PostgreSQL at {admin_url} is needed (set APIKEYD_TEST_POSTGRES_URL)")
        })?;
        let name = format!("apikeyd_bench_{purpose}_{:08x}", rand_suffix());
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await?;
        admin.close().await.ok();
        let mut url =
            url::Url::parse(admin_url).context("APIKEYD_TEST_POSTGRES_URL is not a URL")?;
        url.set_path(&name);
        Ok(Fresh {
            url: url.to_string(),
            name,
            admin_url: admin_url.to_owned(),
        })
    }

    async fn connect(&self) -> anyhow::Result<DatabaseConnection> {
        Ok(Database::connect(&self.url).await?)
    }

    async fn drop_now(&self) -> anyhow::Result<()> {
        let admin = Database::connect(&self.admin_url).await?;
        admin
            .execute_unprepared(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await?;
        admin.close().await.ok();
        Ok(())
    }
}

fn rand_suffix() -> u32 {
    use rand_core::{OsRng, RngCore};
    OsRng.next_u32()
}
