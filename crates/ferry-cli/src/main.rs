//! The `ferry` binary: the command line (lib.rs).

fn main() {
    let host = ferry_cli::Host {
        this_program: Vec::new(),
    };
    std::process::exit(ferry_cli::run(std::env::args_os(), host));
}
