//! The `skiff` binary; everything lives in the library (`skiff_runtime::cli`).

fn main() -> std::process::ExitCode {
    // `RUST_BACKTRACE=1` is for panics. Without this, it also makes every error value
    // capture a backtrace — and wasmtime builds one each time a store with component-model
    // async support is dropped, once per request: measured, a 0.2 hello lost about a
    // fifth of its throughput. An operator who wants error backtraces sets
    // RUST_LIB_BACKTRACE=1 explicitly.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: first thing in main, before any thread exists.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    skiff_runtime::cli::main()
}
