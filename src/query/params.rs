//! Parameters of `/api/v1/query` (and its gRPC twin) and `/api/v1/series`, parsed once into
//! types, with one set of checks whichever transport asked.
//!
//! Unknown parameters are an error rather than ignored: `mertic=x` or `ag=max` would
//! otherwise answer a different question than the one asked.

use crate::aggregate::Agg;
use crate::store::Cursor;

/// The most `by` keys one query may name. A point carries at most 128 attributes by default
/// (`limits.max_attributes`), so more keys cannot group any finer; they would only make
/// every stream's group key longer.
pub const MAX_GROUP_KEYS: usize = 128;

/// The most `match` conditions one query may give, for the same reason.
pub const MAX_MATCHES: usize = 128;

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

/// `GET /api/v1/series?metric=NAME[&limit=N][&cursor=C]`
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesParams {
    pub metric: String,
    pub page: PageParams,
}

/// Items a page holds unless `limit` says otherwise.
pub const DEFAULT_PAGE: usize = 1000;

/// The largest `limit` a page may ask for.
pub const MAX_PAGE: usize = 10_000;

/// Which page of a long listing: `[limit=N][&cursor=C]`, as `/api/v1/instances` takes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PageParams {
    /// 1 to [`MAX_PAGE`]; [`DEFAULT_PAGE`] when not given.
    pub limit: usize,
    /// The previous page's `next_cursor`; `None` for the first page.
    pub cursor: Option<Cursor>,
}

/// A parameter that is missing, repeated, unknown or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("missing query parameter `{0}`")]
    Missing(&'static str),
    #[error("query parameter `{0}` is given more than once")]
    Repeated(String),
    #[error("unknown query parameter `{name}`; use {allowed}")]
    Unknown { name: String, allowed: &'static str },
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
                "agg" => set_once(&mut agg, "agg", parse_agg(&value)?)?,
                "by" => set_once(&mut by, "by", group_keys(value.split(',')))?,
                "match" => {
                    let (key, wanted) =
                        value.split_once('=').ok_or_else(|| ParamError::Invalid {
                            name: "match",
                            message: format!("{value:?} is not key=value"),
                        })?;
                    matches.push(condition(key, wanted)?);
                    at_most("match", matches.len(), MAX_MATCHES)?;
                }
                other => {
                    return Err(ParamError::Unknown {
                        name: other.to_string(),
                        allowed: "metric, agg, by and match",
                    });
                }
            }
        }
        QueryParams {
            metric: metric_name(metric)?,
            agg,
            by,
            matches,
        }
        .within_caps()
    }

    /// The same parameters from a gRPC `QueryRequest`, under the same checks. Proto3 cannot
    /// tell an empty string from an unset one: an empty `metric` is a missing one, and an
    /// empty `agg` the default aggregation.
    ///
    /// # Errors
    /// [`ParamError`] naming the field, as for the query string.
    pub fn from_request(
        request: crate::proto::v1::QueryRequest,
    ) -> Result<QueryParams, ParamError> {
        let agg = match request.agg.as_str() {
            "" => None,
            agg => Some(parse_agg(agg)?),
        };
        at_most("match", request.matches.len(), MAX_MATCHES)?;
        let matches = request
            .matches
            .iter()
            .map(|condition| self::condition(&condition.key, &condition.value))
            .collect::<Result<Vec<_>, _>>()?;
        QueryParams {
            metric: metric_name(Some(request.metric).filter(|metric| !metric.is_empty()))?,
            agg,
            by: request
                .by
                .map(|group| group_keys(group.keys.iter().map(String::as_str))),
            matches,
        }
        .within_caps()
    }

    fn within_caps(self) -> Result<QueryParams, ParamError> {
        if let Some(by) = &self.by {
            at_most("by", by.len(), MAX_GROUP_KEYS)?;
        }
        at_most("match", self.matches.len(), MAX_MATCHES)?;
        Ok(self)
    }
}

/// `count` items of parameter `name`, at most `max` of them.
fn at_most(name: &'static str, count: usize, max: usize) -> Result<(), ParamError> {
    if count > max {
        return Err(ParamError::Invalid {
            name,
            message: format!("gives more than {max} values"),
        });
    }
    Ok(())
}

