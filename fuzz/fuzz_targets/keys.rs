//! Socketmap keys on arbitrary bytes, looked up in every map of MIAB's fixture box: found or
//! not found, never a panic, and a found value fits one reply.
#![no_main]

use std::sync::OnceLock;

fn directory() -> &'static (miab_e2e::Scratch, directory::Snapshot) {
    static DIR: OnceLock<(miab_e2e::Scratch, directory::Snapshot)> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = miab_e2e::Scratch::new("fuzz");
        let path = miab_e2e::fixture::miab_box(dir.path());
        let db = userdb::UserDb::open(&path, userdb::Access::ReadOnly).unwrap();
        let snapshot = directory::Snapshot::read(&db).unwrap();
        (dir, snapshot)
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lookup::fuzz_lookup(&directory().1, data);
});
