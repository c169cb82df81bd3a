//! The baseline: the seed's design (`shared/seed/pt-api-keys.md`) served
//! over the same gRPC contract, so that only the design differs.
//!
//! Per `Validate`, as the seed's `validateApiKey` and `withApiKey` do: the
//! SHA-256 hex of the whole key, a SELECT by that hash (a unique index),
//! the revoked and expiry checks, an UPDATE of `last_used_at` (and
//! `updated_at`, which Prisma's `@updatedAt` sets), the scope check, and an
//! INSERT of a usage row. Its tables carry the seed's indexes, in the same
//! fresh PostgreSQL database as apikeyd's, behind a pool of the same size.
//! It runs in the benchmark process (idle while h2load drives it) and
//! tallies its answers, as apikeyd's metrics do, so that its figures too
//! count only the answers expected.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use apikeyd::grpc::pb::validation_service_server::{ValidationService, ValidationServiceServer};
use apikeyd::grpc::pb::{self, ValidationCode};
use chrono::{DateTime, Utc};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
};
use sha2::{Digest, Sha256};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::answers::Answers;
use crate::server::{hex, random_hex};

/// The seed's Prisma schema, in PostgreSQL.
const SCHEMA: &[&str] = &[
    "CREATE TABLE seed_api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        key TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        user_id TEXT NOT NULL,
        scopes TEXT[] NOT NULL,
        expires_at TIMESTAMPTZ,
        last_used_at TIMESTAMPTZ,
        revoked_at TIMESTAMPTZ,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        updated_at TIMESTAMPTZ NOT NULL
    )",
    "CREATE INDEX seed_api_keys_prefix_idx ON seed_api_keys (prefix)",
    "CREATE INDEX seed_api_keys_user_id_idx ON seed_api_keys (user_id)",
    "CREATE TABLE seed_api_key_usage (
        id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL REFERENCES seed_api_keys (id) ON DELETE CASCADE,
        endpoint TEXT NOT NULL,
        method TEXT NOT NULL,
        status INTEGER NOT NULL,
        ip TEXT,
        user_agent TEXT,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )",
    "CREATE INDEX seed_api_key_usage_key_id_idx ON seed_api_key_usage (key_id)",
    "CREATE INDEX seed_api_key_usage_created_at_idx ON seed_api_key_usage (created_at)",
];

/// The seed's key format: `sk_live_` and 32 random bytes in hex.
const SEED_PREFIX: &str = "sk_live_";

/// Creates the seed's tables and `count` keys (as `generateApiKey` does)
/// and returns the full keys.
pub async fn prepare(database_url: &str, count: usize) -> anyhow::Result<Vec<String>> {
    let db = Database::connect(database_url).await?;
    for statement in SCHEMA {
        db.execute_unprepared(statement).await?;
    }
    let mut keys = Vec::with_capacity(count);
    for i in 0..count {
        let key = format!("{SEED_PREFIX}{}", random_hex(32));
        db.execute(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO seed_api_keys (id, name, key, prefix, user_id, scopes, updated_at)
             VALUES ($1, 'benchmark', $2, $3, $4, ARRAY['posts:read', 'posts:write'], now())",
            [
                random_hex(12).into(),
                sha256_hex(&key).into(),
                key[..12].to_owned().into(),
                format!("seed-user-{i}").into(),
            ],
        ))
        .await?;
        keys.push(key);
    }
    db.close().await?;
    Ok(keys)
}

/// The seed server's answers so far: validation codes, and gRPC errors.
#[derive(Default)]
pub struct SeedAnswers {
    /// Indexed by `ValidationCode`.
    codes: [AtomicU64; 10],
    errors: AtomicU64,
}

