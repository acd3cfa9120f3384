//! SASL PLAIN and LOGIN responses and login folding on arbitrary bytes: no panic, and an
//! accepted login is non-empty, without control characters, and folds stably.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    authd::fuzz_sasl(data);
});
