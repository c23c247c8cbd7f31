//! The `skiff` binary; everything lives in the library (`skiff_runtime::cli`).

fn main() -> std::process::ExitCode {
    skiff_runtime::cli::main()
}
