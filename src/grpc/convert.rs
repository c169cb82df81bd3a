//! Conversions between the protobuf messages and the domain types.

use chrono::{DateTime, TimeZone, Utc};

use super::pb;
use crate::domain::{ApiKey, Environment, KeyId, ValidationCode};
use crate::error::{Error, Result};
use crate::store::ListCursor;

pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

pub fn api_key(key: ApiKey) -> pb::ApiKey {
    pb::ApiKey {
        id: key.id.to_string(),
        owner_id: key.owner_id,
        name: key.name,
        prefix: key.prefix,
        scopes: key.scopes.to_strings(),
        environment: environment(key.environment) as i32,
        metadata: key.metadata.into_iter().collect(),
        enabled: key.enabled,
        created_at: Some(timestamp(key.created_at)),
        updated_at: Some(timestamp(key.updated_at)),
        expires_at: key.expires_at.map(timestamp),
        last_used_at: key.last_used_at.map(timestamp),
        revoked_at: key.revoked_at.map(timestamp),
    }
}

fn environment(environment: Environment) -> pb::Environment {
    match environment {
        Environment::Live => pb::Environment::Live,
        Environment::Test => pb::Environment::Test,
    }
}

/// UNSPECIFIED means live, the common case.
pub fn parse_environment(raw: i32) -> Result<Environment> {
    match pb::Environment::try_from(raw) {
        Ok(pb::Environment::Unspecified | pb::Environment::Live) => Ok(Environment::Live),
        Ok(pb::Environment::Test) => Ok(Environment::Test),
        Err(_) => Err(Error::invalid(
            "environment",
            format!("unknown value {raw}; use ENVIRONMENT_LIVE or ENVIRONMENT_TEST"),
        )),
    }
}

pub fn validation_code(code: ValidationCode) -> pb::ValidationCode {
    match code {
        ValidationCode::Valid => pb::ValidationCode::Valid,
        ValidationCode::Malformed => pb::ValidationCode::Malformed,
        ValidationCode::NotFound => pb::ValidationCode::NotFound,
        ValidationCode::Revoked => pb::ValidationCode::Revoked,
        ValidationCode::Disabled => pb::ValidationCode::Disabled,
        ValidationCode::Expired => pb::ValidationCode::Expired,
        ValidationCode::InsufficientScope => pb::ValidationCode::InsufficientScope,
    }
}

/// Parses a key id from a request, naming the field in the error.
pub fn parse_key_id(field: &'static str, raw: &str) -> Result<KeyId> {
    if raw.is_empty() {
        return Err(Error::invalid(field, "required: the id of an API key"));
    }
    KeyId::parse(raw).ok_or_else(|| {
        Error::invalid(
            field,
            "not an API key id: ids are 16 letters and digits, as in ApiKey.id",
        )
    })
}

const PAGE_TOKEN_VERSION: &str = "v1";

/// Page tokens are opaque to callers: `v1.<created_at micros>.<id>`.
pub fn page_token(cursor: &ListCursor) -> String {
    format!(
        "{PAGE_TOKEN_VERSION}.{}.{}",
        cursor.created_at.timestamp_micros(),
        cursor.id
    )
}

pub fn parse_page_token(raw: &str) -> Result<Option<ListCursor>> {
    if raw.is_empty() {
        return Ok(None);
    }
    let invalid = || {
        Error::invalid(
            "page_token",
            "not a token this server issued; pass next_page_token unchanged",
        )
    };
    let mut parts = raw.splitn(3, '.');
    let (Some(PAGE_TOKEN_VERSION), Some(micros), Some(id)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    let micros: i64 = micros.parse().map_err(|_| invalid())?;
    let created_at = Utc.timestamp_micros(micros).single().ok_or_else(invalid)?;
    let id = KeyId::parse(id).ok_or_else(invalid)?;
    Ok(Some(ListCursor { created_at, id }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip() {
        let cursor = ListCursor {
            created_at: crate::domain::now(),
            id: KeyId::parse("0123456789abcdef").unwrap(),
        };
        assert_eq!(
            parse_page_token(&page_token(&cursor)).unwrap(),
            Some(cursor)
        );
        assert_eq!(parse_page_token("").unwrap(), None);
    }

    #[test]
    fn forged_page_tokens_are_invalid_arguments() {
        for bad in [
            "x",
            "v1.abc.0123456789abcdef",
            "v1.1.short",
            "v2.1.0123456789abcdef",
        ] {
            assert!(
                matches!(
                    parse_page_token(bad),
                    Err(Error::InvalidArgument {
                        field: "page_token",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }
}
