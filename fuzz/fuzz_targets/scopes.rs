#![no_main]
//! `apikeyd::fuzzing::scopes`: see its doc comment for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| apikeyd::fuzzing::scopes(data));
