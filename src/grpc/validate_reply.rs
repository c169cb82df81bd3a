//! Validate's answer on the wire, written straight from the cached record.
//!
//! `pb::ValidateResponse` would hold a copy of every string of the key's
//! record (id, owner, name, prefix, scopes, metadata), made, encoded and
//! freed on every call: a third of a warm Validate's work. [`ValidateReply`]
//! holds the shared record instead and writes the same bytes prost would
//! (fields in order, defaults left out), so any client decodes it as the
//! `ValidateResponse` of `proto/`. Tests hold the two encodings to each
//! other. It is only ever encoded: the server never reads one.

use std::fmt;
use std::ops::Deref;

use bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType, encode_varint, encoded_len_varint, key_len};

use super::{convert, pb};
use crate::domain::{ApiKey, LimitSource, ValidationCode};
use crate::key_cache::FoundKey;
use crate::ratelimit::LimitStatus;

/// `ValidateResponse`, over a record `R` held elsewhere (the key cache's
/// entry in the server). Boxed: tonic moves a response several times on its
/// way to the wire, 8 bytes each rather than 130.
pub struct ValidateReply<R = FoundKey>(Box<Fields<R>>);

struct Fields<R> {
    valid: bool,
    code: i32,
    message: &'static str,
    api_key: Option<KeyAnswer<R>>,
    rate_limit: Option<pb::RateLimitStatus>,
}

/// The `api_key` field: the record, its live quota balance, and the
/// field's encoded length (needed twice per encoding, so counted once).
struct KeyAnswer<R> {
    record: R,
    quota: Option<pb::UsageQuota>,
    len: usize,
}

impl<R: Deref<Target = ApiKey>> ValidateReply<R> {
    /// `quota_balance` replaces the record's quota balance (the live one,
    /// when the limiter answered).
    pub fn new(
        code: ValidationCode,
        message: &'static str,
        api_key: Option<R>,
        quota_balance: Option<i64>,
        rate_limit: Option<&LimitStatus>,
    ) -> Self {
        let api_key = api_key.map(|record| {
            let quota = record.quota.as_ref().map(|quota| pb::UsageQuota {
                remaining: quota_balance.unwrap_or(quota.remaining),
                ..convert::usage_quota(quota)
            });
            let len = api_key_len(&record, quota.as_ref());
            KeyAnswer { record, quota, len }
        });
        ValidateReply(Box::new(Fields {
            valid: code == ValidationCode::Valid,
            code: convert::validation_code(code) as i32,
            message,
            api_key,
            rate_limit: rate_limit.map(convert::rate_limit_status),
        }))
    }
}

impl<R> fmt::Debug for ValidateReply<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidateReply")
            .field("code", &self.0.code)
            .field("message", &self.0.message)
            .finish_non_exhaustive()
    }
}

impl<R> prost::Message for ValidateReply<R>
where
    R: Deref<Target = ApiKey> + Send + Sync,
{
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if self.0.valid {
            encoding::bool::encode(1, &self.0.valid, buf);
        }
        if self.0.code != 0 {
            encoding::int32::encode(2, &self.0.code, buf);
        }
        put_str(3, self.0.message, buf);
        if let Some(answer) = &self.0.api_key {
            put_key(4, WireType::LengthDelimited, buf);
            put_varint(answer.len as u64, buf);
            encode_api_key(&answer.record, answer.quota.as_ref(), buf);
        }
        if let Some(status) = &self.0.rate_limit {
            put_message(5, status, buf);
        }
    }

    fn encoded_len(&self) -> usize {
        usize::from(self.0.valid) * 2
            + if self.0.code != 0 {
                encoding::int32::encoded_len(2, &self.0.code)
            } else {
                0
            }
            + str_len(3, self.0.message)
            + self.0.api_key.as_ref().map_or(0, |answer| {
                key_len(4) + encoded_len_varint(answer.len as u64) + answer.len
            })
            + self
                .0
                .rate_limit
                .as_ref()
                .map_or(0, |status| encoding::message::encoded_len(5, status))
    }

    /// Never decoded by the server; a stray field is skipped.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn clear(&mut self) {
        let fields = &mut *self.0;
        fields.valid = false;
        fields.code = 0;
        fields.message = "";
        fields.api_key = None;
        fields.rate_limit = None;
    }
}

