//! The `fluister` binary; everything lives in the library's [`fluister::cli`].
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    fluister::cli::main()
}
