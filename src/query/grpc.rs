//! The gRPC `fanin.v1.QueryService`, served on the OTLP/gRPC listener. Same questions, same
//! answers as the HTTP API: both go through `answer.rs` and `message.rs`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{QueryError, QueryParams, QuerySettings, Workers, answer, default_agg, message};
use crate::config::AggregationRule;
use crate::proto::v1 as pb;
use crate::proto::v1::query_service_server::{QueryService, QueryServiceServer};
use crate::store::Store;

/// The `QueryService` implementation.
pub struct QueryServer {
    store: Store,
    rules: Arc<[AggregationRule]>,
    workers: Workers,
}

impl QueryServer {
    pub fn service(store: Store, settings: QuerySettings) -> QueryServiceServer<QueryServer> {
        QueryServiceServer::new(QueryServer {
            store,
            rules: settings.rules.into(),
            workers: settings.workers,
        })
    }
}

impl From<QueryError> for Status {
    fn from(error: QueryError) -> Status {
        match error {
            QueryError::UnknownMetric(_) | QueryError::NotFound(_) => {
                Status::not_found(error.to_string())
            }
            QueryError::Param(_) | QueryError::Aggregate(_) => {
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
