//! SeaORM entities, one per table; the schema itself lives in `migrations/`.

pub mod api_key;
pub mod audit_event;
pub mod key_owner;
pub mod owner_limit;
pub mod root_key;
