//! API keys, root keys, and one row per key owner that serialises the
//! per-owner key limit.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Id,
    OwnerId,
    Name,
    Prefix,
    SecretHash,
    Scopes,
    Environment,
    Metadata,
    Enabled,
    CreatedAt,
    UpdatedAt,
    ExpiresAt,
    LastUsedAt,
    RevokedAt,
}

#[derive(DeriveIden)]
enum RootKeys {
    Table,
    Id,
    Name,
    Prefix,
    SecretHash,
    Permissions,
    CreatedAt,
    RevokedAt,
}

#[derive(DeriveIden)]
enum KeyOwners {
    Table,
    OwnerId,
    LastKeyCreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ApiKeys::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(ApiKeys::Id)
                            .string_len(32)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(ApiKeys::OwnerId).string_len(128).not_null())
                    .col(ColumnDef::new(ApiKeys::Name).string_len(400).not_null())
                    .col(ColumnDef::new(ApiKeys::Prefix).string_len(64).not_null())
                    .col(ColumnDef::new(ApiKeys::SecretHash).text().not_null())
                    .col(ColumnDef::new(ApiKeys::Scopes).json().not_null())
                    .col(
                        ColumnDef::new(ApiKeys::Environment)
                            .string_len(8)
                            .not_null(),
                    )
                    .col(ColumnDef::new(ApiKeys::Metadata).json().not_null())
                    .col(ColumnDef::new(ApiKeys::Enabled).boolean().not_null())
                    .col(
                        ColumnDef::new(ApiKeys::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ApiKeys::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ApiKeys::ExpiresAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(ApiKeys::LastUsedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(ApiKeys::RevokedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        // ListKeys for one owner, newest first, keyset-paginated on (created_at, id).
        manager
            .create_index(
                Index::create()
                    .name("idx_api_keys_owner_created")
                    .table(ApiKeys::Table)
                    .if_not_exists()
                    .col(ApiKeys::OwnerId)
                    .col(ApiKeys::CreatedAt)
                    .col(ApiKeys::Id)
                    .to_owned(),
            )
            .await?;
        // ListKeys across every owner.
        manager
            .create_index(
                Index::create()
                    .name("idx_api_keys_created")
                    .table(ApiKeys::Table)
                    .if_not_exists()
                    .col(ApiKeys::CreatedAt)
                    .col(ApiKeys::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(RootKeys::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(RootKeys::Id)
                            .string_len(32)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(RootKeys::Name).string_len(400).not_null())
                    .col(ColumnDef::new(RootKeys::Prefix).string_len(64).not_null())
                    .col(ColumnDef::new(RootKeys::SecretHash).text().not_null())
                    .col(ColumnDef::new(RootKeys::Permissions).json().not_null())
                    .col(
                        ColumnDef::new(RootKeys::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(RootKeys::RevokedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(KeyOwners::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(KeyOwners::OwnerId)
                            .string_len(128)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(KeyOwners::LastKeyCreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(KeyOwners::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(RootKeys::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(ApiKeys::Table).to_owned())
            .await
    }
}
