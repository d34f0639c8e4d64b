//! Stream identity and per-stream rules through the real server: instances that differ only
//! in service.instance.id stay apart, duplicates count once, resets stay monotonic, and many
//! concurrent workers lose nothing.

// Tests may panic on what they expect: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{export, int_attr, start, start_with};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn four_instances_differing_only_in_instance_id_are_four_streams() {
    let fanin = start().await;
    for (index, instance) in ["w1", "w2", "w3", "w4"].iter().enumerate() {
        let request = export(instance)
            .up_down("inflight", 1, 10, 128 + index as i64)
            .build();
        fanin.export_grpc(request).await.expect("export");
    }
    let (_, instances) = fanin.get("/api/v1/instances").await;
    let instances = instances["instances"]
        .as_array()
        .expect("instances")
        .clone();
    assert_eq!(instances.len(), 4);
    assert!(
        instances
            .iter()
            .all(|instance| instance["streams"] == json!(1))
    );
    assert_eq!(
        fanin.values("inflight").await,
        vec![json!(128), json!(129), json!(130), json!(131)]
    );
    assert_eq!(fanin.stats().await["streams"], json!(4));
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn attribute_types_and_order_are_exact() {
    let fanin = start().await;
    // Same keys, reordered: one instance. Same key with an int instead of a string: another.
    let first = export("w1").resource_attr(int_attr("process.pid", 7));
    fanin
        .export_grpc(first.counter("requests", 1, 10, 1).build())
        .await
        .expect("export");
    let mut reordered = export("w1")
        .resource_attr(int_attr("process.pid", 7))
        .counter("requests", 1, 20, 2)
        .build();
    reordered.resource_metrics[0]
        .resource
        .as_mut()
        .expect("resource")
        .attributes
        .reverse();
    fanin.export_grpc(reordered).await.expect("export");
    let typed = export("w1").resource_attr(common::string_attr("process.pid", "7"));
    fanin
        .export_grpc(typed.counter("requests", 1, 10, 100).build())
        .await
        .expect("export");
    let values = fanin.values("requests").await;
    assert_eq!(values.len(), 2, "{values:?}");
    assert!(
        values.contains(&json!(2)) && values.contains(&json!(100)),
        "{values:?}"
    );
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn point_attributes_split_streams() {
    let fanin = start().await;
    let request = export("w1")
        .counter_with("requests", &[("route", "/a")], 1, 10, 1)
        .counter_with("requests", &[("route", "/b")], 1, 10, 2)
        .build();
    fanin.export_grpc(request).await.expect("export");
    assert_eq!(fanin.values("requests").await, vec![json!(1), json!(2)]);
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicates_count_once_and_are_counted() {
    let fanin = start().await;
    let request = export("w1").counter("requests", 1, 10, 5).build();
    for _ in 0..3 {
        let response = fanin.export_grpc(request.clone()).await.expect("export");
        assert_eq!(response.partial_success, None, "a retry needs no fix");
    }
    fanin
        .export_grpc(export("w1").counter("requests", 1, 5, 4).build())
        .await
        .expect("export");
    assert_eq!(fanin.values("requests").await, vec![json!(5)]);
    let stats = fanin.stats().await;
    assert_eq!(stats["points"]["dropped"]["duplicate"], json!(2));
    assert_eq!(stats["points"]["dropped"]["out_of_order"], json!(1));
    assert_eq!(stats["points"]["accepted"], json!(1));
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_and_drop_are_resets_that_keep_the_total() {
    let fanin = start().await;
    let points = [
        (100, 110, 5), // first sequence
        (100, 120, 8), // grows
        (130, 140, 2), // restart: a new run, counting from zero; the first keeps its 8
        (130, 150, 1), // drops without a new start: a reset of that run
        (130, 160, 4),
    ];
    for (start, time, value) in points {
        fanin
            .export_grpc(export("w1").counter("requests", start, time, value).build())
            .await
            .expect("export");
    }
    let stream = &fanin.series("requests").await[0];
    assert_eq!(stream["value"], json!(8 + 2 + 4));
    assert_eq!(stream["runs"], json!(2));
    assert_eq!(stream["resets"], json!(1));
    // A value going down within one start time is what writers sharing it look like: the
    // stream says it cannot vouch for its total.
    assert_eq!(
        stream["unreliable"]["evidence"],
        json!("went_down_without_new_start")
    );
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delta_points_accumulate() {
    let fanin = start().await;
    // One connection: the interval that starts inside its own chain is a bad resend.
    let mut client = fanin.grpc_client().await;
    for (start, time, value) in [(5, 10, 3), (10, 20, 4), (10, 25, 100), (20, 30, 5)] {
        client
            .export(
                export("w1")
                    .delta_counter("requests", start, time, value)
                    .build(),
            )
            .await
            .expect("export");
    }
    assert_eq!(fanin.values("requests").await, vec![json!(12)]);
    assert_eq!(
        fanin.stats().await["points"]["dropped"]["overlapping_delta"],
        json!(1)
    );
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn series_limit_refuses_new_streams_but_updates_existing_ones() {
    let fanin = start_with(|config| {
        config.limits.max_series = std::num::NonZeroUsize::new(2).expect("non-zero");
    })
    .await;
    let request = export("w1")
        .counter("a", 1, 10, 1)
        .counter("b", 1, 10, 1)
        .counter("c", 1, 10, 1)
        .build();
    let response = fanin.export_grpc(request).await.expect("export");
    let partial = response.partial_success.expect("one point refused");
    assert_eq!(partial.rejected_data_points, 1);
    assert!(
        partial.error_message.contains("limits.max_series"),
        "{}",
        partial.error_message
    );
    let update = fanin
        .export_grpc(export("w1").counter("a", 1, 20, 7).build())
        .await
        .expect("export");
    assert_eq!(update.partial_success, None);
    assert_eq!(fanin.values("a").await, vec![json!(7)]);
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_workers_lose_nothing() {
    let fanin = start().await;
    let workers = 16;
    let exports = 50u64;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..workers {
        let mut client = fanin.grpc_client().await;
        tasks.spawn(async move {
            for round in 1..=exports {
                let request = export(&format!("w{worker}"))
                    .counter("requests", 1, round * 10, round as i64)
                    .delta_counter("bytes", (round - 1) * 10, round * 10, 3)
                    .build();
                client.export(request).await.expect("export");
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("worker task");
    }
    let counters = fanin.values("requests").await;
    assert_eq!(counters.len(), workers);
    assert!(counters.iter().all(|value| *value == json!(exports)));
    let deltas = fanin.values("bytes").await;
    assert!(
        deltas.iter().all(|value| *value == json!(3 * exports)),
        "{deltas:?}"
    );
    let stats = fanin.stats().await;
    assert_eq!(
        stats["points"]["accepted"],
        json!(2 * workers as u64 * exports)
    );
    assert_eq!(stats["requests"]["grpc"], json!(workers as u64 * exports));
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_deltas_in_one_millisecond_both_count() {
    // The JavaScript SDK stamps whole milliseconds: two collections within one millisecond
    // send [t-1ms, t] and then [t, t].
    let fanin = start().await;
    let t = 1_700_000_000_000 * 1_000_000;
    let ms = 1_000_000;
    let mut client = fanin.grpc_client().await;
    for (start, time, value) in [(t - 1000 * ms, t - ms, 5), (t - ms, t, 2), (t, t, 1)] {
        let response = client
            .export(
                export("w1")
                    .delta_counter("requests", start, time, value)
                    .build(),
            )
            .await
            .expect("export")
            .into_inner();
        assert_eq!(response.partial_success, None);
    }
    assert_eq!(fanin.values("requests").await, vec![json!(8)]);
    let dropped = fanin.stats().await["points"]["dropped"].clone();
    assert_eq!(dropped["duplicate"], json!(0), "{dropped}");
    fanin.stop().await;
}
