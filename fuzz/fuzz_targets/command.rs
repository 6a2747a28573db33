//! Every request a client can send, run against a broker in memory: the
//! command parser and every command's work never panic, and every wait
//! ends at its timeout (ferry_server::fuzz::commands).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry_server::fuzz::commands(data));
