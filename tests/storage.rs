//! The snapshot under `storage.path`: written at shutdown and restored at start with the
//! totals unchanged; a damaged one (truncated anywhere, any bit flipped, a newer format, an
//! empty file, a directory in its place, something else entirely) is refused with a clear
//! reason, moved aside with its bytes intact, and fanin starts empty and serves.

// Tests may panic on what they expect: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use fanin::config::StorageConfig;
use fanin::proto::v1::snapshot as pb;
use fanin::storage::{FILE, FORMAT, Loaded, Storage};
use fanin::store::{Clock, StoreSettings};
use prost::Message;

fn storage_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fanin-storage-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn settings() -> StoreSettings {
    let config = common::test_config();
    StoreSettings {
        limits: config.limits,
        instance_attributes: config.aggregation.instance_attributes.clone(),
        collision_policy: config.collisions.policy,
        local_host: None,
        verify_unix_pids: true,
        clock: Clock::system(),
    }
}

fn storage_config(dir: &Path) -> StorageConfig {
    StorageConfig {
        path: Some(dir.to_path_buf()),
        interval: Duration::from_secs(3600),
    }
}

/// A fanin with storage in `dir` that took `request`s, stopped gracefully; the snapshot's
/// bytes and the totals it answered before it stopped.
async fn written_snapshot(dir: &Path) -> (Vec<u8>, serde_json::Value) {
    let fanin = common::start_with(|config| config.storage = storage_config(dir)).await;
    for worker in ["w1", "w2"] {
        let request = common::export(worker)
            .wide_counter("requests", "route", 300, 7)
            .counter("jobs", 100, 200, 42)
            .histogram("latency", 100, 200, &[1.0, 5.0], &[2, 3, 1])
            .build();
        fanin.export_grpc(request).await.expect("accepted");
    }
    let totals = serde_json::json!([
        fanin.total("metric=requests&by=").await,
        fanin.total("metric=jobs").await,
    ]);
    fanin.stop().await;
    let bytes = std::fs::read(dir.join(FILE)).expect("the snapshot written at shutdown");
    (bytes, totals)
}

#[tokio::test]
async fn totals_survive_a_graceful_restart() {
    let dir = storage_dir("graceful");
    let (_, before) = written_snapshot(&dir).await;
    assert_eq!(before[1], serde_json::json!(84));
    let fanin = common::start_with(|config| config.storage = storage_config(&dir)).await;
    let after = serde_json::json!([
        fanin.total("metric=requests&by=").await,
        fanin.total("metric=jobs").await,
    ]);
    assert_eq!(after, before);
    // The workers go on with their runs: nothing counted twice.
    fanin
        .export_grpc(common::export("w1").counter("jobs", 100, 300, 50).build())
        .await
        .expect("accepted");
    assert_eq!(fanin.total("metric=jobs").await, serde_json::json!(92));
    let histogram = fanin.query_series("metric=latency").await;
    assert_eq!(histogram[0]["histogram"]["count"], serde_json::json!(12));
    fanin.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes `damaged` where the snapshot goes, loads, and checks it was refused with a reason
/// containing `expected`, moved aside intact, and the store left empty.
fn refused(dir: &Path, damaged: &[u8], expected: &[&str], what: &str) {
    let path = dir.join(FILE);
    std::fs::write(&path, damaged).expect("write the damaged snapshot");
    let storage = Storage::open(&storage_config(dir))
        .expect("open")
        .expect("on");
    let (store, loaded) = storage.load(settings()).expect("load");
    let Loaded::Refused { reason, aside } = loaded else {
        panic!("{what}: not refused: {loaded:?}");
    };
    assert!(
        expected.iter().any(|expected| reason.contains(expected)),
        "{what}: {reason}"
    );
    assert_eq!(store.stream_count(), 0, "{what}: nothing restored");
    assert!(!path.exists(), "{what}: moved away");
    assert_eq!(
        std::fs::read(&aside).expect("moved aside"),
        damaged,
        "{what}: moved aside intact"
    );
    std::fs::remove_file(&aside).expect("the test removes what it made");
}

#[tokio::test]
async fn damaged_snapshots_are_refused_moved_aside_and_fanin_starts_empty() {
    let dir = storage_dir("damaged");
    let (good, _) = written_snapshot(&dir).await;
    assert!(
        good.len() > 8 * 1024,
        "{} bytes: big enough to cut",
        good.len()
    );

    let damaged = ["truncated", "checksum", "not a snapshot"];
    for cut in (0..good.len()).step_by(1024).chain([good.len() - 1]) {
        let expected: &[&str] = if cut == 0 { &["empty"] } else { &damaged };
        refused(&dir, &good[..cut], expected, &format!("cut at {cut}"));
    }
    // Every bit of the header and the body's first bytes, then bits spread over the body.
    let positions = (0..64).chain((64..good.len()).step_by(good.len() / 128));
    for (n, position) in positions.enumerate() {
        for bit in [0, 3, 7] {
            if position >= 64 && bit != n % 8 {
                continue;
            }
            let mut flipped = good.clone();
            flipped[position] ^= 1 << bit;
            refused(
                &dir,
                &flipped,
                &["truncated", "checksum", "not a", "format", "decoded"],
                &format!("bit {bit} of byte {position}"),
            );
        }
    }
    let file = pb::SnapshotFile::decode(good.as_slice()).expect("a good snapshot decodes");
    let mut newer = file.clone();
    newer.header.as_mut().expect("a header").format = FORMAT + 1;
    refused(&dir, &newer.encode_to_vec(), &["newer"], "a newer format");
    refused(&dir, b"", &["empty"], "an empty file");
    refused(
        &dir,
        b"receivers:\n  otlp: {}\n",
        &["not a snapshot", "not a fanin snapshot"],
        "a config file",
    );

    // A directory in its place is moved aside too.
    let path = dir.join(FILE);
    std::fs::create_dir(&path).expect("a directory where the snapshot goes");
    std::fs::write(path.join("inside"), b"kept").expect("a file inside it");
    let storage = Storage::open(&storage_config(&dir))
        .expect("open")
        .expect("on");
    let (_, loaded) = storage.load(settings()).expect("load");
    let Loaded::Refused { reason, aside } = loaded else {
        panic!("a directory: not refused: {loaded:?}");
    };
    assert!(reason.contains("not a regular file"), "{reason}");
    assert_eq!(std::fs::read(aside.join("inside")).expect("kept"), b"kept");
    drop(storage);

    // And fanin, with a damaged snapshot in place, starts empty and serves.
    std::fs::write(dir.join(FILE), &good[..good.len() / 2]).expect("a half snapshot");
    let fanin = common::start_with(|config| config.storage = storage_config(&dir)).await;
    assert_eq!(fanin.store.stream_count(), 0);
    fanin
        .export_grpc(common::export("w1").counter("jobs", 100, 200, 3).build())
        .await
        .expect("accepted");
    assert_eq!(fanin.total("metric=jobs").await, serde_json::json!(3));
    fanin.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_second_fanin_on_the_same_directory_is_refused() {
    let dir = storage_dir("locked");
    let first = Storage::open(&storage_config(&dir))
        .expect("open")
        .expect("on");
    let second = Storage::open(&storage_config(&dir)).expect_err("locked");
    assert!(second.to_string().contains("another fanin"), "{second}");
    drop(first);
    Storage::open(&storage_config(&dir))
        .expect("free again")
        .expect("on");
    let _ = std::fs::remove_dir_all(&dir);
}
