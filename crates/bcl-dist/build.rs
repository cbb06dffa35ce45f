//! Compiles the C++ shim over c10d against the libtorch that torch-sys found (its include/ and
//! lib/), with Gloo's headers from the system (Debian: libgloo-dev), and embeds an rpath to
//! libtorch's lib/.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src/shim.cpp");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=BCL_CUDA_INCLUDE");
    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys did not report libtorch's lib/"),
    );
    let root = lib
        .parent()
        .expect("libtorch's lib/ has a parent")
        .to_path_buf();
    let include = root.join("include");
    if !std::path::Path::new("/usr/include/gloo/context.h").exists()
        && std::env::var_os("BCL_GLOO_INCLUDE").is_none()
    {
        println!(
            "cargo:warning=Gloo's headers are missing: install them (Debian: apt-get install libgloo-dev) or set BCL_GLOO_INCLUDE"
        );
    }
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("src/shim.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("USE_C10D_GLOO", None)
        .warnings(false);
    if let Some(g) = std::env::var_os("BCL_GLOO_INCLUDE") {
        build.include(g);
    }
    if std::env::var_os("CARGO_FEATURE_NCCL").is_some() {
        build
            .define("USE_C10D_NCCL", None)
            .define("USE_CUDA", None)
            .define("BCL_WITH_NCCL", None);
        if let Some(dirs) = std::env::var_os("BCL_CUDA_INCLUDE") {
            for d in std::env::split_paths(&dirs) {
                build.include(d);
            }
        }
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
    }
    build.compile("bcl_dist_shim");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}
