//! A forked flush that hangs (armed here to sleep for ever before it starts, as a child
//! waiting on a lock another thread held at the fork would) is killed once it has made no
//! progress for `flush_stall_limit`: its checkpoint fails and says why, nothing is committed,
//! and the next checkpoint stores its pages. Its own test binary: the hang is armed for the
//! whole process.

use std::time::{Duration, Instant};

use ckpt_engine::{Checkpointer, Config, Snapshot, Tracking};

#[test]
fn a_hung_forked_flush_is_killed_and_its_pages_go_into_the_next_version() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::default()
        .with_tracking(Tracking::Hash)
        .with_snapshot(Snapshot::Fork)
        .with_flush_stall_limit(Some(Duration::from_secs(2)));
    let mut ck = Checkpointer::open(dir.path(), "s", config).unwrap();
    let h = ck.alloc_region::<u8>(1, 4 << 20).unwrap();
    ck.region_mut(&h).unwrap().fill(1);
    let v1 = ck.checkpoint().unwrap();
    ck.region_mut(&h).unwrap()[..3 * 4096].fill(2);

    ckpt_engine::fault::arm_hang(Some("flush-child"));
    let t = Instant::now();
    let flight = ck.checkpoint_async().unwrap();
    // The child took its copy of the armed hang at the fork.
    ckpt_engine::fault::arm_hang(None);
    assert_eq!(flight.snapshot(), Some(Snapshot::Fork));
    let version = flight.version();
    let e = flight.wait().expect_err("a hung flush committed");
    let secs = t.elapsed().as_secs_f64();
    let msg = e.to_string();
    assert!(
        msg.contains("no progress") && msg.contains("killed"),
        "{msg}"
    );
    assert!(msg.contains(&format!("s.ckpt.{version}")), "{msg}");
    assert!((2.0..60.0).contains(&secs), "killed after {secs} s");
    assert!(!dir.path().join(format!("s.ckpt.{version}")).exists());

    // Nothing was lost: the next checkpoint stores the three pages against version 1, and
    // restores to them.
    let d = ck.checkpoint().unwrap();
    assert_eq!(d.parent, Some(v1.version));
    assert_eq!(d.pages_stored, 3);
    let want = ck.region(&h).unwrap().to_vec();
    drop(ck);
    let mut ck2 = Checkpointer::open(dir.path(), "s", Config::default()).unwrap();
    let h2 = ck2.alloc_region::<u8>(1, 4 << 20).unwrap();
    ck2.restore(Some(d.version)).unwrap();
    assert!(ck2.region(&h2).unwrap() == want.as_slice());
}

#[test]
fn a_stall_limit_under_a_second_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::default().with_flush_stall_limit(Some(Duration::from_millis(500)));
    let e = Checkpointer::open(dir.path(), "s", config).expect_err("accepted 0.5 s");
    assert!(e.to_string().contains("stall limit"), "{e}");
}
