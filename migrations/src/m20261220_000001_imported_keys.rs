//! Keys imported from another store, found by the SHA-256 of the whole key
//! (what that store kept) instead of by an id embedded in the key. The
//! column is null for every key apikeyd issued, and unique where it is not,
//! so Validate finds an imported key with one indexed lookup.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    LegacySha256,
}

const INDEX: &str = "api_keys_legacy_sha256";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ApiKeys::Table)
                    .add_column(ColumnDef::new(ApiKeys::LegacySha256).string_len(64).null())
                    .to_owned(),
            )
            .await?;
        // Both databases let a unique index hold any number of nulls.
        manager
            .create_index(
                Index::create()
                    .name(INDEX)
                    .table(ApiKeys::Table)
                    .col(ApiKeys::LegacySha256)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name(INDEX).table(ApiKeys::Table).to_owned())
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(ApiKeys::Table)
                    .drop_column(ApiKeys::LegacySha256)
                    .to_owned(),
            )
            .await
    }
}
