//! Query-string parameters of `/api/v1/query`, parsed once into types.
//!
//! Unknown parameters are an error rather than ignored: `mertic=x` or `ag=max` would
//! otherwise answer a different question than the one asked.

use crate::aggregate::Agg;

/// `GET /api/v1/query?metric=NAME[&agg=..][&by=k1,k2][&match=k=v]...`
#[derive(Debug, Clone, PartialEq)]
pub struct QueryParams {
    pub metric: String,
    /// `None`: the metric's default (config rules, else `sum`).
    pub agg: Option<Agg>,
    /// `None`: group by every attribute left after dropping instance attributes.
    pub by: Option<Vec<String>>,
    /// Keep only streams whose attribute `key` renders as `value`; all must hold.
    pub matches: Vec<(String, String)>,
}

/// A parameter that is missing, repeated, unknown or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("missing query parameter `{0}`")]
    Missing(&'static str),
    #[error("query parameter `{0}` is given more than once")]
    Repeated(String),
    #[error("unknown query parameter `{0}`; use metric, agg, by and match")]
    Unknown(String),
    #[error("query parameter `{name}`: {message}")]
    Invalid { name: &'static str, message: String },
}

impl QueryParams {
    /// Parses a raw query string (`None` when the URL has none).
    ///
    /// # Errors
    /// [`ParamError`] naming the parameter.
    pub fn parse(query: Option<&str>) -> Result<QueryParams, ParamError> {
        let mut metric = None;
        let mut agg = None;
        let mut by = None;
        let mut matches = Vec::new();
        for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match name.as_ref() {
                "metric" => set_once(&mut metric, "metric", value.into_owned())?,
                "agg" => {
                    let parsed = value
                        .parse::<Agg>()
                        .map_err(|message| ParamError::Invalid {
                            name: "agg",
                            message,
                        })?;
                    set_once(&mut agg, "agg", parsed)?;
                }
                "by" => {
                    let keys: Vec<String> = value
                        .split(',')
                        .map(str::trim)
                        .filter(|key| !key.is_empty())
                        .map(str::to_string)
                        .collect();
                    set_once(&mut by, "by", keys)?;
                }
                "match" => {
                    let (key, wanted) =
                        value.split_once('=').ok_or_else(|| ParamError::Invalid {
                            name: "match",
                            message: format!("{value:?} is not key=value"),
                        })?;
                    if key.is_empty() {
                        return Err(ParamError::Invalid {
                            name: "match",
                            message: format!("{value:?} has an empty key"),
                        });
                    }
                    matches.push((key.to_string(), wanted.to_string()));
                }
                other => return Err(ParamError::Unknown(other.to_string())),
            }
        }
        let metric = metric.ok_or(ParamError::Missing("metric"))?;
        if metric.is_empty() {
            return Err(ParamError::Invalid {
                name: "metric",
                message: "is empty".into(),
            });
        }
        Ok(QueryParams {
            metric,
            agg,
            by,
            matches,
        })
    }
}

impl QueryParams {
    /// The same parameters from a gRPC `QueryRequest`.
    ///
    /// # Errors
    /// [`ParamError`] naming the field, as for the query string.
    pub fn from_request(
        request: crate::proto::v1::QueryRequest,
    ) -> Result<QueryParams, ParamError> {
        if request.metric.is_empty() {
            return Err(ParamError::Missing("metric"));
        }
        let agg = if request.agg.is_empty() {
            None
        } else {
            Some(
                request
                    .agg
                    .parse::<Agg>()
                    .map_err(|message| ParamError::Invalid {
                        name: "agg",
                        message,
                    })?,
            )
        };
        let mut matches = Vec::with_capacity(request.matches.len());
        for condition in request.matches {
            if condition.key.is_empty() {
                return Err(ParamError::Invalid {
                    name: "match",
                    message: "a match has an empty key".into(),
                });
            }
            matches.push((condition.key, condition.value));
        }
        Ok(QueryParams {
            metric: request.metric,
            agg,
            by: request.by.map(|group| group.keys),
            matches,
        })
    }
}

fn set_once<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), ParamError> {
    if slot.is_some() {
        return Err(ParamError::Repeated(name.to_string()));
    }
    *slot = Some(value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(query: &str, expected: Result<QueryParams, &str>) {
        let got = QueryParams::parse(Some(query)).map_err(|error| error.to_string());
        assert_eq!(got, expected.map_err(str::to_string));
    }

    fn params(metric: &str) -> QueryParams {
        QueryParams {
            metric: metric.into(),
            agg: None,
            by: None,
            matches: Vec::new(),
        }
    }

    #[test]
    fn parses_every_parameter() {
        check("metric=http.requests", Ok(params("http.requests")));
        check(
            "metric=inflight&agg=max&by=route,%20method&match=route%3D/a&match=code=200",
            Ok(QueryParams {
                agg: Some(Agg::Max),
                by: Some(vec!["route".into(), "method".into()]),
                matches: vec![("route".into(), "/a".into()), ("code".into(), "200".into())],
                ..params("inflight")
            }),
        );
        check(
            "metric=x&by=",
            Ok(QueryParams {
                by: Some(vec![]),
                ..params("x")
            }),
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        check("agg=sum", Err("missing query parameter `metric`"));
        check("metric=", Err("query parameter `metric`: is empty"));
        check(
            "metric=x&agg=median",
            Err(
                "query parameter `agg`: \"median\" is not an aggregation; use sum, max, min, avg or count",
            ),
        );
        check(
            "metric=x&mtch=a=b",
            Err("unknown query parameter `mtch`; use metric, agg, by and match"),
        );
        check(
            "metric=x&match=ab",
            Err("query parameter `match`: \"ab\" is not key=value"),
        );
        check(
            "metric=x&metric=y",
            Err("query parameter `metric` is given more than once"),
        );
    }
}
