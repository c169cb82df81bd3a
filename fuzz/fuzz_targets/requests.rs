#![no_main]
//! `apikeyd::fuzzing::requests`: see its doc comment for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| apikeyd::fuzzing::requests(data));
