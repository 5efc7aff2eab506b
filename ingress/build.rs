//! Compiles the echo worker's and the ResolveRoute gRPC services (protox: no protoc needed) and
//! writes the router's encoded descriptor set for gRPC server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["echo.proto", "router.proto"], ["proto"])?;
    let router_only = prost_types::FileDescriptorSet {
        file: fds
            .file
            .iter()
            .filter(|f| f.package() == "actorgate.router.v1")
            .cloned()
            .collect(),
    };
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("router_descriptor.bin"),
        prost::Message::encode_to_vec(&router_only),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
