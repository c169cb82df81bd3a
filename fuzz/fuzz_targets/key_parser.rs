#![no_main]
//! `apikeyd::fuzzing::key_parser`: see its doc comment for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| apikeyd::fuzzing::key_parser(data));
