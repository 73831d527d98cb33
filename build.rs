//! Links against the CPython that `PYO3_PYTHON` names (the Makefile sets it to the interpreter
//! `.venv` was made from) and records its library directory as the binary's rpath, so the
//! kernel runs without `LD_LIBRARY_PATH`.

fn main() {
    let config = pyo3_build_config::get();
    let version = config.version();
    assert!(
        version.major == 3 && version.minor >= 12,
        "parakernel needs CPython >= 3.12 with a shared libpython; PYO3_PYTHON points at {}.{}. \
         Run `make` (it finds one) or set PYO3_PYTHON.",
        version.major,
        version.minor
    );
    assert!(
        config.shared(),
        "parakernel embeds CPython and needs a shared libpython (configure --enable-shared)"
    );
    if let Some(lib_dir) = config.lib_dir() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    }
    if let Some(executable) = config.executable() {
        println!("cargo:rustc-env=PARAKERNEL_BUILD_PYTHON={executable}");
    }
    pyo3_build_config::use_pyo3_cfgs();
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
