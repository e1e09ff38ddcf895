//! `test_vmalloc`: the kernel's vmalloc test module and script, for this library.
//!
//! Everything lives in [`benches::runner`]; this only hands it the command line.

fn main() -> std::process::ExitCode {
    benches::runner::main_with_args(std::env::args_os())
}
