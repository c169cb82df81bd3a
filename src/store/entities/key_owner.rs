use sea_orm::entity::prelude::*;

/// One row per owner that ever had a key. `CreateKey` writes it first in its
/// transaction, which locks it, so concurrent creates for one owner take
/// turns and the per-owner limit cannot be overrun.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "key_owners")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub owner_id: String,
    pub last_key_created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
