//! Any bytes as a job's global commit record: decoding returns an error or a record that
//! encodes back to the same bytes' meaning.
#![no_main]

use std::path::Path;

use ckpt_engine::job::CommitRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = CommitRecord::decode(Path::new("fuzz.commit.1"), data) {
        let again = CommitRecord::decode(Path::new("fuzz.commit.1"), &r.encode())
            .expect("a decoded record re-encodes to a valid one");
        assert_eq!(again, r);
    }
});
