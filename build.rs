//! Compiles `proto/` into Rust and writes the descriptor set that reflection serves.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Honour a system `protoc` when the caller points at one; otherwise use the vendored binary
    // so that a fresh machine needs nothing installed.
    if env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded; nothing else reads the environment now.
        unsafe { env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // Download chunks are sliced from storage reads without copying.
        .bytes(".contactexport.v1.DownloadExportResponse.data")
        .file_descriptor_set_path(out_dir.join("contactexport_descriptor.bin"))
        .compile_protos(&["proto/contactexport/v1/export_service.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
