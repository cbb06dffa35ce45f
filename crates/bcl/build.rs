//! Compiles `csrc/exec.cpp` (the libtorch calls tch does not expose: bfloat16 autocast and
//! memory formats) against the libtorch torch-sys found, and embeds an rpath to libtorch's lib/
//! directory so the binaries and tests run without LD_LIBRARY_PATH.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=csrc/exec.cpp");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys did not report libtorch's lib/"),
    );
    let include = lib
        .parent()
        .expect("libtorch's lib/ has a parent")
        .join("include");
    cc::Build::new()
        .cpp(true)
        .file("csrc/exec.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .compile("bcl_exec");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}
