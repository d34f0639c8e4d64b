//! The gRPC `fanin.v1.QueryService`, served on the OTLP/gRPC listener. Same questions, same
//! answers as the HTTP API: both go through `answer.rs` and `message.rs`.

use std::sync::Arc;

use tonic::service::{Interceptor, interceptor::InterceptedService};
use tonic::{Request, Response, Status};

use super::{QueryError, QueryParams, QuerySettings, Workers, answer, default_agg, message};
use crate::config::AggregationRule;
use crate::proto::v1 as pb;
use crate::proto::v1::query_service_server::{QueryService, QueryServiceServer};
use crate::security::Guard;
use crate::store::Store;

/// The `QueryService` implementation.
pub struct QueryServer {
    store: Store,
    rules: Arc<[AggregationRule]>,
    workers: Workers,
}

impl QueryServer {
    /// The service, answering `UNAUTHENTICATED` to a call without the token of `guard`,
    /// the listener it is served on (the OTLP/gRPC one), when it has a token.
    pub fn service(
        store: Store,
        settings: QuerySettings,
        guard: Arc<Guard>,
    ) -> InterceptedService<QueryServiceServer<QueryServer>, TokenCheck> {
        let check = TokenCheck {
            guard: guard.authenticates().then_some(guard),
            store: store.clone(),
        };
        let server = QueryServer {
            store,
            rules: Arc::clone(settings.answers.rules()),
            workers: settings.workers,
        };
        QueryServiceServer::with_interceptor(server, check)
    }
}

/// The listener's token check, run on a call's metadata before its message is read.
#[derive(Clone)]
pub struct TokenCheck {
    guard: Option<Arc<Guard>>,
    store: Store,
}

impl Interceptor for TokenCheck {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let Some(guard) = &self.guard else {
            return Ok(request);
        };
        let headers = std::mem::take(request.metadata_mut()).into_headers();
        guard
            .check(&headers, self.store.stats())
            .map_err(|refusal| Status::unauthenticated(refusal.to_string()))?;
        *request.metadata_mut() = tonic::metadata::MetadataMap::from_headers(headers);
        Ok(request)
    }
}

impl From<QueryError> for Status {
    fn from(error: QueryError) -> Status {
        match error {
            QueryError::UnknownMetric(_)
            | QueryError::NotFound(_)
            | QueryError::History(crate::query::history::HistoryError::Unknown(_)) => {
                Status::not_found(error.to_string())
            }
            QueryError::Param(_) | QueryError::Aggregate(_) | QueryError::History(_) => {
                Status::invalid_argument(error.to_string())
            }
            QueryError::Failed => Status::internal(error.to_string()),
        }
    }
}

#[tonic::async_trait]
impl QueryService for QueryServer {
    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        let params = QueryParams::from_request(request.into_inner()).map_err(QueryError::from)?;
        let (store, rules) = (self.store.clone(), Arc::clone(&self.rules));
        let answer = self
            .workers
            .run(move || {
                answer::answer(&store, &rules, &params)
                    .map(|answer| message::query_response(&answer))
            })
            .await??;
        Ok(Response::new(answer))
    }

    async fn metrics(
        &self,
        _: Request<pb::MetricsRequest>,
    ) -> Result<Response<pb::MetricsResponse>, Status> {
        let (store, rules) = (self.store.clone(), Arc::clone(&self.rules));
        let response = self
            .workers
            .run(move || metrics_response(&store, &rules))
            .await?;
        Ok(Response::new(response))
    }
}

/// Every metric, sorted by name, with its default aggregation.
pub fn metrics_response(store: &Store, rules: &[AggregationRule]) -> pb::MetricsResponse {
    let mut summaries = store.metrics();
    summaries.sort_by(|a, b| a.metric.name.cmp(&b.metric.name));
    pb::MetricsResponse {
        metrics: summaries
            .iter()
            .map(|summary| {
                message::metric_info(summary, default_agg(rules, &summary.metric.name).as_str())
            })
            .collect(),
    }
}
