//! Embeds an rpath to libtorch's lib folder, so the binary (and the test
//! executables) find libtorch at run time without LD_LIBRARY_PATH.
fn main() {
    // torch-sys (links = "tch") exports the lib folder it linked against.
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    println!("cargo:rerun-if-env-changed=LIBTORCH");
}
