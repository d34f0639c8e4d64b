//! Collisions through the real server: two writers on one stream are caught with evidence;
//! one worker that retries, reconnects or restarts is not; `reject` refuses the evidence;
//! counts recorded before fork show up as inherited state; a takeover of a live worker's
//! counter shows as a second run.

// Tests may panic on what they expect: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

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
async fn workers_sharing_a_resource_and_start_time_collide_and_every_answer_says_so() {
    // SDK <= 1.43 with a value recorded before fork: every worker has the parent's resource
    // and start time, and their cumulative counts interleave in one run.
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
    assert_eq!(found[0]["repaired"], json!(false), "{body}");
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

    // The total cannot be right, and every answer that includes the stream says which
    // stream and what to do: the query over HTTP and gRPC, the raw series, /metrics.
    let (_, answer) = fanin.query("metric=requests").await;
    let note = unreliable_note(&answer["notes"]).expect("a note on the HTTP answer");
    assert!(note.contains("service.instance.id=shared"), "{note}");
    assert!(note.contains("set after fork"), "{note}");
    let mut query = fanin.query_client().await;
    let grpc = query
        .query(fanin::proto::v1::QueryRequest {
            metric: "requests".into(),
            ..Default::default()
        })
        .await
        .expect("gRPC query")
        .into_inner();
    assert!(
        grpc.notes
            .iter()
            .any(|note| note.starts_with("unreliable total"))
    );
    let series = &fanin.series("requests").await[0];
    assert_eq!(
        series["unreliable"]["evidence"],
        json!("went_down_without_new_start")
    );
    let (_, page) = fanin.get("/metrics").await;
    let page = page.as_str().unwrap_or_default().to_string();
    assert!(page.contains("fanin_collisions_total 1\n"), "{page}");
    assert!(page.contains("fanin_unreliable_streams 1\n"), "{page}");
    // Another metric's answer is not burdened with it.
    send(&fanin, export("w1").counter("jobs", 100, 10, 1)).await;
    let (_, jobs) = fanin.query("metric=jobs").await;
    assert_eq!(unreliable_note(&jobs["notes"]), None, "{jobs}");
    fanin.stop().await;
}

