//! apikeyd's relational schema, as SeaORM migrations. The same migrations run
//! on SQLite (the embedded default) and PostgreSQL.

pub use sea_orm_migration::prelude::*;

mod m20261127_000001_create_keys;
mod m20261201_000001_rate_limits;
mod m20261215_000001_root_keys_and_audit;
mod m20261220_000001_imported_keys;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261127_000001_create_keys::Migration),
            Box::new(m20261201_000001_rate_limits::Migration),
            Box::new(m20261215_000001_root_keys_and_audit::Migration),
            Box::new(m20261220_000001_imported_keys::Migration),
        ]
    }
}