/// The fields of `ApiKey` in tag order, as prost writes them.
fn encode_api_key(key: &ApiKey, quota: Option<&pb::UsageQuota>, buf: &mut impl BufMut) {
    put_str(1, key.id.as_str(), buf);
    put_str(2, &key.owner_id, buf);
    put_str(3, &key.name, buf);
    put_str(4, &key.prefix, buf);
    for scope in key.scopes.iter() {
        let pieces = scope.text_pieces();
        put_key(5, WireType::LengthDelimited, buf);
        put_varint(pieces.iter().map(|p| p.len()).sum::<usize>() as u64, buf);
        pieces.iter().for_each(|p| buf.put_slice(p.as_bytes()));
    }
    let environment = convert::environment(key.environment) as i32;
    if environment != 0 {
        encoding::int32::encode(6, &environment, buf);
    }
    for (name, value) in &key.metadata {
        put_key(7, WireType::LengthDelimited, buf);
        put_varint((str_len(1, name) + str_len(2, value)) as u64, buf);
        put_str(1, name, buf);
        put_str(2, value, buf);
    }
    if key.enabled {
        encoding::bool::encode(8, &key.enabled, buf);
    }
    put_message(9, &convert::timestamp(key.created_at), buf);
    put_message(10, &convert::timestamp(key.updated_at), buf);
    let optional_times = [
        (11, key.expires_at),
        (12, key.last_used_at),
        (13, key.revoked_at),
    ];
    for (tag, at) in optional_times {
        if let Some(at) = at {
            put_message(tag, &convert::timestamp(at), buf);
        }
    }
    match &key.limits {
        LimitSource::Tier(name) => put_str(14, name, buf),
        LimitSource::Own(limits) => limits
            .iter()
            .for_each(|limit| put_message(15, &convert::rate_limit(limit), buf)),
    }
    if let Some(quota) = quota {
        put_message(16, quota, buf);
    }
}

/// What [`encode_api_key`] writes, in bytes.
fn api_key_len(key: &ApiKey, quota: Option<&pb::UsageQuota>) -> usize {
    let scopes: usize = key
        .scopes
        .iter()
        .map(|scope| {
            let len: usize = scope.text_pieces().iter().map(|p| p.len()).sum();
            key_len(5) + encoded_len_varint(len as u64) + len
        })
        .sum();
    let metadata: usize = key
        .metadata
        .iter()
        .map(|(name, value)| {
            let len = str_len(1, name) + str_len(2, value);
            key_len(7) + encoded_len_varint(len as u64) + len
        })
        .sum();
    let environment = convert::environment(key.environment) as i32;
    let times: usize = [
        (11, key.expires_at),
        (12, key.last_used_at),
        (13, key.revoked_at),
    ]
    .into_iter()
    .filter_map(|(tag, at)| {
        Some(encoding::message::encoded_len(
            tag,
            &convert::timestamp(at?),
        ))
    })
    .sum();
    let limits = match &key.limits {
        LimitSource::Tier(name) => str_len(14, name),
        LimitSource::Own(limits) => limits
            .iter()
            .map(|limit| encoding::message::encoded_len(15, &convert::rate_limit(limit)))
            .sum(),
    };
    str_len(1, key.id.as_str())
        + str_len(2, &key.owner_id)
        + str_len(3, &key.name)
        + str_len(4, &key.prefix)
        + scopes
        + if environment != 0 {
            encoding::int32::encoded_len(6, &environment)
        } else {
            0
        }
        + metadata
        + usize::from(key.enabled) * 2
        + encoding::message::encoded_len(9, &convert::timestamp(key.created_at))
        + encoding::message::encoded_len(10, &convert::timestamp(key.updated_at))
        + times
        + limits
        + quota.map_or(0, |quota| encoding::message::encoded_len(16, quota))
}

/// A proto3 string field: left out when empty.
fn put_str(tag: u32, value: &str, buf: &mut impl BufMut) {
    if !value.is_empty() {
        put_key(tag, WireType::LengthDelimited, buf);
        put_varint(value.len() as u64, buf);
        buf.put_slice(value.as_bytes());
    }
}

/// A message field: its key, its length, its fields.
fn put_message(tag: u32, message: &impl prost::Message, buf: &mut impl BufMut) {
    put_key(tag, WireType::LengthDelimited, buf);
    put_varint(message.encoded_len() as u64, buf);
    message.encode_raw(buf);
}

fn put_key(tag: u32, wire_type: WireType, buf: &mut impl BufMut) {
    put_varint(u64::from(tag << 3 | wire_type as u32), buf);
}

/// A varint, with the one-byte case (every key but field 16's, and most
/// lengths here) written inline.
fn put_varint(value: u64, buf: &mut impl BufMut) {
    match u8::try_from(value) {
        Ok(byte) if byte < 0x80 => buf.put_u8(byte),
        _ => encode_varint(value, buf),
    }
}

