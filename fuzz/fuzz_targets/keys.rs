//! Socketmap keys on arbitrary bytes, looked up in every map of MIAB's fixture box: found or
//! not found, never a panic, and a found value fits one reply.
#![no_main]

use std::sync::OnceLock;

fn db() -> &'static userdb::UserDb {
    static DB: OnceLock<(miab_e2e::Scratch, userdb::UserDb)> = OnceLock::new();
    &DB.get_or_init(|| {
        let dir = miab_e2e::Scratch::new("fuzz");
        let path = miab_e2e::fixture::miab_box(dir.path());
        let db = userdb::UserDb::open(&path, userdb::Access::ReadOnly).unwrap();
        (dir, db)
    })
    .1
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lookup::fuzz_lookup(db(), data);
});
