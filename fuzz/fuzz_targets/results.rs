//! The Authentication-Results writer on arbitrary HELO, MAIL FROM and From: values: one line,
//! one method=result outside quoted strings.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    miab_milter::fuzz_results(data);
});
