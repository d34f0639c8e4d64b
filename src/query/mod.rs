//! The query API on the query listener: what the store holds, as JSON and in the Prometheus
//! text format (the same answers are served over gRPC by `grpc.rs` on the OTLP/gRPC listener).
//!
//! - `GET /api/v1/query?metric=NAME[&agg=..][&by=..][&match=k=v]`: the total across
//!   instances (`answer.rs`, then `aggregate::Space`).
//! - `GET /api/v1/metrics`: every metric name with kind, unit, description, instance counts.
//! - `GET /metrics`: the same totals in the Prometheus text format (`prometheus.rs`).
//! - `GET /api/v1/instances`: every instance with its attributes, pid, writer, last export,
//!   live or retired.
//! - `GET /api/v1/series?metric=NAME`: the raw per-instance streams of one metric.
//! - `GET /api/v1/stats`: counters of requests and points by outcome, and type conflicts.
//! - `GET /api/v1/collisions`: streams written by more than one process, and inherited state.
//! - `GET /healthz` (the process answers) and `GET /readyz` (listeners bound, not shutting
//!   down).
//!
//! Handlers copy what they need out of the store (`Store::streams` returns owned views) and
//! render it; no lock is held while a response is written.

mod answer;
mod answers;
pub mod grpc;
pub mod history;
mod json;
mod message;
mod params;
pub mod prometheus;
pub mod web;
mod workers;

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::aggregate::AggregateError;
use crate::config::AggregationRule;
use crate::security::{self, Guard};
use crate::store::Store;

pub use answer::default_agg;
pub use answers::Answers;
pub use history::{History, HistorySettings};
pub use params::{
    DEFAULT_PAGE, MAX_GROUP_KEYS, MAX_MATCHES, MAX_PAGE, PageParams, ParamError, QueryParams,
    SeriesParams,
};
pub use workers::Workers;

