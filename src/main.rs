//! The `qsplit` binary: parse arguments, set up logging, hand over to `cli`.

fn main() {
    std::process::exit(qsplit::cli::main());
}
