//! Between the policy codec and the reply: the greylist normaliser, the choice of checks, the
//! texts and the combined action on arbitrary bytes: no panic, and every reply is one line.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    policyd::fuzz_evaluate(data);
});
