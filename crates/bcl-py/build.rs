//! Embeds an rpath to libtorch's lib/ directory (reported by torch-sys, a direct dependency for
//! this reason) so the extension finds libtorch even where `torch` was not imported first.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
