//! `test_vmalloc`: the kernel's vmalloc test module and script, for this library.
//!
//! Everything lives in the [`test_vmalloc`] library; this only hands it the command line.

fn main() -> std::process::ExitCode {
    test_vmalloc::main_with_args(std::env::args_os())
}
