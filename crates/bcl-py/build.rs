//! Embeds an rpath to libtorch's lib/ directory so the extension finds libtorch even where
//! `torch` was not imported first: in a development build (`maturin develop`) the directory
//! torch-sys reports (a direct dependency for this reason); in a wheel (`BCL_PY_WHEEL` set, as
//! scripts/test-wheel.sh sets it) torch's lib/ beside the installed package
//! (`site-packages/torch/lib`), so the wheel names no path of the machine that built it.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=BCL_PY_WHEEL");
    if std::env::var_os("BCL_PY_WHEEL").is_some() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../torch/lib");
    } else if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
