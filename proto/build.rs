//! Generates the gRPC code from `proto/`. protoc comes from the `protoc-bin-vendored` crate, so a fresh
//! machine needs nothing installed by hand; a `PROTOC` set in the environment still wins.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    if std::env::var_os("PROTOC").is_none() {
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    }
    let files = [
        "proto/ssofleet/v1/agent.proto",
        "proto/ssofleet/v1/operator.proto",
    ];
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(config, &files, &["proto"])?;
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    Ok(())
}