impl SeriesParams {
    /// Parses a raw query string.
    ///
    /// # Errors
    /// [`ParamError`] naming the parameter.
    pub fn parse(query: Option<&str>) -> Result<SeriesParams, ParamError> {
        let mut metric = None;
        let mut page = PageSlots::default();
        for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match name.as_ref() {
                "metric" => set_once(&mut metric, "metric", value.into_owned())?,
                other => page.take(other, &value, "metric, limit and cursor")?,
            }
        }
        Ok(SeriesParams {
            metric: metric_name(metric)?,
            page: page.params(),
        })
    }
}

impl PageParams {
    /// Parses a raw query string that may hold only `limit` and `cursor`.
    ///
    /// # Errors
    /// [`ParamError`] naming the parameter.
    pub fn parse(query: Option<&str>) -> Result<PageParams, ParamError> {
        let mut page = PageSlots::default();
        for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            page.take(&name, &value, "limit and cursor")?;
        }
        Ok(page.params())
    }
}

/// `limit` and `cursor` as a query string gives them, each at most once.
#[derive(Default)]
struct PageSlots {
    limit: Option<usize>,
    cursor: Option<Cursor>,
}

impl PageSlots {
    /// Takes parameter `name` if it is `limit` or `cursor`; any other name is unknown, and
    /// `allowed` lists the ones the endpoint takes.
    fn take(&mut self, name: &str, value: &str, allowed: &'static str) -> Result<(), ParamError> {
        match name {
            "limit" => set_once(&mut self.limit, "limit", page_limit(value)?),
            "cursor" => {
                let cursor = value.parse().map_err(|error: crate::store::CursorError| {
                    ParamError::Invalid {
                        name: "cursor",
                        message: error.to_string(),
                    }
                })?;
                set_once(&mut self.cursor, "cursor", cursor)
            }
            other => Err(ParamError::Unknown {
                name: other.chars().take(80).collect(),
                allowed,
            }),
        }
    }

    fn params(self) -> PageParams {
        PageParams {
            limit: self.limit.unwrap_or(DEFAULT_PAGE),
            cursor: self.cursor,
        }
    }
}

fn page_limit(value: &str) -> Result<usize, ParamError> {
    match value.parse::<usize>() {
        Ok(limit @ 1..=MAX_PAGE) => Ok(limit),
        _ => Err(ParamError::Invalid {
            name: "limit",
            message: format!("{value:?} is not a number from 1 to {MAX_PAGE}"),
        }),
    }
}

/// The metric asked for: present and not empty.
fn metric_name(metric: Option<String>) -> Result<String, ParamError> {
    match metric {
        None => Err(ParamError::Missing("metric")),
        Some(metric) if metric.is_empty() => Err(ParamError::Invalid {
            name: "metric",
            message: "is empty".into(),
        }),
        Some(metric) => Ok(metric),
    }
}

fn parse_agg(text: &str) -> Result<Agg, ParamError> {
    text.parse::<Agg>().map_err(|message| ParamError::Invalid {
        name: "agg",
        message,
    })
}

/// `by` keys, trimmed; empty ones (`by=` asks for one group) are left out.
fn group_keys<'k>(keys: impl Iterator<Item = &'k str>) -> Vec<String> {
    keys.map(str::trim)
        .filter(|key| !key.is_empty())
        .map(str::to_string)
        .collect()
}

