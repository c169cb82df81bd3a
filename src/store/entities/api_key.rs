use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "api_keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub owner_id: String,
    pub name: String,
    pub prefix: String,
    /// argon2id PHC string of the secret; the secret itself is never stored.
    /// An imported key has none: it holds `IMPORTED_SECRET_HASH` instead.
    pub secret_hash: String,
    /// JSON array of scope strings.
    pub scopes: Json,
    pub environment: String,
    /// JSON object of string values.
    pub metadata: Json,
    pub enabled: bool,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub expires_at: Option<DateTimeUtc>,
    pub last_used_at: Option<DateTimeUtc>,
    pub revoked_at: Option<DateTimeUtc>,
    /// The tier whose limits apply; null when the key has its own.
    pub tier: Option<String>,
    /// JSON array of the key's own limits; null when it follows a tier.
    pub rate_limits: Option<Json>,
    /// JSON quota configuration; null for unlimited uses.
    pub quota: Option<Json>,
    /// Lowercase hex SHA-256 of the whole key, for a key imported from
    /// another store (found by it); null for keys apikeyd issued.
    pub legacy_sha256: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
