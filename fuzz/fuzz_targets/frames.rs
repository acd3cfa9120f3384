//! miab-milter's frame follower (the connection cap's view of the milter protocol) on
//! arbitrary bytes split at an arbitrary point: the same stage either way, no panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    miab_milter::fuzz_frames(data);
});