/// One `match` condition: its key must not be empty.
fn condition(key: &str, wanted: &str) -> Result<(String, String), ParamError> {
    if key.is_empty() {
        return Err(ParamError::Invalid {
            name: "match",
            message: format!("{:?} has an empty key", format!("={wanted}")),
        });
    }
    Ok((key.to_string(), wanted.to_string()))
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
        check(
            "metric=x&match==a",
            Err("query parameter `match`: \"=a\" has an empty key"),
        );
    }

    #[test]
    fn key_and_condition_lists_are_capped() {
        let keys = |n: usize| (0..n).map(|i| format!("k{i}")).collect::<Vec<_>>();
        let by = |n| format!("metric=x&by={}", keys(n).join(","));
        assert!(QueryParams::parse(Some(&by(MAX_GROUP_KEYS))).is_ok());
        check(
            &by(MAX_GROUP_KEYS + 1),
            Err("query parameter `by`: gives more than 128 values"),
        );
        let matches = |n| {
            let conditions: Vec<_> = keys(n).iter().map(|key| format!("match={key}=v")).collect();
            format!("metric=x&{}", conditions.join("&"))
        };
        assert!(QueryParams::parse(Some(&matches(MAX_MATCHES))).is_ok());
        check(
            &matches(MAX_MATCHES + 1),
            Err("query parameter `match`: gives more than 128 values"),
        );

        use crate::proto::v1::{GroupBy, QueryRequest};
        let request = QueryRequest {
            metric: "x".into(),
            agg: String::new(),
            by: Some(GroupBy {
                keys: keys(100_000),
            }),
            matches: Vec::new(),
        };
        assert_eq!(
            QueryParams::from_request(request).map_err(|e| e.to_string()),
            Err("query parameter `by`: gives more than 128 values".to_string())
        );
    }

    #[test]
    fn grpc_requests_get_the_same_checks() {
        use crate::proto::v1::{GroupBy, Match, QueryRequest};
        let request = |metric: &str, keys: &[&str], key: &str| QueryRequest {
            metric: metric.into(),
            agg: String::new(),
            by: Some(GroupBy {
                keys: keys.iter().map(|key| key.to_string()).collect(),
            }),
            matches: vec![Match {
                key: key.into(),
                value: "a".into(),
            }],
        };
        let error = |request| QueryParams::from_request(request).map_err(|e| e.to_string());
        assert_eq!(
            error(request("", &[], "k")),
            Err("missing query parameter `metric`".to_string())
        );
        assert_eq!(
            error(request("x", &[], "")),
            Err("query parameter `match`: \"=a\" has an empty key".to_string())
        );
        let params = QueryParams::from_request(request("x", &[" route ", ""], "k"));
        assert_eq!(
            params.map(|params| params.by),
            Ok(Some(vec!["route".to_string()])),
            "keys trimmed, empty ones left out, as in by=route,"
        );
    }

    #[test]
    fn pages_take_a_limit_and_a_cursor() {
        let cursor = "0".repeat(63) + "a";
        assert_eq!(
            PageParams::parse(Some(&format!("limit=5&cursor={cursor}"))),
            Ok(PageParams {
                limit: 5,
                cursor: cursor.parse().ok(),
            })
        );
        assert_eq!(
            PageParams::parse(None).map(|page| page.limit),
            Ok(DEFAULT_PAGE)
        );
        let error = |query: &str| PageParams::parse(Some(query)).map_err(|e| e.to_string());
        for limit in ["0", "10001", "-1", "ten", ""] {
            assert_eq!(
                error(&format!("limit={limit}")),
                Err(format!(
                    "query parameter `limit`: {limit:?} is not a number from 1 to 10000"
                ))
            );
        }
        assert_eq!(
            error("cursor=abc"),
            Err(
                "query parameter `cursor`: \"abc\" is not a cursor: pass back the next_cursor \
                 of the previous page"
                    .to_string()
            )
        );
        assert_eq!(
            error("limit=1&limit=2"),
            Err("query parameter `limit` is given more than once".to_string())
        );
        assert_eq!(
            error("metric=x"),
            Err("unknown query parameter `metric`; use limit and cursor".to_string())
        );
    }

    #[test]
    fn series_takes_a_metric_and_a_page() {
        let first = PageParams {
            limit: DEFAULT_PAGE,
            cursor: None,
        };
        assert_eq!(
            SeriesParams::parse(Some("metric=x")),
            Ok(SeriesParams {
                metric: "x".into(),
                page: first
            })
        );
        assert_eq!(
            SeriesParams::parse(Some("metric=x&agg=sum")).map_err(|e| e.to_string()),
            Err("unknown query parameter `agg`; use metric, limit and cursor".to_string())
        );
        assert_eq!(
            SeriesParams::parse(None).map_err(|e| e.to_string()),
            Err("missing query parameter `metric`".to_string())
        );
    }
}