/// Why a query could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("no metric named {0:?} has been received")]
    UnknownMetric(String),
    #[error("no such endpoint: {0}; the endpoints are {endpoints}", endpoints = ENDPOINTS.join(", "))]
    NotFound(String),
    #[error(transparent)]
    Param(#[from] ParamError),
    #[error(transparent)]
    Aggregate(#[from] AggregateError),
    #[error(transparent)]
    History(#[from] history::HistoryError),
    #[error("fanin failed to answer this query")]
    Failed,
}

impl QueryError {
    /// The HTTP status this error is answered with.
    fn status(&self) -> StatusCode {
        match self {
            QueryError::Param(_)
            | QueryError::Aggregate(_)
            | QueryError::History(
                history::HistoryError::OtherAgg { .. } | history::HistoryError::AvgBy,
            ) => StatusCode::BAD_REQUEST,
            QueryError::History(history::HistoryError::Unknown(_)) => StatusCode::NOT_FOUND,
            QueryError::UnknownMetric(_) | QueryError::NotFound(_) => StatusCode::NOT_FOUND,
            QueryError::Failed => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        (
            self.status(),
            axum::Json(json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

/// Every path the router answers, for the message of an unknown one.
pub const ENDPOINTS: [&str; 12] = [
    "/",
    "/ui/metric",
    "/api/v1/query",
    "/api/v1/history",
    "/api/v1/metrics",
    "/api/v1/instances",
    "/api/v1/series",
    "/api/v1/stats",
    "/api/v1/collisions",
    "/metrics",
    "/healthz",
    "/readyz",
];

/// How the query API answers.
#[derive(Clone, Debug)]
pub struct QuerySettings {
    /// Each metric's default aggregation, and the default answers kept between readers
    /// (`/metrics`, the exporters, the history).
    pub answers: Arc<Answers>,
    /// Where query work runs, shared with the gRPC `QueryService`.
    pub workers: Workers,
    /// Each metric's recent aggregated totals (`/api/v1/history`), sampled by the app.
    pub history: Arc<History>,
}

impl QuerySettings {
    /// `rules`, answered `max_concurrent` queries at a time, keeping no history.
    pub fn new(rules: Vec<AggregationRule>, max_concurrent: usize) -> QuerySettings {
        QuerySettings {
            answers: Arc::new(Answers::new(rules.into())),
            workers: Workers::new(max_concurrent),
            // No history until `with_history` says how much (`query.history`, whose
            // defaults live in config.yaml).
            history: Arc::new(History::new(HistorySettings {
                step: std::time::Duration::from_secs(10),
                points: 1,
                max_series: 0,
            })),
        }
    }

    /// The same, keeping history as `settings` say.
    pub fn with_history(mut self, settings: HistorySettings) -> QuerySettings {
        self.history = Arc::new(History::new(settings));
        self
    }

    /// Samples every metric's aggregated groups into the history every `step` until
    /// `shutdown`, on the query threads.
    pub async fn sample_history(&self, store: Store, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(self.history.settings().step);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = interval.tick() => {
                    let (store, answers, history) =
                        (store.clone(), Arc::clone(&self.answers), Arc::clone(&self.history));
                    let _ = self.workers.run(move || history.sample(&store, &answers)).await;
                }
            }
        }
    }
}

#[derive(Clone)]
struct QueryState {
    store: Store,
    /// The rules too (`Answers::rules`).
    answers: Arc<Answers>,
    history: Arc<History>,
    workers: Workers,
}

/// The query router; `/readyz` answers 503 once `shutdown` is cancelled.
pub fn router(
    store: Store,
    settings: QuerySettings,
    guard: Arc<Guard>,
    shutdown: CancellationToken,
) -> Router {
    let answers = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/api/v1/query", get(query))
        .route("/api/v1/metrics", get(metrics))
        .route("/api/v1/instances", get(instances))
        .route("/api/v1/series", get(series))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/collisions", get(collisions))
        .route("/api/v1/history", get(history_answer))
        .route("/", get(overview_page))
        .route("/ui/metric", get(metric_page))
        .with_state(QueryState {
            store: store.clone(),
            answers: settings.answers,
            workers: settings.workers,
            history: settings.history,
        });
    // Probes need no token, and neither do the page's stylesheet and script (no data).
    let probes = Router::new()
        .route(
            "/ui/fanin.css",
            get(|| async { web::asset("text/css; charset=utf-8", web::CSS) }),
        )
        .route(
            "/ui/fanin.js",
            get(|| async { web::asset("text/javascript; charset=utf-8", web::JS) }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(shutdown);
    security::require_token(answers, guard, store)
        .merge(probes)
        .fallback(
            |uri: axum::http::Uri| async move { QueryError::NotFound(uri.path().to_string()) },
        )
}

impl QueryState {
    /// Runs `work` (a page) on the query workers with the store, the rules and the history.
    async fn page<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store, &[AggregationRule], &History) -> T + Send + 'static,
    ) -> Result<T, QueryError> {
        let (store, rules, history) = (
            self.store.clone(),
            Arc::clone(self.answers.rules()),
            Arc::clone(&self.history),
        );
        self.workers
            .run(move || work(&store, &rules, &history))
            .await
    }

    /// Runs `work` on the query workers and answers what it returns as JSON.
    async fn json<T: serde::Serialize + Send + 'static>(
        &self,
        work: impl FnOnce(&Store, &[AggregationRule]) -> Result<T, QueryError> + Send + 'static,
    ) -> Result<Response, QueryError> {
        let (store, rules) = (self.store.clone(), Arc::clone(self.answers.rules()));
        let body = self.workers.run(move || work(&store, &rules)).await??;
        Ok(axum::Json(body).into_response())
    }
}

async fn query(
    State(state): State<QueryState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, QueryError> {
    let params = QueryParams::parse(raw.as_deref())?;
    state
        .json(move |store, rules| {
            let answer = answer::answer(store, rules, &params)?;
            Ok(message::query_response(&answer))
        })
        .await
}

/// How long a `/metrics` reader may take to make room for the next chunk of the page.
const SLOW_READER: std::time::Duration = std::time::Duration::from_secs(30);

/// The Prometheus page, streamed: rendered on a query worker, in chunks, as the client reads
/// them (`prometheus.rs`).
async fn metrics_text(State(state): State<QueryState>) -> Response {
    let (chunks, body) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let (store, answers) = (state.store.clone(), Arc::clone(&state.answers));
    let render_chunks = chunks.clone();
    let runtime = tokio::runtime::Handle::current();
    let render = move || {
        prometheus::render_chunks(&store, &answers, &mut |chunk| {
            // A reader that hangs up, or takes a chunk slower than SLOW_READER, ends the
            // rendering: it must not hold a query thread.
            let send = render_chunks.send(Ok(Bytes::from(chunk)));
            // The timer is the runtime's: the timeout is made inside block_on.
            let sent = runtime.block_on(async { tokio::time::timeout(SLOW_READER, send).await });
            matches!(sent, Ok(Ok(())))
        });
    };
    tokio::spawn(async move {
        if state.workers.run(render).await.is_err() {
            // Cut the body short rather than let a partial page look whole.
            let failed = std::io::Error::other("rendering /metrics failed");
            let _ = chunks.send(Err(failed)).await;
        }
    });
    (
        [(axum::http::header::CONTENT_TYPE, prometheus::CONTENT_TYPE)],
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(body)),
    )
        .into_response()
}

async fn metrics(State(state): State<QueryState>) -> Result<Response, QueryError> {
    state
        .json(|store, rules| Ok(grpc::metrics_response(store, rules)))
        .await
}

async fn instances(
    State(state): State<QueryState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, QueryError> {
    let page = PageParams::parse(raw.as_deref())?;
    state
        .json(move |store, _| {
            let found = store.instances_page(page.cursor, page.limit);
            let instances: Vec<_> = found.items.iter().map(json::instance).collect();
            Ok(json!({
                "instances": instances,
                "next_cursor": found.next.map(|next| next.to_string()),
            }))
        })
        .await
}

async fn series(
    State(state): State<QueryState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, QueryError> {
    let SeriesParams { metric, page } = SeriesParams::parse(raw.as_deref())?;
    if !state.store.has_metric(&metric) {
        return Err(QueryError::UnknownMetric(metric));
    }
    state
        .json(move |store, _| {
            let found = store.streams_page(&metric, page.cursor, page.limit);
            let streams: Vec<_> = found.items.iter().map(json::stream).collect();
            Ok(json!({
                "metric": metric,
                "streams": streams,
                "next_cursor": found.next.map(|next| next.to_string()),
            }))
        })
        .await
}

async fn stats(State(state): State<QueryState>) -> Result<Response, QueryError> {
    state
        .json(|store, _| {
            let held = json::Held {
                streams: store.stream_count(),
                retired_totals: store.retired_total_count(),
                instances: store.instance_count(),
            };
            Ok(json::stats(
                &store.stats().snapshot(),
                held,
                &store.type_conflicts(),
            ))
        })
        .await
}

async fn collisions(State(state): State<QueryState>) -> Result<Response, QueryError> {
    state
        .json(|store, _| {
            let mut found = store.collisions();
            found.sort_by_key(|collision| collision.first_seen);
            let mut inherited = store.inherited_state();
            inherited.sort_by(|a, b| {
                a.metric
                    .name
                    .cmp(&b.metric.name)
                    .then(a.start.cmp(&b.start))
            });
            Ok(json::collisions(&found, &inherited))
        })
        .await
}

async fn history_answer(
    State(state): State<QueryState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, QueryError> {
    let params = QueryParams::parse(raw.as_deref())?;
    let history = Arc::clone(&state.history);
    state
        .json(move |_, rules| Ok(history.answer(&params, rules)?))
        .await
}

async fn overview_page(State(state): State<QueryState>) -> Result<Response, QueryError> {
    let page = state.page(web::overview).await?;
    Ok(web::html(page))
}

async fn metric_page(
    State(state): State<QueryState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, QueryError> {
    let params = match QueryParams::parse(raw.as_deref()) {
        Ok(params) => params,
        Err(error) => return Ok(web::error_page(StatusCode::BAD_REQUEST, &error.to_string())),
    };
    let page = state
        .page(move |store, rules, history| web::metric(store, rules, history, &params))
        .await?;
    Ok(match page {
        Ok(page) => web::html(page),
        Err(error) => web::error_page(error.status(), &error.to_string()),
    })
}

async fn readyz(State(shutdown): State<CancellationToken>) -> Response {
    if shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    use crate::store::StoreSettings;

    fn app() -> Router {
        let store = Store::new(StoreSettings::for_tests(1));
        router(
            store,
            QuerySettings::new(Vec::new(), 1),
            std::sync::Arc::new(crate::security::Guard::open(crate::store::Listener::Query)),
            CancellationToken::new(),
        )
    }

    async fn status_of(path: &str) -> StatusCode {
        let request = Request::get(path).body(Body::empty()).expect("request");
        app().oneshot(request).await.expect("answer").status()
    }

    #[tokio::test]
    async fn every_endpoint_the_404_names_is_routed() {
        for path in ENDPOINTS {
            assert_ne!(status_of(path).await, StatusCode::NOT_FOUND, "{path}");
        }
        assert_eq!(status_of("/api/v1/nothing").await, StatusCode::NOT_FOUND);
    }
}