fn str_len(tag: u32, value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        key_len(tag) + encoded_len_varint(value.len() as u64) + value.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::{TimeZone, Utc};
    use prost::Message;

    use super::*;
    use crate::domain::key_settings::parse_scopes;
    use crate::domain::{Algorithm, Environment, KeyId, Limit, Quota, RefillInterval, ScopeSet};

    fn record() -> ApiKey {
        let at = |secs| Utc.timestamp_opt(secs, 123_456_000).unwrap();
        ApiKey {
            id: KeyId::parse("AbCdEfGh12345678").unwrap(),
            owner_id: "tenant-42".to_owned(),
            name: "Production integration".to_owned(),
            prefix: "sk_live_AbCdEfGh12345678".to_owned(),
            scopes: ScopeSet::new(
                parse_scopes("scopes", &["*".to_owned(), "users:read".to_owned()], false).unwrap(),
            ),
            environment: Environment::Live,
            metadata: BTreeMap::from([
                ("team".to_owned(), "payments".to_owned()),
                ("empty".to_owned(), String::new()),
            ]),
            enabled: true,
            created_at: at(1_700_000_000),
            updated_at: at(1_700_000_100),
            expires_at: Some(at(1_800_000_000)),
            last_used_at: Some(at(1_700_000_200)),
            revoked_at: None,
            limits: LimitSource::Own(vec![
                Limit {
                    limit: 100,
                    window_ms: 60_000,
                    algorithm: Algorithm::SlidingWindow,
                },
                Limit {
                    limit: 5_000,
                    window_ms: 3_600_000,
                    algorithm: Algorithm::TokenBucket,
                },
            ]),
            quota: Some(Quota {
                remaining: 10,
                refill_amount: 1_000,
                refill_interval: Some(RefillInterval::Daily),
                version: 1,
            }),
        }
    }

    /// The generated message for the same answer, as the server built it
    /// before [`ValidateReply`].
    fn generated(
        code: ValidationCode,
        message: &str,
        key: Option<&ApiKey>,
        quota_balance: Option<i64>,
        rate_limit: Option<&LimitStatus>,
    ) -> pb::ValidateResponse {
        pb::ValidateResponse {
            valid: code == ValidationCode::Valid,
            code: convert::validation_code(code) as i32,
            message: message.to_owned(),
            api_key: key.map(|key| {
                let mut key = key.clone();
                if let (Some(quota), Some(balance)) = (key.quota.as_mut(), quota_balance) {
                    quota.remaining = balance;
                }
                convert::api_key(key)
            }),
            rate_limit: rate_limit.map(convert::rate_limit_status),
        }
    }

    fn reply(
        code: ValidationCode,
        key: Option<&ApiKey>,
        quota_balance: Option<i64>,
        rate_limit: Option<&LimitStatus>,
    ) -> ValidateReply<Box<ApiKey>> {
        let key = key.map(|key| Box::new(key.clone()));
        ValidateReply::new(code, code.message(), key, quota_balance, rate_limit)
    }

    fn assert_same_on_the_wire(reply: &ValidateReply<Box<ApiKey>>, expected: pb::ValidateResponse) {
        let bytes = reply.encode_to_vec();
        assert_eq!(bytes.len(), reply.encoded_len(), "encoded_len is exact");
        assert_eq!(
            pb::ValidateResponse::decode(bytes.as_slice()).unwrap(),
            expected
        );
    }

    #[test]
    fn a_valid_answer_decodes_as_the_generated_message() {
        let key = record();
        let status = LimitStatus {
            limit: Limit {
                limit: 100,
                window_ms: 60_000,
                algorithm: Algorithm::SlidingWindow,
            },
            allowed: true,
            remaining: 99,
            reset_at_us: 1_700_000_060_000_000,
            retry_after_us: 0,
        };
        let code = ValidationCode::Valid;
        assert_same_on_the_wire(
            &reply(code, Some(&key), Some(7), Some(&status)),
            generated(code, code.message(), Some(&key), Some(7), Some(&status)),
        );
    }

    #[test]
    fn a_key_on_a_tier_with_defaults_everywhere_decodes_as_the_generated_message() {
        let key = ApiKey {
            metadata: BTreeMap::new(),
            enabled: false,
            expires_at: None,
            last_used_at: None,
            revoked_at: Some(Utc.timestamp_opt(0, 0).unwrap()),
            limits: LimitSource::Tier("free".to_owned()),
            quota: None,
            name: String::new(),
            ..record()
        };
        let code = ValidationCode::Revoked;
        assert_same_on_the_wire(
            &reply(code, Some(&key), Some(3), None),
            generated(code, code.message(), Some(&key), Some(3), None),
        );
    }

    #[test]
    fn a_refusal_without_a_key_decodes_as_the_generated_message() {
        for code in [ValidationCode::NotFound, ValidationCode::Malformed] {
            assert_same_on_the_wire(
                &reply(code, None, None, None),
                generated(code, code.message(), None, None, None),
            );
        }
    }

    #[test]
    fn the_record_quota_stands_when_the_limiter_gave_no_balance() {
        let key = record();
        let decoded = pb::ValidateResponse::decode(
            reply(ValidationCode::Valid, Some(&key), None, None)
                .encode_to_vec()
                .as_slice(),
        )
        .unwrap();
        assert_eq!(decoded.api_key.unwrap().quota.unwrap().remaining, 10);
    }
}
