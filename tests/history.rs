//! `/api/v1/history`: the app samples each metric's aggregated totals every
//! `query.history.step`; the answer takes `/api/v1/query`'s selection parameters.

// Tests may panic on what they expect: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use serde_json::{Value as Json, json};

const WAIT: Duration = Duration::from_secs(30);

/// The latest sampled value of the one series `query` selects, if there is one yet.
fn latest(answer: &Json) -> Option<f64> {
    answer["series"][0]["values"]
        .as_array()?
        .iter()
        .rev()
        .find_map(Json::as_f64)
}

#[tokio::test]
async fn history_follows_the_totals_step_by_step_with_the_query_selection() {
    let fanin = common::start_with(|config| {
        config.query.history.step = Duration::from_millis(100);
    })
    .await;
    for (worker, value) in [("w1", 42), ("w2", 8)] {
        let request = common::export(worker)
            .counter_with("jobs", &[("queue", worker)], 100, 200, value)
            .build();
        fanin.export_grpc(request).await.expect("accepted");
    }
    let total = common::eventually(WAIT, "the total sampled", || async {
        let (status, answer) = fanin.get("/api/v1/history?metric=jobs&by=").await;
        (status == 200 && latest(&answer) == Some(50.0)).then_some(answer)
    })
    .await;
    assert_eq!(total["agg"], json!("sum"));
    assert_eq!(total["step_seconds"], json!(0.1));
    let times = total["times_unix_nano"].as_array().expect("times");
    let values = total["series"][0]["values"].as_array().expect("values");
    assert_eq!(times.len(), values.len(), "one value per sample time");

    // The total moves on; history follows it, and `match` picks one group.
    let request = common::export("w1")
        .counter_with("jobs", &[("queue", "w1")], 100, 300, 52)
        .build();
    fanin.export_grpc(request).await.expect("accepted");
    common::eventually(WAIT, "the new total sampled", || async {
        let (_, answer) = fanin.get("/api/v1/history?metric=jobs&by=").await;
        (latest(&answer) == Some(60.0)).then_some(())
    })
    .await;
    let (_, one) = fanin
        .get("/api/v1/history?metric=jobs&match=queue=w2")
        .await;
    assert_eq!(one["series"].as_array().map(Vec::len), Some(1), "{one}");
    assert_eq!(latest(&one), Some(8.0));

    let (status, other) = fanin.get("/api/v1/history?metric=jobs&agg=max").await;
    assert_eq!(status, 400, "{other}");
    assert!(
        other["error"]
            .as_str()
            .unwrap_or("")
            .contains("default aggregation"),
        "{other}"
    );
    let (status, _) = fanin.get("/api/v1/history?metric=nothing").await;
    assert_eq!(status, 404);
    let (status, _) = fanin.get("/api/v1/history").await;
    assert_eq!(status, 400, "metric is required");
    fanin.stop().await;
}
