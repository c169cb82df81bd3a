//! An entry of the audit trail: who (which root key, from where) called
//! what, on which targets, changing which fields, with what outcome.
//!
//! Every string a caller chose passes through [`recordable`] on its way in,
//! so an event is bounded and never holds a raw key, even one pasted into a
//! key's name by mistake. Secrets are never given to an event at all.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::key_format::{KeyId, recordable};
use super::root_key::RootKey;

/// The longest recorded field value, in characters.
pub const MAX_FIELD_CHARS: usize = 512;
/// The longest recorded outcome message, in characters.
pub const MAX_MESSAGE_CHARS: usize = 1024;
/// The longest recorded peer address or TLS identity, in characters.
const MAX_PEER_CHARS: usize = 128;

/// The root key a call was made with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub root_key_id: String,
    pub root_key_name: String,
}

/// One audit event, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    pub occurred_at: DateTime<Utc>,
    /// `None` when the call carried no usable root key.
    pub actor: Option<Actor>,
    /// The caller's socket address, or `cli` for the command line.
    pub peer_address: String,
    /// The client certificate's identity (subject; alternative names), empty
    /// when the call came without one.
    pub tls_identity: String,
    /// The gRPC method (`apikeyd.v1.KeyService/RevokeKey`) or CLI command.
    pub method: String,
    pub key_id: Option<String>,
    pub owner_id: Option<String>,
    pub target_root_key_id: Option<String>,
    /// Field name → value (never a secret; caller strings bounded and redacted).
    pub fields: BTreeMap<String, String>,
    /// The gRPC status code name: `OK`, `PERMISSION_DENIED`, …
    pub outcome_code: String,
    pub outcome_message: String,
}

impl AuditEvent {
    pub fn new(method: &str, peer_address: &str, occurred_at: DateTime<Utc>) -> AuditEvent {
        AuditEvent {
            occurred_at,
            actor: None,
            peer_address: recordable(peer_address, MAX_PEER_CHARS),
            tls_identity: String::new(),
            method: method.to_owned(),
            key_id: None,
            owner_id: None,
            target_root_key_id: None,
            fields: BTreeMap::new(),
            outcome_code: "OK".to_owned(),
            outcome_message: String::new(),
        }
    }

    pub fn set_actor(&mut self, root_key: &RootKey) {
        self.actor = Some(Actor {
            root_key_id: root_key.id.to_string(),
            root_key_name: recordable(&root_key.name, MAX_FIELD_CHARS),
        });
    }

    /// Records the verified client certificate's identity (bounded).
    pub fn set_tls_identity(&mut self, identity: &str) {
        self.tls_identity = recordable(identity, MAX_PEER_CHARS);
    }

    pub fn set_key(&mut self, id: &KeyId) {
        self.key_id = Some(id.to_string());
    }

    pub fn set_owner(&mut self, owner_id: &str) {
        self.owner_id = Some(recordable(owner_id, MAX_FIELD_CHARS));
    }

    pub fn set_target_root_key(&mut self, id: &KeyId) {
        self.target_root_key_id = Some(id.to_string());
    }

    /// Records a changed field; the value is bounded and any key in it redacted.
    pub fn set_field(&mut self, name: &str, value: &str) {
        self.fields
            .insert(name.to_owned(), recordable(value, MAX_FIELD_CHARS));
    }

    /// Records a field whose value is a list, as JSON text.
    pub fn set_list_field(&mut self, name: &str, values: &[String]) {
        let json = serde_json::to_string(values).unwrap_or_default();
        self.set_field(name, &json);
    }

    pub fn set_outcome(&mut self, code: &str, message: &str) {
        self.outcome_code = code.to_owned();
        self.outcome_message = recordable(message, MAX_MESSAGE_CHARS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{GeneratedKey, KeyKind};

    #[test]
    fn recorded_fields_are_bounded_and_hold_no_key() {
        let key = GeneratedKey::generate(KeyKind::Live).into_full_key();
        let mut event =
            AuditEvent::new("apikeyd.v1.KeyService/UpdateKey", "127.0.0.1:1", Utc::now());

        event.set_field("name", &format!("oops {key}"));
        event.set_field("metadata", &"m".repeat(10_000));
        event.set_list_field("scopes", &["posts:read".to_owned(), key.clone()]);
        event.set_outcome("INVALID_ARGUMENT", &format!("bad {key}"));

        let everything = format!("{event:?}");
        assert!(!everything.contains(&key[25..]), "{everything}");
        assert_eq!(event.fields["metadata"].chars().count(), MAX_FIELD_CHARS);
        assert!(event.fields["scopes"].starts_with("[\"posts:read\""));
    }
}
