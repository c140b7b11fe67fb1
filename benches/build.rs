//! Generates tonic's gRPC code for the `peers` feature, with the protoc shipped in
//! `protoc-bin-vendored` (nothing to install).

fn main() {
    println!("cargo:rerun-if-changed=proto/echo.proto");
    #[cfg(feature = "peers")]
    {
        let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
        std::env::set_var("PROTOC", protoc);
        tonic_prost_build::configure()
            .bytes(".")
            .compile_protos(&["proto/echo.proto"], &["proto"])
            .expect("compile proto/echo.proto");
    }
}
