//! Rate limits and usage quotas: each key's tier or own limits and its quota
//! configuration, and the limits an owner's keys share. Counters, limit state
//! and quota balances live in the limiter store (Redis or in-process), not here.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Tier,
    RateLimits,
    Quota,
}

#[derive(DeriveIden)]
enum OwnerLimits {
    Table,
    OwnerId,
    Tier,
    RateLimits,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        let columns = [
            ColumnDef::new(ApiKeys::Tier)
                .string_len(64)
                .null()
                .to_owned(),
            ColumnDef::new(ApiKeys::RateLimits).json().null().to_owned(),
            ColumnDef::new(ApiKeys::Quota).json().null().to_owned(),
        ];
        for mut column in columns {
            manager
                .alter_table(
                    Table::alter()
                        .table(ApiKeys::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        // Keys issued before tiers existed get the seed's default tier.
        manager
            .exec_stmt(
                Query::update()
                    .table(ApiKeys::Table)
                    .value(ApiKeys::Tier, "free")
                    .and_where(Expr::col(ApiKeys::Tier).is_null())
                    .and_where(Expr::col(ApiKeys::RateLimits).is_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(OwnerLimits::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(OwnerLimits::OwnerId)
                            .string_len(128)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(OwnerLimits::Tier).string_len(64).null())
                    .col(ColumnDef::new(OwnerLimits::RateLimits).json().null())
                    .col(
                        ColumnDef::new(OwnerLimits::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(OwnerLimits::Table).to_owned())
            .await?;
        for column in [ApiKeys::Quota, ApiKeys::RateLimits, ApiKeys::Tier] {
            manager
                .alter_table(
                    Table::alter()
                        .table(ApiKeys::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
