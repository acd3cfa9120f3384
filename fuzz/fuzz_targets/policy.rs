//! The policy delegation request decoder on arbitrary bytes fed in arbitrary pieces: no panic,
//! bounded buffering, and every reply is exactly one attribute line and a blank line.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    policyd::fuzz_decode(data);
});
