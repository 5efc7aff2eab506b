//! Compiles `proto/ateapi.proto` with protox (no protoc needed) and generates tonic client and
//! server code for `ateapi.Control`. Server methods get default stubs answering UNIMPLEMENTED,
//! so an implementation (the simulator, the test fake) only writes the RPCs it serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["ateapi.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}
