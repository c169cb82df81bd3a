//! The proto3 JSON mapping of our messages, read from the descriptor set the
//! build embeds (`pb::FILE_DESCRIPTOR_SET`) with prost-reflect. The HTTP/JSON
//! API and the CLI's `--output json` share it, and a message or RPC added to
//! `proto/` is mapped with no code here.

use std::sync::LazyLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor};

use crate::grpc::pb;

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set the build wrote decodes")
});

/// Our package's services; the API served over HTTP/JSON.
pub fn services() -> impl Iterator<Item = prost_reflect::ServiceDescriptor> {
    POOL.services()
        .filter(|service| service.package_name() == "apikeyd.v1")
}

/// The unary RPC `method` of `service` (e.g. `apikeyd.v1.KeyService`,
/// `CreateKey`), if our API has one.
pub fn unary_method(service: &str, method: &str) -> Option<MethodDescriptor> {
    services()
        .find(|candidate| candidate.full_name() == service)?
        .methods()
        .find(|candidate| {
            candidate.name() == method
                && !candidate.is_client_streaming()
                && !candidate.is_server_streaming()
        })
}

/// A message in the proto3 JSON mapping → its protobuf encoding. Unknown
/// fields are refused, so a misspelt field is an error rather than ignored.
/// The error is the parser's sentence (field and position).
pub fn json_to_protobuf(descriptor: MessageDescriptor, json: &[u8]) -> Result<Vec<u8>, String> {
    if json.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let message = DynamicMessage::deserialize(descriptor, &mut deserializer)
        .and_then(|message| deserializer.end().map(|()| message))
        .map_err(|e| e.to_string())?;
    Ok(message.encode_to_vec())
}

/// A protobuf encoding of `descriptor`'s message → its proto3 JSON mapping
/// (lowerCamelCase names, enums by name, 64-bit integers as strings, default
/// values left out).
pub fn protobuf_to_json(
    descriptor: MessageDescriptor,
    protobuf: &[u8],
) -> Result<serde_json::Value, prost::DecodeError> {
    let message = DynamicMessage::decode(descriptor, protobuf)?;
    Ok(serde_json::to_value(&message).expect("a decoded message serialises"))
}

/// A generated message (named by its full protobuf name, e.g.
/// `apikeyd.v1.ApiKey`) in the proto3 JSON mapping.
pub fn to_json(full_name: &str, message: &impl Message) -> serde_json::Value {
    let descriptor = POOL
        .get_message_by_name(full_name)
        .unwrap_or_else(|| panic!("{full_name} is one of our messages"));
    protobuf_to_json(descriptor, &message.encode_to_vec())
        .expect("a message we encoded decodes by its own descriptor")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input_of(service: &str, method: &str) -> MessageDescriptor {
        unary_method(service, method).unwrap().input()
    }

    #[test]
    fn every_rpc_of_our_services_is_found_by_name() {
        let names: Vec<String> = services()
            .flat_map(|s| {
                s.methods()
                    .map(|m| m.full_name().to_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(
            names.contains(&"apikeyd.v1.KeyService.CreateKey".to_owned()),
            "{names:?}"
        );
        assert!(names.contains(&"apikeyd.v1.ValidationService.Validate".to_owned()));
        assert!(names.contains(&"apikeyd.v1.RateLimitService.CheckRateLimit".to_owned()));
        assert!(unary_method("apikeyd.v1.KeyService", "Nope").is_none());
        assert!(unary_method("google.protobuf.Timestamp", "CreateKey").is_none());
    }

    #[test]
    fn json_accepts_camel_case_and_proto_names_and_well_known_types() {
        let json = br#"{"ownerId": "user_1", "name": "n", "scopes": ["a:b"], "expires_in_days": 30,
                        "environment": "ENVIRONMENT_TEST",
                        "rateLimits": [{"limit": 5, "window": "60s"}]}"#;

        let bytes = json_to_protobuf(input_of("apikeyd.v1.KeyService", "CreateKey"), json).unwrap();

        let request = pb::CreateKeyRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(request.owner_id, "user_1");
        assert_eq!(request.expires_in_days, Some(30));
        assert_eq!(request.environment, pb::Environment::Test as i32);
        let window = request.rate_limits[0].window.unwrap();
        assert_eq!((window.seconds, window.nanos), (60, 0));
    }

    #[test]
    fn unknown_fields_and_bad_json_are_refused_with_the_parsers_words() {
        let descriptor = input_of("apikeyd.v1.KeyService", "CreateKey");

        let misspelt = json_to_protobuf(descriptor.clone(), br#"{"owner": "user_1"}"#).unwrap_err();
        let truncated = json_to_protobuf(descriptor.clone(), br#"{"ownerId": "#).unwrap_err();
        let trailing = json_to_protobuf(descriptor, br#"{} {}"#).unwrap_err();

        assert!(misspelt.contains("owner"), "{misspelt}");
        assert!(truncated.contains("line 1"), "{truncated}");
        assert!(trailing.contains("trailing"), "{trailing}");
    }

    #[test]
    fn an_empty_body_is_the_empty_message() {
        let bytes =
            json_to_protobuf(input_of("apikeyd.v1.KeyService", "ListKeys"), b" \n").unwrap();

        assert!(bytes.is_empty());
    }

    #[test]
    fn output_follows_the_proto3_json_mapping() {
        let response = pb::UpdateKeyRequest {
            id: "key_1".to_owned(),
            quota_change: Some(pb::update_key_request::QuotaChange::AddToQuota(5)),
            ..Default::default()
        };

        let json = to_json("apikeyd.v1.UpdateKeyRequest", &response);

        assert_eq!(json, serde_json::json!({"id": "key_1", "addToQuota": "5"}));
    }
}
