//! Two build steps:
//! - an rpath to libtorch's lib folder, so the binary (and the test
//!   executables) find libtorch at run time without LD_LIBRARY_PATH;
//! - the gRPC code and the reflection descriptor set from the proto, compiled
//!   with the protoc that protoc-bin-vendored carries (no system protoc needed).
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // torch-sys (links = "tch") exports the lib folder it linked against.
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    println!("cargo:rerun-if-env-changed=LIBTORCH");

    if std::env::var_os("PROTOC").is_none() {
        // Build scripts are single-threaded; prost-build reads PROTOC.
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let proto = "proto/smoothcert/v1/certifier.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("smoothcert_descriptor.bin"))
        .compile_protos(&[proto], &["proto"])?;
    Ok(())
}
