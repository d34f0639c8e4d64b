//! Collisions through the real server: two writers on one stream are caught with evidence;
//! one worker that retries, reconnects or restarts is not; `reject` refuses the evidence;
//! counts recorded before fork show up as inherited state.

mod common;

use common::{TestFanin, export, start, start_with};
use serde_json::{Value, json};

async fn send(fanin: &TestFanin, request: common::Export) -> Option<(i64, String)> {
    // Each call opens a new connection: two calls are two writers as far as fanin can tell.
    let response = fanin.export_grpc(request.build()).await.expect("export");
    response
        .partial_success
        .map(|partial| (partial.rejected_data_points, partial.error_message))
}

async fn collisions(fanin: &TestFanin) -> Value {
    let (status, body) = fanin.get("/api/v1/collisions").await;
    assert_eq!(status, 200);
    body
}

fn evidence_kinds(collision: &Value) -> Vec<String> {
    collision["evidence"]
        .as_array()
        .map(|kinds| {
            kinds
                .iter()
                .filter_map(|kind| kind["kind"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_sharing_a_resource_and_start_time_collide() {
    // SDK <= 1.43 with a provider built before fork: every worker has the parent's resource
    // and start time, and their cumulative counts interleave.
    let fanin = start().await;
    send(&fanin, export("shared").counter("requests", 100, 10, 50)).await;
    send(&fanin, export("shared").counter("requests", 100, 20, 7)).await;
    send(&fanin, export("shared").counter("requests", 100, 30, 52)).await;
    let body = collisions(&fanin).await;
    let found = body["collisions"].as_array().expect("collisions").clone();
    assert_eq!(found.len(), 1, "{body}");
    assert_eq!(found[0]["metric"], json!("requests"));
    assert_eq!(found[0]["instance"]["service.instance.id"], json!("shared"));
    assert_eq!(evidence_kinds(&found[0]), ["went_down_without_new_start"]);
    assert!(
        found[0]["writers"]
            .as_array()
            .is_some_and(|writers| !writers.is_empty())
    );
    assert!(
        body["fix"]
            .as_str()
            .is_some_and(|fix| fix.contains("service.instance.id"))
    );
    assert_eq!(fanin.stats().await["collisions"], json!(1));
    let (_, page) = fanin.get("/metrics").await;
    assert!(
        page.as_str()
            .is_some_and(|page| page.contains("fanin_collisions_total 1\n")),
        "{page}"
    );
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn alternating_start_times_collide() {
    let fanin = start().await;
    for (start, time, value) in [(100, 10, 5), (200, 20, 9), (100, 30, 6), (200, 40, 10)] {
        send(
            &fanin,
            export("shared").counter("requests", start, time, value),
        )
        .await;
    }
    let body = collisions(&fanin).await;
    assert_eq!(
        evidence_kinds(&body["collisions"][0]),
        ["start_time_alternates"],
        "{body}"
    );
    assert!(body["collisions"][0]["count"].as_u64() >= Some(2));
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn same_timestamp_with_another_value_from_another_connection_collides() {
    let fanin = start().await;
    send(&fanin, export("shared").up_down("inflight", 1, 10, 128)).await;
    send(&fanin, export("shared").up_down("inflight", 1, 10, 64)).await;
    let body = collisions(&fanin).await;
    assert_eq!(
        evidence_kinds(&body["collisions"][0]),
        ["same_time_other_value"],
        "{body}"
    );
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn overlapping_deltas_collide() {
    let fanin = start().await;
    send(&fanin, export("shared").delta_counter("requests", 0, 20, 3)).await;
    send(
        &fanin,
        export("shared").delta_counter("requests", 10, 30, 4),
    )
    .await;
    let body = collisions(&fanin).await;
    assert_eq!(
        evidence_kinds(&body["collisions"][0]),
        ["overlapping_delta"],
        "{body}"
    );
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_worker_retrying_reconnecting_and_restarting_is_not_a_collision() {
    let fanin = start().await;
    let steps = [
        (100, 10, 5), // first export
        (100, 10, 5), // retried on a new connection: same point
        (100, 20, 9),
        (300, 40, 1), // restarted: new start time, counting from zero
        (300, 50, 4),
        (300, 50, 4), // retried again
    ];
    for (start, time, value) in steps {
        send(
            &fanin,
            export("w1")
                .counter("requests", start, time, value)
                .gauge("temperature", time, 20.5),
        )
        .await;
    }
    send(&fanin, export("w1").delta_counter("bytes", 0, 10, 3)).await;
    send(&fanin, export("w1").delta_counter("bytes", 0, 10, 3)).await;
    send(&fanin, export("w1").delta_counter("bytes", 10, 20, 3)).await;
    let body = collisions(&fanin).await;
    assert_eq!(body["collisions"], json!([]), "{body}");
    assert_eq!(body["inherited_state"], json!([]), "{body}");
    assert_eq!(fanin.stats().await["collisions"], json!(0));
    assert_eq!(fanin.total("metric=requests").await, json!(13.0));
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reject_policy_refuses_the_second_writer_and_says_what_to_fix() {
    let fanin =
        start_with(|config| config.collisions.policy = fanin::config::CollisionPolicy::Reject)
            .await;
    assert_eq!(
        send(&fanin, export("shared").counter("requests", 100, 10, 50)).await,
        None
    );
    let (rejected, message) = send(&fanin, export("shared").counter("requests", 100, 20, 7))
        .await
        .expect("the second writer's point is refused");
    assert_eq!(rejected, 1);
    assert!(
        message.contains("another process writes this stream"),
        "{message}"
    );
    assert!(message.contains("service.instance.id"), "{message}");
    assert_eq!(
        fanin.total("metric=requests").await,
        json!(50.0),
        "nothing was folded"
    );
    assert_eq!(
        fanin.stats().await["points"]["rejected"]["collision"],
        json!(1)
    );
    assert_eq!(
        collisions(&fanin).await["collisions"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn counts_recorded_before_fork_show_as_inherited_state() {
    // SDK >= 1.44: each worker has its own service.instance.id, but the counter the master
    // recorded before fork lives on in every worker with the master's start time.
    let fanin = start().await;
    for (worker, value) in [("w1", 10), ("w2", 12), ("w3", 11)] {
        send(&fanin, export(worker).counter("jobs", 555, 10, value)).await;
    }
    send(&fanin, export("w4").counter("jobs", 777, 10, 3)).await;
    let body = collisions(&fanin).await;
    assert_eq!(body["collisions"], json!([]));
    let findings = body["inherited_state"]
        .as_array()
        .expect("findings")
        .clone();
    assert_eq!(findings.len(), 1, "{body}");
    assert_eq!(findings[0]["metric"], json!("jobs"));
    assert_eq!(findings[0]["start_time_unix_nano"], json!(555));
    let mut ids: Vec<String> = findings[0]["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter_map(|instance| instance["service.instance.id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    assert_eq!(ids, ["w1", "w2", "w3"]);
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_connection_for_many_instances_and_a_final_export_on_a_new_one_are_not_collisions() {
    // A worker forked late shares its parent's keep-alive connection with its siblings; at
    // exit, a worker's last export often comes on a connection of its own.
    let fanin = start().await;
    let mut shared = fanin.grpc_client().await;
    for (time, values) in [(10, [5, 7, 9]), (20, [6, 9, 12])] {
        // Each started on its own (own start times): not inherited state either.
        for ((worker, start), value) in [("w1", 100), ("w2", 101), ("w3", 102)]
            .into_iter()
            .zip(values)
        {
            shared
                .export(
                    export(worker)
                        .counter("requests", start, time, value)
                        .build(),
                )
                .await
                .expect("export over the shared connection");
        }
    }
    send(&fanin, export("w2").counter("requests", 101, 30, 13)).await;
    let body = collisions(&fanin).await;
    assert_eq!(body["collisions"], json!([]), "{body}");
    assert_eq!(body["inherited_state"], json!([]), "{body}");
    assert_eq!(
        fanin.total("metric=requests").await,
        json!(6.0 + 13.0 + 12.0)
    );
    fanin.stop().await;
}
