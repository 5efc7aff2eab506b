//! Compiles `proto/credprovider.proto` (upstream's credential provider API, DESIGN §9) with
//! protox (no protoc needed) into tonic client and server code; the server side serves the
//! tests' fake providers.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["credprovider.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
