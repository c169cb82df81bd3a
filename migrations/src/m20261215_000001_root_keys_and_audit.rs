//! Root keys as first-class objects (expiry, owner scope, who created them)
//! and the audit trail: one append-only row per change and per refused
//! management call. Updates of an event are refused by a trigger on both
//! databases; deletes are left to the retention task.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum RootKeys {
    Table,
    ExpiresAt,
    OwnerScope,
    CreatedBy,
}

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    Id,
    OccurredAt,
    RootKeyId,
    RootKeyName,
    PeerAddress,
    TlsIdentity,
    Method,
    KeyId,
    OwnerId,
    TargetRootKeyId,
    ChangedFields,
    OutcomeCode,
    OutcomeMessage,
}

const SQLITE_APPEND_ONLY: &str = "CREATE TRIGGER IF NOT EXISTS audit_events_append_only \
     BEFORE UPDATE ON audit_events \
     BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END";

const POSTGRES_APPEND_ONLY: [&str; 2] = [
    "CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger \
     LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'audit events are append-only'; END $$",
    "CREATE TRIGGER audit_events_append_only BEFORE UPDATE ON audit_events \
     FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        let columns = [
            ColumnDef::new(RootKeys::ExpiresAt)
                .timestamp_with_time_zone()
                .null()
                .to_owned(),
            // JSON array of owner ids and `prefix*` entries; NULL for every owner.
            ColumnDef::new(RootKeys::OwnerScope)
                .json()
                .null()
                .to_owned(),
            ColumnDef::new(RootKeys::CreatedBy)
                .string_len(32)
                .null()
                .to_owned(),
        ];
        for mut column in columns {
            manager
                .alter_table(
                    Table::alter()
                        .table(RootKeys::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(AuditEvents::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(AuditEvents::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(AuditEvents::OccurredAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(ColumnDef::new(AuditEvents::RootKeyId).string_len(32).null())
                    .col(
                        ColumnDef::new(AuditEvents::RootKeyName)
                            .string_len(400)
                            .null(),
                    )
                    .col(
                        ColumnDef::new(AuditEvents::PeerAddress)
                            .string_len(128)
                            .not_null(),
                    )
                    .col(ColumnDef::new(AuditEvents::TlsIdentity).text().not_null())
                    .col(
                        ColumnDef::new(AuditEvents::Method)
                            .string_len(128)
                            .not_null(),
                    )
                    .col(ColumnDef::new(AuditEvents::KeyId).string_len(32).null())
                    .col(ColumnDef::new(AuditEvents::OwnerId).string_len(128).null())
                    .col(
                        ColumnDef::new(AuditEvents::TargetRootKeyId)
                            .string_len(32)
                            .null(),
                    )
                    .col(ColumnDef::new(AuditEvents::ChangedFields).json().not_null())
                    .col(
                        ColumnDef::new(AuditEvents::OutcomeCode)
                            .string_len(32)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AuditEvents::OutcomeMessage)
                            .text()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        // Newest first by id, filtered by one target or by time.
        let indexes = [
            ("idx_audit_events_occurred", AuditEvents::OccurredAt),
            ("idx_audit_events_key", AuditEvents::KeyId),
            ("idx_audit_events_owner", AuditEvents::OwnerId),
            ("idx_audit_events_root_key", AuditEvents::RootKeyId),
            (
                "idx_audit_events_target_root_key",
                AuditEvents::TargetRootKeyId,
            ),
        ];
        for (name, column) in indexes {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(AuditEvents::Table)
                        .if_not_exists()
                        .col(column)
                        .col(AuditEvents::Id)
                        .to_owned(),
                )
                .await?;
        }
        let db = manager.get_connection();
        match db.get_database_backend() {
            DbBackend::Postgres => {
                for statement in POSTGRES_APPEND_ONLY {
                    db.execute_unprepared(statement).await?;
                }
            }
            _ => {
                db.execute_unprepared(SQLITE_APPEND_ONLY).await?;
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(AuditEvents::Table).to_owned())
            .await?;
        let db = manager.get_connection();
        if db.get_database_backend() == DbBackend::Postgres {
            db.execute_unprepared("DROP FUNCTION IF EXISTS audit_events_append_only()")
                .await?;
        }
        for column in [
            RootKeys::CreatedBy,
            RootKeys::OwnerScope,
            RootKeys::ExpiresAt,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(RootKeys::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