fn unreliable_note(notes: &Value) -> Option<String> {
    notes
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .find(|note| note.starts_with("unreliable total"))
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread")]
async fn writers_with_their_own_start_times_collide_and_are_repaired() {
    // SDK <= 1.43 without pre-fork values: one resource, but each worker its own start.
    let fanin = start().await;
    for (start, time, value) in [(100, 200, 5), (150, 210, 9), (100, 300, 6), (150, 310, 10)] {
        send(
            &fanin,
            export("shared").counter("requests", start, time, value),
        )
        .await;
    }
    let body = collisions(&fanin).await;
    assert_eq!(
        evidence_kinds(&body["collisions"][0]),
        ["runs_overlap"],
        "{body}"
    );
    assert_eq!(body["collisions"][0]["repaired"], json!(true));
    assert!(body["collisions"][0]["count"].as_u64() >= Some(2));
    let (_, answer) = fanin.query("metric=requests").await;
    assert_eq!(answer["series"][0]["value"], json!(6 + 10));
    assert_eq!(answer["notes"], json!([]), "a repaired total needs no note");
    assert_eq!(fanin.series("requests").await[0]["runs"], json!(2));
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
async fn overlapping_deltas_from_two_writers_both_count() {
    let fanin = start().await;
    send(&fanin, export("shared").delta_counter("requests", 5, 20, 3)).await;
    send(
        &fanin,
        export("shared").delta_counter("requests", 10, 30, 4),
    )
    .await;
    let body = collisions(&fanin).await;
    assert_eq!(
        evidence_kinds(&body["collisions"][0]),
        ["chains_overlap"],
        "{body}"
    );
    assert_eq!(body["collisions"][0]["repaired"], json!(true));
    assert_eq!(fanin.total("metric=requests").await, json!(7));
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
    assert_eq!(fanin.total("metric=requests").await, json!(13));
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
        json!(50),
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
    assert_eq!(fanin.total("metric=requests").await, json!(6 + 13 + 12));
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_whose_first_measurement_fell_in_one_millisecond_are_not_inherited_state() {
    // An SDK that stamps whole milliseconds (JavaScript) gives independent workers that
    // started together one start time; without a pid nothing proves inheritance.
    let fanin = start().await;
    let start_ms = 1_700_000_000_123_000_000;
    for (worker, value) in [("w1", 4), ("w2", 6)] {
        send(
            &fanin,
            export(worker).counter("jobs", start_ms, start_ms + 10, value),
        )
        .await;
    }
    assert_eq!(collisions(&fanin).await["inherited_state"], json!([]));
    fanin.stop().await;
}

/// Two processes of this host that the test started (and ends, by pid, when dropped).
struct Processes(Vec<std::process::Child>);

impl Processes {
    fn start() -> Processes {
        Processes(
            (0..2)
                .map(|_| {
                    std::process::Command::new("sleep")
                        .arg("60")
                        .spawn()
                        .expect("spawn sleep")
                })
                .collect(),
        )
    }

    /// An export from the instance of process `index`, naming its pid and this host.
    fn export(&self, index: usize) -> common::Export {
        let host = nix::unistd::gethostname()
            .expect("host name")
            .into_string()
            .expect("utf-8 host name");
        export(&format!("w{index}"))
            .resource_attr(common::int_attr(
                "process.pid",
                i64::from(self.0[index].id()),
            ))
            .resource_attr(common::string_attr("host.name", &host))
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn whole_millis_since_epoch(offset: std::time::Duration, later: bool) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    let at = if later { now + offset } else { now - offset };
    at.as_millis() as u64 * 1_000_000
}

#[tokio::test(flavor = "multi_thread")]
async fn a_start_time_before_the_process_started_proves_inherited_state() {
    let fanin = start().await;
    let processes = Processes::start();
    // Recorded ten seconds before either process existed: a parent's count, even though
    // the start time has only millisecond precision.
    let inherited = whole_millis_since_epoch(std::time::Duration::from_secs(10), false);
    // Recorded a few seconds after both started: each process's own, even though equal.
    let own = whole_millis_since_epoch(std::time::Duration::from_secs(3), true);
    for index in 0..2 {
        let request = processes
            .export(index)
            .counter("inherited", inherited, own + 10, 5)
            .counter("own", own, own + 10, 5);
        send(&fanin, request).await;
    }
    let findings = collisions(&fanin).await["inherited_state"].clone();
    let metrics: Vec<&str> = findings
        .as_array()
        .expect("findings")
        .iter()
        .filter_map(|finding| finding["metric"].as_str())
        .collect();
    assert_eq!(metrics, ["inherited"], "{findings}");
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retired_instances_pid_proves_nothing() {
    // A retired worker's process may be gone and its pid reused by a later process, whose
    // start would then "prove" the worker's own start time inherited.
    let fanin = start().await;
    let processes = Processes::start();
    let inherited = whole_millis_since_epoch(std::time::Duration::from_secs(10), false);
    let now = whole_millis_since_epoch(std::time::Duration::ZERO, true);
    for index in 0..2 {
        let request = processes
            .export(index)
            .counter("inherited", inherited, now, 5);
        send(&fanin, request).await;
    }
    let findings = collisions(&fanin).await["inherited_state"].clone();
    assert_eq!(findings[0]["metric"], json!("inherited"), "{findings}");
    assert_eq!(fanin.advance(fanin.ttl).retired, 2);
    assert_eq!(collisions(&fanin).await["inherited_state"], json!([]));
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_that_read_the_clock_in_one_nanosecond_are_not_inherited_state() {
    // Workers forked together and scheduled at once run in step: `fanin check`'s two shim
    // workers created a histogram in the same nanosecond about once in fifty runs. Their
    // pids are known and the start time is their own (within /proc's precision of their
    // start), so nothing proves inheritance, however precise the start time.
    let fanin = start().await;
    let processes = Processes::start();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    let start_ns = u64::try_from(now.as_nanos()).expect("fits") | 1;
    for index in 0..2 {
        let request = processes
            .export(index)
            .counter("requests", start_ns, start_ns + 10, 5);
        send(&fanin, request).await;
    }
    assert_eq!(collisions(&fanin).await["inherited_state"], json!([]));
    // Nor once they retire: their pids, checked or not, still prove nothing.
    assert_eq!(fanin.advance(fanin.ttl).retired, 2);
    assert_eq!(collisions(&fanin).await["inherited_state"], json!([]));
    // The same start time from two workers without a pid is still reported.
    for worker in ["w8", "w9"] {
        send(
            &fanin,
            export(worker).counter("requests", start_ns, start_ns + 10, 5),
        )
        .await;
    }
    let findings = collisions(&fanin).await["inherited_state"].clone();
    let instances = findings[0]["instances"].as_array().map(Vec::len);
    assert_eq!(instances, Some(2), "{findings}");
    fanin.stop().await;
}

/// The takeover from issue 13: a second connection writes under a live worker's resource
/// with a start time after the worker's latest point, as a restarted worker would. It is
/// taken as a restart at first; the worker's next export shows two runs alive at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_writer_taking_over_a_live_workers_counter_is_caught() {
    let fanin = start().await;
    send(&fanin, export("w1").counter("requests", 100, 200, 12_345)).await;
    send(
        &fanin,
        export("w1").counter("requests", 250, 260, 1_000_000_000),
    )
    .await;
    assert_eq!(
        collisions(&fanin).await["collisions"],
        json!([]),
        "one process restarting looks the same so far"
    );
    send(&fanin, export("w1").counter("requests", 100, 300, 12_346)).await;
    let body = collisions(&fanin).await;
    assert_eq!(
        evidence_kinds(&body["collisions"][0]),
        ["runs_overlap"],
        "{body}"
    );
    assert_eq!(body["collisions"][0]["metric"], json!("requests"));
    assert_eq!(body["collisions"][0]["repaired"], json!(true));
    // Repaired as two processes: the forged run is its own, counted and shown.
    assert_eq!(fanin.series("requests").await[0]["runs"], json!(2));
    assert_eq!(fanin.total("metric=requests").await, json!(1_000_012_346));
    fanin.stop().await;
}
