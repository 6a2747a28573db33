//! The client's reply parser (RESP2 and RESP3): never panics, and gives
//! the same replies however the bytes are cut into reads.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry_server::fuzz::replies(data));
