//! `/api/v1/instances` and `/api/v1/series` come in pages (`limit`, `cursor`): following
//! `next_cursor` lists every item once, whatever else is stored meanwhile, and bad page
//! parameters are refused with a message.

// Tests may panic on what they expect: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::HashSet;

use common::{TestFanin, export, start};
use serde_json::Value as Json;

async fn send(fanin: &TestFanin, request: common::Export) {
    let response = fanin.export_grpc(request.build()).await.expect("export");
    assert_eq!(response.partial_success, None);
}

/// Every page of `path` (which has a `?`) from the first, following `next_cursor`, and each
/// page's length.
async fn every_page(fanin: &TestFanin, path: &str, list: &str) -> (Vec<Json>, Vec<usize>) {
    pages_after(fanin, path, None, list).await
}

/// The pages of `path` after `cursor`.
async fn pages_after(
    fanin: &TestFanin,
    path: &str,
    cursor: Option<&str>,
    list: &str,
) -> (Vec<Json>, Vec<usize>) {
    let (mut items, mut lengths) = (Vec::new(), Vec::new());
    let mut url = match cursor {
        Some(cursor) => format!("{path}&cursor={cursor}"),
        None => path.to_string(),
    };
    loop {
        let (status, body) = fanin.get(&url).await;
        assert_eq!(status, 200, "{url}: {body}");
        let page = body[list].as_array().expect("a list").clone();
        lengths.push(page.len());
        items.extend(page);
        match body["next_cursor"].as_str() {
            Some(cursor) => url = format!("{path}&cursor={cursor}"),
            None => return (items, lengths),
        }
        assert!(lengths.len() < 100, "pages never end");
    }
}

fn instance_id(instance: &Json) -> String {
    instance["attributes"]["service.instance.id"]
        .as_str()
        .expect("an instance id")
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_come_in_pages_in_the_order_they_arrived() {
    let fanin = start().await;
    for worker in 0..25 {
        send(
            &fanin,
            export(&format!("w{worker:02}")).counter("c", 1, 10, 1),
        )
        .await;
    }

    let (status, body) = fanin.get("/api/v1/instances?limit=10").await;
    assert_eq!(status, 200, "{body}");
    let first: Vec<_> = body["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(instance_id)
        .collect();
    assert_eq!(first.len(), 10);
    let cursor = body["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_string();

    // An instance that arrives while the pages are read is on a later page.
    send(&fanin, export("late").counter("c", 1, 10, 1)).await;
    let path = "/api/v1/instances?limit=10";
    let (rest, lengths) = pages_after(&fanin, path, Some(&cursor), "instances").await;
    assert_eq!(lengths, [10, 6]);
    let mut ids = first;
    ids.extend(rest.iter().map(instance_id));
    let expected: Vec<String> = (0..25)
        .map(|worker| format!("w{worker:02}"))
        .chain(["late".to_string()])
        .collect();
    assert_eq!(ids, expected, "every instance once, oldest first");

    // Without a limit, one page of up to 1000 holds them all.
    let (status, body) = fanin.get("/api/v1/instances").await;
    assert_eq!(status, 200);
    assert_eq!(body["instances"].as_array().unwrap().len(), 26);
    assert!(body["next_cursor"].is_null(), "{body}");
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn series_come_in_pages_of_at_most_a_thousand() {
    let fanin = start().await;
    send(&fanin, export("w1").wide_counter("wide", "k", 1500, 1)).await;
    send(&fanin, export("w2").wide_counter("wide", "k", 1000, 1)).await;
    send(&fanin, export("w1").counter("other", 1, 10, 1)).await;

    let (streams, lengths) = every_page(&fanin, "/api/v1/series?metric=wide", "streams").await;
    assert_eq!(lengths, [1000, 1000, 500]);
    let distinct: HashSet<String> = streams
        .iter()
        .map(|stream| format!("{} {}", stream["instance"], stream["attributes"]))
        .collect();
    assert_eq!(distinct.len(), 2500, "every stream once");
    assert!(streams.iter().all(|stream| stream["value"] == 1));

    let (_, lengths) = every_page(&fanin, "/api/v1/series?metric=wide&limit=700", "streams").await;
    assert_eq!(lengths, [700, 700, 700, 400]);
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_page_parameters_are_refused_by_name() {
    let fanin = start().await;
    send(&fanin, export("w1").counter("c", 1, 10, 1)).await;
    for (path, message) in [
        (
            "/api/v1/instances?limit=0",
            "query parameter `limit`: \"0\" is not a number from 1 to 10000",
        ),
        (
            "/api/v1/series?metric=c&limit=10001",
            "query parameter `limit`: \"10001\" is not a number from 1 to 10000",
        ),
        (
            "/api/v1/instances?cursor=nope",
            "query parameter `cursor`: \"nope\" is not a cursor: pass back the next_cursor of \
             the previous page",
        ),
        (
            "/api/v1/instances?metric=c",
            "unknown query parameter `metric`; use limit and cursor",
        ),
    ] {
        let (status, body) = fanin.get(path).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some(message)),
            "{path}"
        );
    }
    // A well-formed cursor past every item is an empty last page.
    let (status, body) = fanin
        .get(&format!("/api/v1/instances?cursor={}", "f".repeat(64)))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["instances"], serde_json::json!([]));
    assert!(body["next_cursor"].is_null());
    fanin.stop().await;
}
