//! The operator's command line: the real `apikeyd` binary as a gRPC client of
//! a live server, as a person or a script runs it.

use std::path::Path;

use apikeyd::grpc::pb;

use crate::helpers::{TestApp, code_of};
use crate::on_every_backend;

/// What one run of the binary left behind.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    #[track_caller]
    fn succeeded(&self) -> &str {
        assert_eq!(self.code, 0, "{self:?}");
        &self.stdout
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.succeeded())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    fn mentions(&self, text: &str) -> bool {
        self.stdout.contains(text) || self.stderr.contains(text)
    }
}

/// `apikeyd <args>` against `app`, with the root key from `data_dir`'s
/// bootstrap file and `env` on top of an empty environment.
async fn run_in(app: &TestApp, data_dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_apikeyd"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("APIKEYD_ADDR", format!("http://{}", app.addr))
        .env("APIKEYD_DATA_DIR", data_dir);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run apikeyd");
    Run {
        code: output.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// `apikeyd <args>` against `app` with its bootstrap root key, as in the walkthrough.
async fn run(app: &TestApp, args: &[&str]) -> Run {
    run_in(app, app.data_dir.path(), &[], args).await
}

async fn create(app: &TestApp, owner: &str) -> String {
    let created = run(
        app,
        &[
            "keys",
            "create",
            "--owner",
            owner,
            "--name",
            "Nightly export",
            "--scope",
            "posts:read",
            "--scope",
            "users:read",
            "--expires-in",
            "30d",
        ],
    )
    .await;
    created.succeeded().trim().to_owned()
}

/// The id inside a full key: `sk_live_<id>_<secret><checksum>`.
fn id_of(key: &str) -> &str {
    key.split('_').nth(2).unwrap()
}

/// The secret part of a full key, which no listing may show.
fn secret_of(key: &str) -> &str {
    key.rsplit('_').next().unwrap()
}

on_every_backend! {
    async fn create_prints_the_key_once_and_list_and_get_never_show_a_secret(app) {
        let created = run(&app, &["keys", "create", "--owner", "user_1", "--name", "Nightly export",
            "--scope", "posts:read", "--expires-in", "30d", "--env", "test", "--metadata", "team=data"]).await;
        let key = created.succeeded().trim().to_owned();
        let id = id_of(&key).to_owned();

        let listed = run(&app, &["keys", "list", "--owner", "user_1"]).await;
        let got = run(&app, &["keys", "get", &id]).await;

        assert_eq!(created.stdout.lines().count(), 1, "the key alone on stdout: {created:?}");
        assert!(key.starts_with("sk_test_"), "{key}");
        assert!(created.stderr.contains("will not be shown again"), "{created:?}");
        assert_eq!(code_of(&app.validate(&key, &["posts:read"]).await), pb::ValidationCode::Valid);
        let table = listed.succeeded();
        assert!(table.starts_with("ID "), "a table with a header: {table}");
        assert!(table.contains(&id) && table.contains("Nightly export") && table.contains("sk_test_"), "{table}");
        assert!(got.succeeded().contains("team=data"), "{got:?}");
        for output in [&listed, &got] {
            assert!(!output.mentions(secret_of(&key)), "a secret was printed: {output:?}");
            assert!(!output.mentions(&app.root_key), "the root key was printed: {output:?}");
            assert!(!output.mentions(secret_of(&app.root_key)), "the root key was printed: {output:?}");
        }
        assert!(!created.mentions(secret_of(&app.root_key)));
    }

    async fn json_output_is_the_proto3_json_of_the_response(app) {
        let created = run(&app, &["keys", "create", "--owner", "user_1", "--name", "n", "--scope", "a:b", "--output", "json"]).await;
        let id = created.json()["apiKey"]["id"].as_str().unwrap().to_owned();

        let listed = run(&app, &["keys", "list", "-o", "json"]).await;
        let got = run(&app, &["keys", "get", &id, "--output", "json"]).await;

        assert!(created.json()["key"].as_str().unwrap().starts_with("sk_live_"));
        assert!(created.stderr.contains("will not be shown again"));
        assert_eq!(listed.json()["apiKeys"][0]["id"], id.as_str());
        let over_grpc = app.keys.clone()
            .get_key(app.authed(pb::GetKeyRequest { id: id.clone() }))
            .await.unwrap().into_inner();
        assert_eq!(got.json(), apikeyd::proto_json::to_json("apikeyd.v1.GetKeyResponse", &over_grpc));
    }

    async fn validate_exits_0_for_a_good_key_and_1_once_it_is_revoked(app) {
        let key = create(&app, "user_1").await;

        let before = run(&app, &["validate", &key, "--scope", "posts:read"]).await;
        let lacking = run(&app, &["validate", &key, "--scope", "posts:write"]).await;
        let revoked = run(&app, &["keys", "revoke", id_of(&key)]).await;
        let after = run(&app, &["validate", &key]).await;

        assert!(before.succeeded().starts_with("valid:"), "{before:?}");
        assert_eq!(lacking.code, 1, "{lacking:?}");
        assert!(lacking.stdout.starts_with("insufficient_scope:"), "{lacking:?}");
        assert!(revoked.succeeded().contains("revoked"), "{revoked:?}");
        assert_eq!(after.code, 1, "{after:?}");
        assert!(after.stdout.starts_with("revoked:"), "{after:?}");
        assert_eq!(code_of(&app.validate(&key, &[]).await), pb::ValidationCode::Revoked);
    }

    async fn update_rotate_and_usage_change_and_show_the_key(app) {
        let key = create(&app, "user_1").await;
        let id = id_of(&key).to_owned();
        app.validate(&key, &["posts:read"]).await;

        let updated = run(&app, &["keys", "update", &id, "--name", "Renamed", "--disable"]).await;
        let disabled = app.validate(&key, &[]).await;
        let rotated = run(&app, &["keys", "rotate", &id, "--grace", "1h"]).await;
        let usage = run(&app, &["keys", "usage", &id]).await;

        let details = updated.succeeded();
        assert!(details.contains("Renamed") && details.contains("disabled"), "{details}");
        assert_eq!(code_of(&disabled), pb::ValidationCode::Disabled);
        let new_key = rotated.succeeded().trim();
        assert_ne!(new_key, key);
        assert!(rotated.stderr.contains("will not be shown again"), "{rotated:?}");
        assert_eq!(code_of(&app.validate(new_key, &[]).await), pb::ValidationCode::Disabled, "a rotation keeps the settings");
        let usage = usage.succeeded();
        assert!(usage.starts_with("START") && usage.contains("valid"), "{usage}");
    }

    async fn ratelimit_check_exits_0_when_admitted_and_1_when_denied(app) {
        let check = ["ratelimit", "check", "--namespace", "login", "--identifier", "203.0.113.7", "--limit", "1", "--window", "60s"];

        let first = run(&app, &check).await;
        let second = run(&app, &check).await;

        assert!(first.succeeded().starts_with("allowed"), "{first:?}");
        assert_eq!(second.code, 1, "{second:?}");
        assert!(second.stdout.starts_with("denied"), "{second:?}");
    }

    async fn a_bad_command_line_exits_2_before_calling(app) {
        let unknown_flag = run(&app, &["keys", "list", "--bogus"]).await;
        let bad_expiry = run(&app, &["keys", "create", "--owner", "u", "--name", "n", "--scope", "a:b", "--expires-in", "36h"]).await;
        let nothing_to_change = run(&app, &["keys", "update", "0000000000000000"]).await;
        let no_root_key = run_in(&app, tempfile::tempdir().unwrap().path(), &[], &["keys", "list"]).await;

        assert_eq!(unknown_flag.code, 2, "{unknown_flag:?}");
        assert!(unknown_flag.stderr.contains("--bogus"), "{unknown_flag:?}");
        assert_eq!(bad_expiry.code, 2, "{bad_expiry:?}");
        assert!(bad_expiry.stderr.contains("whole number of days"), "{bad_expiry:?}");
        assert_eq!(nothing_to_change.code, 2, "{nothing_to_change:?}");
        assert_eq!(no_root_key.code, 2, "{no_root_key:?}");
        assert!(no_root_key.stderr.contains("APIKEYD_ROOT_KEY"), "{no_root_key:?}");
    }

    async fn a_refused_call_exits_1_with_one_line_naming_the_status(app) {
        let unknown = run(&app, &["keys", "get", "0000000000000000"]).await;
        let wrong_root_key = run_in(&app, app.data_dir.path(), &[("APIKEYD_ROOT_KEY", "rk_not_a_real_key")], &["keys", "list"]).await;
        let other = crate::helpers::spawn_app(crate::helpers::Backend::Sqlite).await;
        let unknown_root_key = run_in(&app, other.data_dir.path(), &[], &["keys", "list"]).await;

        assert_eq!(unknown.code, 1, "{unknown:?}");
        assert_eq!(unknown.stdout, "");
        assert_eq!(unknown.stderr, "apikeyd: NOT_FOUND: no API key with id \"0000000000000000\"\n");
        assert_eq!(wrong_root_key.code, 1, "{wrong_root_key:?}");
        assert!(wrong_root_key.stderr.starts_with("apikeyd: UNAUTHENTICATED: "), "{wrong_root_key:?}");
        assert!(!wrong_root_key.mentions("rk_not_a_real_key"), "the root key was echoed");
        assert_eq!(unknown_root_key.code, 1, "{unknown_root_key:?}");
        assert!(!unknown_root_key.mentions(secret_of(&other.root_key)), "the root key was echoed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_key_comes_from_a_file_when_asked_and_an_absent_server_exits_1() {
    let app = crate::helpers::spawn_app(crate::helpers::Backend::Sqlite).await;
    let elsewhere = tempfile::tempdir().unwrap();
    let key_file = elsewhere.path().join("ops-root-key");
    std::fs::write(&key_file, format!("{}\n", app.root_key)).unwrap();
    let key_file = key_file.to_str().unwrap();

    let from_file = run_in(
        &app,
        elsewhere.path(),
        &[],
        &["keys", "list", "--root-key-file", key_file],
    )
    .await;
    let from_env = run_in(
        &app,
        elsewhere.path(),
        &[("APIKEYD_ROOT_KEY", &app.root_key)],
        &["keys", "list"],
    )
    .await;
    let no_server = run_in(
        &app,
        app.data_dir.path(),
        &[("APIKEYD_ADDR", "127.0.0.1:1")],
        &["keys", "list"],
    )
    .await;

    assert_eq!(from_file.code, 0, "{from_file:?}");
    assert_eq!(from_env.code, 0, "{from_env:?}");
    assert_eq!(no_server.code, 1, "{no_server:?}");
    assert!(
        no_server.stderr.starts_with("apikeyd: UNAVAILABLE: "),
        "{no_server:?}"
    );
    assert_eq!(no_server.stderr.lines().count(), 1, "{no_server:?}");
}
