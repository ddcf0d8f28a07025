//! Tests against a real qemu-system-x86_64; see qemu-tests/README.md.

mod harness;
mod qga_tests;
mod qmp_tests;
