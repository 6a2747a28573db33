//! The broker's request parser: never panics, and gives the same requests
//! (and the same error) however the bytes are cut into reads — it resumes
//! where a read stopped.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry_server::fuzz::requests(data));
