//! `--from-seed postgres://…`: the seed design's tables as Prisma makes
//! them (`"ApiKey"`, `"ApiKeyUsage"`, camelCase columns, quoted), read in
//! one `REPEATABLE READ READ ONLY` transaction through a cursor, so the
//! import sees one consistent snapshot and never writes to the old store.
//!
//! `ApiKey` rows become keys: owner = `userId`, and the name, scopes,
//! prefix, expiry, last use and revocation they had; the seed's `id` is
//! kept in metadata as `seed_id`. With `--usage`, each key's `ApiKeyUsage`
//! rows become its usage counters (per hour and day, within the configured
//! retention) and its most recent requests.

use chrono::{DateTime, Utc};
use sea_orm::sqlx::{self, Connection, PgConnection, Row, postgres::PgRow};

use crate::authority::ImportRow;
use crate::domain::import::{ImportRecord, UsageEvent, UsageHistory, code_of_http_status};

const CURSOR: &str = "apikeyd_import_seed_keys";

/// Instants as microseconds since the epoch, whichever timestamp type the
/// column has (Prisma's `timestamp(3)` holds UTC without a zone).
fn micros(column: &str) -> String {
    format!("(extract(epoch from \"{column}\") * 1000000)::bigint")
}

pub struct SeedSource {
    connection: PgConnection,
    total: u64,
    usage: bool,
}

impl SeedSource {
    /// Connects, starts the read-only snapshot, counts the keys and opens a
    /// cursor over them (oldest first, so a resumed import reads in the
    /// same order).
    pub async fn open(url: &str, usage: bool) -> anyhow::Result<SeedSource> {
        let mut connection = PgConnection::connect(url)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to the seed database: {e}"))?;
        sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut connection)
            .await?;
        let total: i64 = sqlx::query_scalar(r#"SELECT count(*) FROM "ApiKey""#)
            .fetch_one(&mut connection)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot read the seed's \"ApiKey\" table (is this its database?): {e}"
                )
            })?;
        let select = format!(
            r#"DECLARE {CURSOR} NO SCROLL CURSOR FOR
               SELECT "id", "name", "key", "prefix", "userId", "scopes",
                      {}, {}, {}, {}
               FROM "ApiKey" ORDER BY "createdAt", "id""#,
            micros("createdAt"),
            micros("expiresAt"),
            micros("lastUsedAt"),
            micros("revokedAt"),
        );
        sqlx::query(&select).execute(&mut connection).await?;
        Ok(SeedSource {
            connection,
            total: total.max(0) as u64,
            usage,
        })
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Up to `size` keys (with their usage, if asked); none at the end.
    pub async fn next_batch(&mut self, size: usize) -> anyhow::Result<Vec<ImportRow>> {
        let rows = sqlx::query(&format!("FETCH FORWARD {size} FROM {CURSOR}"))
            .fetch_all(&mut self.connection)
            .await?;
        let mut batch: Vec<ImportRow> = rows.iter().map(import_row).collect::<Result<_, _>>()?;
        if self.usage && !batch.is_empty() {
            self.attach_usage(&mut batch).await?;
        }
        Ok(batch)
    }

    /// Ends the snapshot (it wrote nothing, so rolling back loses nothing).
    pub async fn close(mut self) -> anyhow::Result<()> {
        sqlx::query("ROLLBACK")
            .execute(&mut self.connection)
            .await?;
        self.connection.close().await?;
        Ok(())
    }

    /// Each key's requests, counted per hour and status by the database,
    /// and its newest requests: only what the usage counters can keep.
    async fn attach_usage(&mut self, batch: &mut [ImportRow]) -> anyhow::Result<()> {
        let ids: Vec<String> = batch.iter().map(|row| row.source_ref.clone()).collect();
        let counts = sqlx::query(&format!(
            r#"SELECT "keyId", floor({at} / 3600000000.0)::bigint AS hour, "status", count(*)
               FROM "ApiKeyUsage" WHERE "keyId" = ANY($1)
               GROUP BY 1, 2, 3"#,
            at = micros("createdAt"),
        ))
        .bind(&ids)
        .fetch_all(&mut self.connection)
        .await?;
        let recent = sqlx::query(&format!(
            r#"SELECT "keyId", at, "status", "endpoint", "method", "ip", "userAgent" FROM (
                 SELECT *, {at} AS at,
                        row_number() OVER (PARTITION BY "keyId" ORDER BY "createdAt" DESC, "id" DESC) AS newest
                 FROM "ApiKeyUsage" WHERE "keyId" = ANY($1)
               ) requests WHERE newest <= $2 ORDER BY "keyId", newest"#,
            at = micros("createdAt"),
        ))
        .bind(&ids)
        .bind(RECENT_KEPT)
        .fetch_all(&mut self.connection)
        .await?;
        let mut histories: std::collections::HashMap<String, UsageHistory> = Default::default();
        for row in counts {
            let key_id: String = row.try_get(0)?;
            let status: i32 = row.try_get(2)?;
            let count: i64 = row.try_get(3)?;
            histories.entry(key_id).or_default().hourly.push((
                row.try_get(1)?,
                code_of_http_status(status),
                count.max(0) as u64,
            ));
        }
        for row in recent {
            let key_id: String = row.try_get(0)?;
            let status: i32 = row.try_get(2)?;
            let optional = |i: usize| -> anyhow::Result<String> {
                Ok(row.try_get::<Option<String>, _>(i)?.unwrap_or_default())
            };
            let event = UsageEvent {
                at: instant(row.try_get(1)?).unwrap_or_default(),
                code: code_of_http_status(status),
                endpoint: row.try_get(3)?,
                method: row.try_get(4)?,
                ip: optional(5)?,
                user_agent: optional(6)?,
            };
            histories.entry(key_id).or_default().recent.push(event);
        }
        for row in batch {
            if let Some(history) = histories.remove(&row.source_ref) {
                row.usage = history;
            }
        }
        Ok(())
    }
}

/// The most recent requests read per key: as many as any configuration of
/// `--recent-requests-kept` is likely to keep.
const RECENT_KEPT: i64 = 1_000;

fn instant(micros: Option<i64>) -> Option<DateTime<Utc>> {
    micros.and_then(DateTime::from_timestamp_micros)
}

/// An `ApiKey` row as an import row; its `id` names it, in reports and in
/// the key's metadata.
fn import_row(row: &PgRow) -> anyhow::Result<ImportRow> {
    let seed_id: String = row.try_get("id")?;
    let record = ImportRecord {
        sha256: row.try_get("key")?,
        owner_id: row.try_get("userId")?,
        name: row.try_get("name")?,
        scopes: row
            .try_get::<Option<Vec<String>>, _>("scopes")?
            .unwrap_or_default(),
        prefix: Some(row.try_get("prefix")?),
        metadata: [("seed_id".to_owned(), seed_id.clone())].into(),
        created_at: instant(row.try_get(6)?),
        expires_at: instant(row.try_get(7)?),
        last_used_at: instant(row.try_get(8)?),
        revoked_at: instant(row.try_get(9)?),
        ..Default::default()
    };
    Ok(ImportRow {
        source_ref: seed_id,
        record: Ok(record),
        usage: UsageHistory::default(),
    })
}
