//! The `pyfpm` command. All logic lives in the library; see `lib.rs` for the map.

fn main() {
    std::process::exit(pyfpm::cli::main());
}
