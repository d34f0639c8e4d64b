//! Space aggregation scenarios through the real server, each with exact totals: workers
//! dying, restarting, retrying and mixing temporalities (issue: aggregation and query API).

// Tests may panic on what they expect: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{TestFanin, eventually, export, int_attr, start, start_with, string_attr};
use serde_json::json;

const WORKERS: [&str; 4] = ["w1", "w2", "w3", "w4"];

async fn send(fanin: &TestFanin, request: common::Export) {
    let response = fanin.export_grpc(request.build()).await.expect("export");
    assert_eq!(response.partial_success, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn four_workers_counter_is_the_sum() {
    let fanin = start().await;
    for (index, worker) in WORKERS.iter().enumerate() {
        send(
            &fanin,
            export(worker).counter("requests", 1, 10, 10 * (index as i64 + 1)),
        )
        .await;
    }
    let (status, body) = fanin.query("metric=requests").await;
    assert_eq!(status, 200);
    assert_eq!(body["agg"], json!("sum"));
    assert_eq!(body["kind"], json!("sum"));
    assert_eq!(
        body["series"],
        json!([{"attributes": {"service.name": "app"}, "value": 100, "instances": 4}])
    );
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn inflight_sum_is_512_and_max_is_128() {
    let fanin = start().await;
    for worker in WORKERS {
        send(&fanin, export(worker).up_down("inflight", 1, 10, 128)).await;
    }
    assert_eq!(fanin.total("metric=inflight").await, json!(512));
    assert_eq!(fanin.total("metric=inflight&agg=max").await, json!(128));
    assert_eq!(fanin.total("metric=inflight&agg=min").await, json!(128));
    assert_eq!(fanin.total("metric=inflight&agg=avg").await, json!(128.0));
    assert_eq!(fanin.total("metric=inflight&agg=count").await, json!(4));
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_drop_and_retry_keep_the_total_exact() {
    let fanin = start().await;
    send(&fanin, export("w2").counter("requests", 1, 10, 100)).await;
    for (start, time, value) in [
        (1, 10, 5),
        (1, 20, 8),
        (1, 20, 8),
        (30, 40, 3),
        (30, 50, 2),
        (30, 60, 6),
    ] {
        // A retry of (1, 20, 8), a restart at 30, then a drop without a new start.
        let response = fanin
            .export_grpc(export("w1").counter("requests", start, time, value).build())
            .await
            .expect("export");
        assert_eq!(response.partial_success, None);
    }
    // w1 counted 8 before the restart, 3 up to the drop, then 6: 17; w2 100.
    assert_eq!(fanin.total("metric=requests").await, json!(117));
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delta_and_cumulative_workers_add_up() {
    let fanin = start().await;
    send(&fanin, export("cumulative").counter("requests", 1, 10, 10)).await;
    send(&fanin, export("cumulative").counter("requests", 1, 20, 15)).await;
    send(&fanin, export("delta").delta_counter("requests", 0, 10, 4)).await;
    send(&fanin, export("delta").delta_counter("requests", 10, 20, 6)).await;
    let (_, body) = fanin.query("metric=requests").await;
    assert_eq!(body["series"][0]["value"], json!(25));
    assert_eq!(body["series"][0]["instances"], json!(2));
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn by_and_match_select_groups() {
    let fanin = start().await;
    let routes = [
        ("w1", "/a", "GET", 1),
        ("w2", "/a", "POST", 2),
        ("w3", "/b", "GET", 4),
    ];
    for (worker, route, method, value) in routes {
        send(
            &fanin,
            export(worker).counter_with(
                "requests",
                &[("route", route), ("method", method)],
                1,
                10,
                value,
            ),
        )
        .await;
    }
    let by_route = fanin.query_series("metric=requests&by=route").await;
    assert_eq!(
        json!(by_route),
        json!([
            {"attributes": {"route": "/a"}, "value": 3, "instances": 2},
            {"attributes": {"route": "/b"}, "value": 4, "instances": 1},
        ])
    );
    assert_eq!(fanin.total("metric=requests&by=").await, json!(7));
    let get_only = fanin
        .query_series("metric=requests&by=method&match=method=GET")
        .await;
    assert_eq!(
        json!(get_only),
        json!([{"attributes": {"method": "GET"}, "value": 5, "instances": 2}])
    );
    assert_eq!(
        fanin.query_series("metric=requests&match=route=/c").await,
        Vec::<serde_json::Value>::new()
    );
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn explicit_histograms_merge() {
    let fanin = start().await;
    send(
        &fanin,
        export("w1").histogram("latency", 1, 10, &[0.1, 1.0], &[1, 2, 3]),
    )
    .await;
    send(
        &fanin,
        export("w2").histogram("latency", 1, 10, &[0.1, 1.0], &[4, 0, 1]),
    )
    .await;
    let series = fanin.query_series("metric=latency").await;
    assert_eq!(
        series[0]["histogram"],
        json!({"count": 11, "sum": 11.0, "min": null, "max": null, "buckets": [
            {"le": 0.1, "count": 5}, {"le": 1.0, "count": 7}, {"le": "+Inf", "count": 11}]})
    );
    assert_eq!(series[0]["instances"], json!(2));
    send(
        &fanin,
        export("w3").histogram("latency", 1, 10, &[0.5], &[1, 1]),
    )
    .await;
    let (_, body) = fanin.query("metric=latency").await;
    assert_eq!(body["series"][0]["histogram"]["buckets"], json!([]));
    assert_eq!(body["series"][0]["histogram"]["count"], json!(13));
    assert!(
        body["notes"][0]
            .as_str()
            .is_some_and(|note| note.contains("bucket bounds")),
        "{body}"
    );
    let (status, body) = fanin.query("metric=latency&agg=max").await;
    assert_eq!(status, 400, "{body}");
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exponential_histograms_at_scales_3_and_1_merge_exactly() {
    let fanin = start().await;
    send(
        &fanin,
        export("w1").exp_histogram("sizes", 1, 10, 3, &[1, 1, 1, 1, 1, 1, 1, 1]),
    )
    .await;
    send(
        &fanin,
        export("w2").exp_histogram("sizes", 1, 10, 1, &[10, 20]),
    )
    .await;
    let series = fanin.query_series("metric=sizes").await;
    let merged = &series[0]["exponential_histogram"];
    assert_eq!(merged["scale"], json!(1));
    assert_eq!(
        merged["positive"],
        json!({"offset": 0, "bucket_counts": [14, 24]})
    );
    assert_eq!(merged["count"], json!(38));
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn summaries_give_count_and_sum_and_say_quantiles_are_per_instance() {
    let fanin = start().await;
    send(
        &fanin,
        export("w1").summary("legacy", 10, 4, 10.0, &[(0.5, 2.0)]),
    )
    .await;
    send(
        &fanin,
        export("w2").summary("legacy", 10, 6, 30.0, &[(0.5, 5.0)]),
    )
    .await;
    let (_, body) = fanin.query("metric=legacy").await;
    assert_eq!(
        body["series"][0]["summary"],
        json!({"count": 10, "sum": 40.0})
    );
    let note = body["notes"][0].as_str().expect("a note");
    assert!(note.contains("quantiles cannot be merged"), "{note}");
    assert!(note.contains("/api/v1/series?metric=legacy"), "{note}");
    fanin.stop().await;
}

/// A pid that existed and is gone: a child that exited and was reaped.
fn dead_pid() -> i64 {
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let pid = i64::from(child.id());
    child.wait().expect("reap the child");
    pid
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .expect("hostname")
        .into_string()
        .expect("UTF-8 hostname")
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_whose_pid_is_gone_is_retired_at_once() {
    let fanin = start().await;
    let host = string_attr("host.name", &hostname());
    let alive = i64::from(std::process::id());
    for (worker, pid) in [
        ("w1", alive),
        ("w2", alive),
        ("w3", alive),
        ("w4", dead_pid()),
    ] {
        let request = export(worker)
            .resource_attr(int_attr("process.pid", pid))
            .resource_attr(host.clone())
            .counter("requests", 1, 10, 5)
            .up_down("inflight", 1, 10, 128);
        send(&fanin, request).await;
    }
    eventually(Duration::from_secs(10), "w4 to be retired", || async {
        let (_, body) = fanin.get("/api/v1/instances").await;
        let instances = body["instances"].as_array().cloned().unwrap_or_default();
        instances
            .iter()
            .find(|instance| instance["attributes"]["service.instance.id"] == json!("w4"))
            .filter(|instance| instance["live"] == json!(false))
            .map(|instance| assert_eq!(instance["retired"]["reason"], json!("process_gone")))
    })
    .await;
    assert_eq!(
        fanin.total("metric=requests").await,
        json!(20),
        "counter keeps w4's share"
    );
    assert_eq!(
        fanin.total("metric=inflight").await,
        json!(384),
        "w4's in-flight leaves"
    );
    let (_, metrics) = fanin.get("/api/v1/metrics").await;
    let inflight = metrics["metrics"]
        .as_array()
        .and_then(|metrics| {
            metrics
                .iter()
                .find(|metric| metric["metric"] == json!("inflight"))
                .cloned()
        })
        .expect("inflight listed");
    assert_eq!(inflight["live_instances"], json!(3));
    assert_eq!(inflight["retired_instances"], json!(1));
    fanin.stop().await;
}

/// Whether each named instance is live, as `/api/v1/instances` says.
async fn live(fanin: &TestFanin, ids: &[&str]) -> Vec<Option<bool>> {
    let (_, body) = fanin.get("/api/v1/instances").await;
    let instances = body["instances"].as_array().cloned().unwrap_or_default();
    ids.iter()
        .map(|id| {
            instances
                .iter()
                .find(|instance| instance["attributes"]["service.instance.id"] == json!(id))
                .and_then(|instance| instance["live"].as_bool())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn pid_check_can_be_switched_off() {
    let fanin = start_with(|config| config.aggregation.pid_check = false).await;
    let half = fanin.ttl / 2;
    let dead = dead_pid();
    let host = string_attr("host.name", &hostname());
    let exporting = |time| {
        export("dead-pid")
            .resource_attr(int_attr("process.pid", dead))
            .resource_attr(host.clone())
            .up_down("inflight", 1, time, 7)
    };
    send(&fanin, exporting(10)).await;
    send(&fanin, export("silent").up_down("inflight", 1, 10, 1)).await;
    // The instance with a gone pid keeps exporting and must stay live, because pids are not
    // checked; the silent one's retirement proves that the sweep ran.
    fanin.advance(half);
    send(&fanin, exporting(20)).await;
    fanin.advance(half + Duration::from_secs(1));
    assert_eq!(
        live(&fanin, &["dead-pid", "silent"]).await,
        [Some(true), Some(false)]
    );
    assert_eq!(fanin.total("metric=inflight").await, json!(7));
    assert_eq!(fanin.stats().await["instances_retired"], json!(1));
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_worker_is_retired_after_the_ttl_and_evicted_without_losing_counts() {
    let fanin = start().await;
    let exports = |worker: &'static str, time| {
        export(worker)
            .counter_with("requests", &[("route", "/a")], 1, time, 5)
            .up_down("inflight", 1, time, 10)
    };
    for worker in WORKERS {
        send(&fanin, exports(worker, 10)).await;
    }
    // w1..w3 keep exporting every half TTL; w4 falls silent.
    let half = fanin.ttl / 2 + Duration::from_millis(1);
    let mut w4 = Vec::new();
    for step in 1..=5u64 {
        fanin.advance(half);
        for worker in &WORKERS[..3] {
            send(&fanin, exports(worker, 10 + step)).await;
        }
        let (_, body) = fanin.get("/api/v1/instances").await;
        let instances = body["instances"].as_array().cloned().unwrap_or_default();
        let found = instances
            .iter()
            .find(|instance| instance["attributes"]["service.instance.id"] == json!("w4"))
            .cloned()
            .unwrap_or_default();
        if found["live"] == json!(false) {
            // Retired, evicted or not: its counter share stays, its in-flight share left.
            assert_eq!(found["retired"]["reason"], json!("instance_ttl"));
            let (_, inflight) = fanin.query("metric=inflight").await;
            assert_eq!(inflight["series"][0]["value"], json!(30));
        }
        w4.push((found["live"].clone(), found["evicted"].clone()));
    }
    // Retired after a TTL of silence (step 2), evicted after another (step 4).
    assert_eq!(
        w4,
        [
            (json!(true), json!(false)),
            (json!(false), json!(false)),
            (json!(false), json!(false)),
            (json!(false), json!(true)),
            (json!(false), json!(true)),
        ]
    );
    let (_, body) = fanin.query("metric=requests").await;
    assert_eq!(
        body["series"],
        json!([{"attributes": {"route": "/a", "service.name": "app"}, "value": 20, "instances": 4}])
    );
    assert_eq!(fanin.stats().await["instances_retired"], json!(1));
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retired_worker_that_exports_again_is_not_counted_twice() {
    let fanin = start().await;
    send(&fanin, export("w1").counter("requests", 1, 10, 5)).await;
    let report = fanin.advance(fanin.ttl);
    assert_eq!(report.retired, 1);
    assert_eq!(live(&fanin, &["w1"]).await, [Some(false)]);
    send(&fanin, export("w1").counter("requests", 1, 20, 6)).await;
    let (_, body) = fanin.get("/api/v1/instances").await;
    assert_eq!(body["instances"][0]["live"], json!(true));
    assert_eq!(fanin.total("metric=requests").await, json!(6));
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_queries_are_400_and_unknown_metrics_404() {
    let fanin = start().await;
    send(&fanin, export("w1").counter("requests", 1, 10, 1)).await;
    for (query, message) in [
        ("agg=sum", "missing query parameter `metric`"),
        (
            "metric=requests&agg=p99",
            "query parameter `agg`: \"p99\" is not an aggregation; use sum, max, min, avg or count",
        ),
        (
            "metric=requests&group=x",
            "unknown query parameter `group`; use metric, agg, by and match",
        ),
        (
            "metric=requests&match=x",
            "query parameter `match`: \"x\" is not key=value",
        ),
    ] {
        let (status, body) = fanin.query(query).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(body["error"], json!(message), "{query}");
    }
    let (status, body) = fanin.query("metric=nope").await;
    assert_eq!(status, 404);
    assert_eq!(
        body["error"],
        json!("no metric named \"nope\" has been received")
    );
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_set_the_default_aggregation() {
    let fanin = start_with(|config| {
        config.aggregation.rules = vec![fanin::config::AggregationRule {
            metric: "process.*".parse().expect("glob"),
            agg: fanin::config::Agg::Max,
        }];
    })
    .await;
    for (worker, value) in [("w1", 3.0), ("w2", 9.0)] {
        send(&fanin, export(worker).gauge("process.memory", 10, value)).await;
    }
    let (_, body) = fanin.query("metric=process.memory").await;
    assert_eq!(body["agg"], json!("max"));
    assert_eq!(body["series"][0]["value"], json!(9.0));
    assert_eq!(
        fanin.total("metric=process.memory&agg=sum").await,
        json!(12.0)
    );
    let (_, metrics) = fanin.get("/api/v1/metrics").await;
    assert_eq!(metrics["metrics"][0]["default_agg"], json!("max"));
    fanin.stop().await;
}
