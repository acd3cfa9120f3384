//! Socketmap keys on arbitrary bytes, looked up in every map of MIAB's fixture box: found or
//! not found, never a panic, and a found value fits one reply.
#![no_main]

use std::sync::{Mutex, OnceLock};

fn db() -> &'static Mutex<(miab_e2e::Scratch, userdb::UserDb)> {
    static DB: OnceLock<Mutex<(miab_e2e::Scratch, userdb::UserDb)>> = OnceLock::new();
    DB.get_or_init(|| {
        let dir = miab_e2e::Scratch::new("fuzz");
        let path = miab_e2e::fixture::miab_box(dir.path());
        let db = userdb::UserDb::open(&path, userdb::Access::ReadOnly).unwrap();
        Mutex::new((dir, db))
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let guard = db().lock().unwrap();
    lookup::fuzz_lookup(&guard.1, data);
});
