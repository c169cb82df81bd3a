//! The management API needs a root key with the right permission; Validate
//! needs none.

use apikeyd::grpc::pb;
use tonic::{Code, Request};

use crate::helpers::{TestApp, assert_status, create_request, with_bearer};
use crate::on_every_backend;

/// Creates a root key through the real CLI, as an operator would.
pub(crate) fn cli_root_key(app: &TestApp, permissions: &[&str]) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_apikeyd"));
    command
        .args(["root-key", "create", "--name", "ops"])
        .env("APIKEYD_DATA_DIR", app.data_dir.path())
        .env("APIKEYD_ROOT_KEY_ARGON2_MEMORY_KIB", "1024")
        .env("APIKEYD_ROOT_KEY_ARGON2_ITERATIONS", "1")
        .env_remove("APIKEYD_DATABASE_URL");
    for permission in permissions {
        command.args(["--permission", permission]);
    }
    if let Some(url) = &app.database_url {
        command.env("APIKEYD_DATABASE_URL", url);
    }
    let output = command.output().expect("run apikeyd root-key create");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    stdout
        .lines()
        .last()
        .expect("the key on the last line")
        .to_owned()
}

on_every_backend! {
    async fn management_without_credentials_is_unauthenticated(app) {
        let result = app.keys.clone().create_key(Request::new(create_request("user_1", &["*"]))).await;

        assert_status(result, Code::Unauthenticated, "authorization");
    }

    async fn an_unknown_root_key_is_unauthenticated(app) {
        // Well formed, right checksum, but never issued by this server.
        let other = crate::helpers::spawn_app(crate::helpers::Backend::Sqlite).await;

        let result = app.keys.clone().create_key(with_bearer(create_request("user_1", &["*"]), &other.root_key)).await;

        assert_status(result, Code::Unauthenticated, "not known");
    }

    async fn an_api_key_is_not_a_root_key(app) {
        let (api_key, _) = app.create_key("user_1", &["*"]).await;

        let result = app.keys.clone().create_key(with_bearer(create_request("user_1", &["*"]), &api_key)).await;

        assert_status(result, Code::Unauthenticated, "root key");
    }

    async fn a_garbled_bearer_is_unauthenticated(app) {
        let result = app.keys.clone().create_key(with_bearer(create_request("user_1", &["*"]), "rk_nonsense")).await;

        assert_status(result, Code::Unauthenticated, "well-formed");
    }

    async fn a_read_only_root_key_reads_but_cannot_write(app) {
        let (_, existing) = app.create_key("user_1", &["*"]).await;
        let reader = cli_root_key(&app, &["keys:read"]);
        assert!(reader.starts_with("rk_"), "{reader}");

        let got = app.keys.clone().get_key(with_bearer(pb::GetKeyRequest { id: existing.id.clone() }, &reader)).await;
        assert!(got.is_ok(), "{got:?}");

        let created = app.keys.clone().create_key(with_bearer(create_request("user_1", &["*"]), &reader)).await;
        assert_status(created, Code::PermissionDenied, "keys:write");
        let revoked = app.keys.clone()
            .revoke_key(with_bearer(pb::RevokeKeyRequest { id: existing.id.clone(), owner_id: String::new() }, &reader))
            .await;
        assert_status(revoked, Code::PermissionDenied, "keys:write");
    }

    async fn a_wildcard_root_key_from_the_cli_can_write(app) {
        let writer = cli_root_key(&app, &["keys:*"]);

        let created = app.keys.clone().create_key(with_bearer(create_request("user_1", &["*"]), &writer)).await;

        assert!(created.is_ok(), "{created:?}");
    }
}
