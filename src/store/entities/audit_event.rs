use sea_orm::entity::prelude::*;

/// One audit event; rows are inserted, read and (by retention) deleted, never updated.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub occurred_at: DateTimeUtc,
    pub root_key_id: Option<String>,
    pub root_key_name: Option<String>,
    pub peer_address: String,
    pub tls_identity: String,
    pub method: String,
    pub key_id: Option<String>,
    pub owner_id: Option<String>,
    pub target_root_key_id: Option<String>,
    /// JSON object: field name → recorded value.
    pub changed_fields: Json,
    pub outcome_code: String,
    pub outcome_message: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