impl SeedAnswers {
    fn count(&self, code: ValidationCode) {
        self.codes[code as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Answers {
        let mut answers = Answers::default();
        for (code, count) in self.codes.iter().enumerate() {
            let name = ValidationCode::try_from(code as i32)
                .map_or("?", |code| code.as_str_name())
                .trim_start_matches("VALIDATION_CODE_")
                .to_ascii_lowercase();
            answers.add(name, count.load(Ordering::Relaxed) as f64);
        }
        answers.add(
            "gRPC INTERNAL".to_owned(),
            self.errors.load(Ordering::Relaxed) as f64,
        );
        answers
    }
}

/// The seed design's server, running in this process.
pub struct SeedServer {
    pub addr: SocketAddr,
    pub answers: Arc<SeedAnswers>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SeedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves the seed design's `Validate` on a loopback port, in this process,
/// until the returned server is dropped.
pub async fn serve(database_url: &str) -> anyhow::Result<SeedServer> {
    // The same pool apikeyd's store opens on PostgreSQL.
    let mut options = ConnectOptions::new(database_url.to_owned());
    options
        .max_connections(16)
        .min_connections(1)
        .sqlx_logging(false);
    let db = Database::connect(options).await?;
    // TCP_NODELAY on, as tonic's own listener sets it: the baseline gets the
    // best transport, so a ratio against it errs in the seed's favour.
    let incoming = TcpIncoming::bind(([127, 0, 0, 1], 0).into())?.with_nodelay(Some(true));
    let addr = incoming.local_addr()?;
    let answers = Arc::new(SeedAnswers::default());
    let server = tonic::transport::Server::builder()
        .add_service(ValidationServiceServer::new(SeedValidation {
            db,
            answers: answers.clone(),
        }))
        .serve_with_incoming(incoming);
    let task = tokio::spawn(async move {
        if let Err(e) = server.await {
            eprintln!("the seed-design server stopped: {e}");
        }
    });
    Ok(SeedServer {
        addr,
        answers,
        task,
    })
}

fn sha256_hex(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

struct SeedValidation {
    db: DatabaseConnection,
    answers: Arc<SeedAnswers>,
}

/// The columns `validateApiKey` reads (the seed also joins the user's id
/// and email; there is no user table here, so that join is left out, in the
/// seed's favour).
struct SeedKeyRow {
    id: String,
    name: String,
    prefix: String,
    user_id: String,
    scopes: Vec<String>,
    expires_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl SeedValidation {
    async fn find_by_hash(&self, hashed: String) -> Result<Option<SeedKeyRow>, sea_orm::DbErr> {
        let Some(row) = self
            .db
            .query_one(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT id, name, prefix, user_id, to_json(scopes) AS scopes, expires_at,
                        last_used_at, revoked_at, created_at, updated_at
                 FROM seed_api_keys WHERE key = $1",
                [hashed.into()],
            ))
            .await?
        else {
            return Ok(None);
        };
        let scopes: serde_json::Value = row.try_get("", "scopes")?;
        Ok(Some(SeedKeyRow {
            id: row.try_get("", "id")?,
            name: row.try_get("", "name")?,
            prefix: row.try_get("", "prefix")?,
            user_id: row.try_get("", "user_id")?,
            scopes: serde_json::from_value(scopes).unwrap_or_default(),
            expires_at: row.try_get("", "expires_at")?,
            last_used_at: row.try_get("", "last_used_at")?,
            revoked_at: row.try_get("", "revoked_at")?,
            created_at: row.try_get("", "created_at")?,
            updated_at: row.try_get("", "updated_at")?,
        }))
    }
}

/// The seed's `hasScope`: exact, `*`, `resource:*` or `*:action`.
fn has_scope(granted: &[String], required: &[String]) -> bool {
    required.iter().all(|scope| {
        let (resource, action) = scope.split_once(':').unwrap_or((scope, ""));
        granted.iter().any(|g| {
            g == scope || g == "*" || *g == format!("{resource}:*") || *g == format!("*:{action}")
        })
    })
}

fn answer(code: ValidationCode, api_key: Option<pb::ApiKey>) -> Response<pb::ValidateResponse> {
    Response::new(pb::ValidateResponse {
        valid: code == ValidationCode::Valid,
        code: code as i32,
        message: String::new(),
        api_key,
        rate_limit: None,
    })
}

fn internal(e: sea_orm::DbErr) -> Status {
    Status::internal(e.to_string())
}

#[tonic::async_trait]
impl ValidationService for SeedValidation {
    async fn validate(
        &self,
        request: Request<pb::ValidateRequest>,
    ) -> Result<Response<pb::ValidateResponse>, Status> {
        let answer = self.seed_validate(request.into_inner()).await;
        match &answer {
            Ok(response) => self.answers.count(response.get_ref().code()),
            Err(_) => {
                self.answers.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        answer
    }
}

impl SeedValidation {
    /// The seed's `validateApiKey` and `withApiKey`.
    async fn seed_validate(
        &self,
        req: pb::ValidateRequest,
    ) -> Result<Response<pb::ValidateResponse>, Status> {
        if !req.key.starts_with(SEED_PREFIX) {
            return Ok(answer(ValidationCode::Malformed, None));
        }
        let Some(mut key) = self
            .find_by_hash(sha256_hex(&req.key))
            .await
            .map_err(internal)?
        else {
            return Ok(answer(ValidationCode::NotFound, None));
        };
        let now = Utc::now();
        if key.revoked_at.is_some() {
            return Ok(answer(ValidationCode::Revoked, None));
        }
        if key.expires_at.is_some_and(|at| at < now) {
            return Ok(answer(ValidationCode::Expired, None));
        }
        self.db
            .execute(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "UPDATE seed_api_keys SET last_used_at = $1, updated_at = $1 WHERE id = $2",
                [now.into(), key.id.clone().into()],
            ))
            .await
            .map_err(internal)?;
        (key.last_used_at, key.updated_at) = (Some(now), now);
        if !has_scope(&key.scopes, &req.required_scopes) {
            return Ok(answer(ValidationCode::InsufficientScope, None));
        }
        let context = req.context.unwrap_or_default();
        let optional = |s: String| (!s.is_empty()).then_some(s);
        self.db
            .execute(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO seed_api_key_usage (id, key_id, endpoint, method, status, ip, user_agent)
                 VALUES ($1, $2, $3, $4, 200, $5, $6)",
                [
                    random_hex(12).into(),
                    key.id.clone().into(),
                    context.endpoint.into(),
                    context.method.into(),
                    optional(context.ip).into(),
                    optional(context.user_agent).into(),
                ],
            ))
            .await
            .map_err(internal)?;
        let timestamp = apikeyd::grpc::convert::timestamp;
        let record = pb::ApiKey {
            id: key.id,
            owner_id: key.user_id,
            name: key.name,
            prefix: key.prefix,
            scopes: key.scopes,
            environment: pb::Environment::Live as i32,
            metadata: Default::default(),
            enabled: true,
            created_at: Some(timestamp(key.created_at)),
            updated_at: Some(timestamp(key.updated_at)),
            expires_at: key.expires_at.map(timestamp),
            last_used_at: key.last_used_at.map(timestamp),
            revoked_at: None,
            ..Default::default()
        };
        Ok(answer(ValidationCode::Valid, Some(record)))
    }
}
