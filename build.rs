//! Compiles `proto/` into tonic services and descriptor sets for server
//! reflection: our own API (clients and servers), and the two Envoy services
//! apikeyd answers (servers only) from the protos vendored in
//! `proto/third_party`. protoc comes from the `protoc-bin-vendored` crate
//! unless `PROTOC` names one, so a bare machine builds without installing
//! anything.

use std::{env, error::Error, path::PathBuf};

const PROTOS: [&str; 8] = [
    "proto/apikeyd/v1/api_key.proto",
    "proto/apikeyd/v1/audit_service.proto",
    "proto/apikeyd/v1/import_service.proto",
    "proto/apikeyd/v1/key_service.proto",
    "proto/apikeyd/v1/rate_limit.proto",
    "proto/apikeyd/v1/rate_limit_service.proto",
    "proto/apikeyd/v1/root_key_service.proto",
    "proto/apikeyd/v1/validation_service.proto",
];

/// Envoy's ext_authz and rate-limit services; their imports come along.
const ENVOY_PROTOS: [&str; 2] = [
    "proto/third_party/envoy/service/auth/v3/external_auth.proto",
    "proto/third_party/envoy/service/ratelimit/v3/rls.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    if env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    let well_known = protoc_bin_vendored::include_path()?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let includes = [PathBuf::from("proto"), well_known.clone()];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("apikeyd_descriptor.bin"))
        .compile_protos(&PROTOS.map(PathBuf::from), &includes)?;

    let envoy_includes = [PathBuf::from("proto/third_party"), well_known];
    tonic_prost_build::configure()
        .build_client(false)
        .file_descriptor_set_path(out_dir.join("envoy_descriptor.bin"))
        .include_file("envoy.rs")
        .compile_protos(&ENVOY_PROTOS.map(PathBuf::from), &envoy_includes)?;

    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
