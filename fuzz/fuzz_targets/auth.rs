//! The Dovecot auth-client line decoder and parser on arbitrary bytes: no panic, lines within
//! the limit, and every reply built from parsed values is one line.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    authd::fuzz_decode(data);
});
