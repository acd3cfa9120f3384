//! The socketmap netstring and request decoder on arbitrary bytes: no panic, no over-read, and
//! every encoded reply decodes again.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lookup::fuzz_decode(data);
});
