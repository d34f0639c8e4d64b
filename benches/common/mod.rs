//! Helpers shared by the benchmark targets.

use std::num::NonZeroUsize;

use fanin::model::InstanceAttributes;
use fanin::store::{CollisionPolicy, Store, StoreSettings};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};

/// A string attribute.
pub fn attr(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..Default::default()
    }
}

/// An empty store with room for a million streams and the default instance attributes.
#[allow(dead_code)] // the load generator talks to a running fanin instead
pub fn empty_store() -> Store {
    let instance_attributes = InstanceAttributes::new(["service.instance.id", "process.*"])
        .unwrap_or_else(|error| panic!("literal globs: {error}"));
    Store::new(StoreSettings {
        limits: fanin::config::Limits {
            max_series: NonZeroUsize::MIN.saturating_add(1_000_000),
            ..default_limits()
        },
        instance_attributes,
        collision_policy: CollisionPolicy::Report,
        local_host: None,
        verify_unix_pids: true,
        clock: Default::default(),
    })
}

/// The limits of the built-in default config.
fn default_limits() -> fanin::config::Limits {
    fanin::Config::from_yaml_with_env(fanin::config::DEFAULT_YAML, &|_| None)
        .map(|config| config.limits)
        .unwrap_or_else(|error| panic!("the default config parses: {error}"))
}
