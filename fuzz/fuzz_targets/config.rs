#![no_main]
//! `apikeyd::fuzzing::config`: see its doc comment for what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| apikeyd::fuzzing::config(data));
