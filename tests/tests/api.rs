//! The public API's guarantees that are not about bytes on disk: region handles cannot be
//! forged or carried to another engine, and lookups that could panic return errors.

use ckpt_engine::read::Version;
use ckpt_engine::{Checkpointer, Config, Error};

#[test]
fn a_region_handle_only_works_with_the_engine_that_issued_it() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let mut a = Checkpointer::open(a_dir.path(), "a", Config::default()).unwrap();
    let mut b = Checkpointer::open(b_dir.path(), "b", Config::default()).unwrap();
    let ha = a.alloc_region::<u64>(1, 1000).unwrap();
    let hb = b.alloc_region::<u64>(1, 1000).unwrap();
    a.region_mut(&ha).unwrap()[0] = 7;
    // Same id, same size, other engine: refused, never someone else's memory.
    let e = b.region_mut(&ha).unwrap_err();
    assert!(matches!(e, Error::Region { id: 1, .. }), "{e}");
    assert!(a.region(&hb).is_err());
    // The engine issues a handle for a region it holds, and checks the element size.
    let h = a.handle::<u64>(1).unwrap();
    assert_eq!(a.region(&h).unwrap()[0], 7);
    assert!(a.handle::<u64>(2).is_err());
    let h3 = a.alloc_region::<u8>(3, 1001).unwrap();
    assert_eq!(h3.len(), 1001);
    assert!(a.handle::<u64>(3).is_err(), "1001 bytes are not whole u64s");
}

#[test]
fn restoring_a_region_number_that_does_not_exist_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut ck = Checkpointer::open(dir.path(), "r", Config::default()).unwrap();
    ck.alloc_region::<u8>(1, 5000).unwrap();
    let s = ck.checkpoint().unwrap();
    let v = Version::open(&s.path).unwrap();
    let mut buf = vec![0u8; 5000];
    v.restore_region(0, &mut buf).unwrap();
    let e = v.restore_region(1, &mut buf).unwrap_err();
    assert!(e.to_string().contains("region number 1"), "{e}");
}
