//! Compiles `proto/` into tonic services and a descriptor set for server
//! reflection. protoc comes from the `protoc-bin-vendored` crate unless
//! `PROTOC` names one, so a bare machine builds without installing anything.

use std::{env, error::Error, path::PathBuf};

const PROTOS: [&str; 6] = [
    "proto/apikeyd/v1/api_key.proto",
    "proto/apikeyd/v1/import_service.proto",
    "proto/apikeyd/v1/key_service.proto",
    "proto/apikeyd/v1/rate_limit.proto",
    "proto/apikeyd/v1/rate_limit_service.proto",
    "proto/apikeyd/v1/validation_service.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    if env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    let well_known = protoc_bin_vendored::include_path()?;
    let includes = [PathBuf::from("proto"), well_known];
    let protos = PROTOS.map(PathBuf::from);
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("apikeyd_descriptor.bin"))
        .compile_protos(&protos, &includes)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
