//! The log as recovery reads it: a segment's frames checked, and every
//! record they hold decoded and replayed, never panic
//! (ferry_server::fuzz::log).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry_server::fuzz::log(data));
