//! Compiles `proto/fanin/v1/query.proto` and `proto/fanin/v1/snapshot.proto` with protox (a
//! protobuf compiler in Rust, so no system `protoc` is needed) and generates the prost
//! messages and tonic service into OUT_DIR; `src/proto.rs` includes them.
//!
//! The messages derive `serde::Serialize` so that the HTTP API can answer with their JSON
//! form. The attributes below make that form readable: oneofs flatten to their member's
//! name, attribute values are bare JSON values, doubles that JSON cannot hold are strings.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(
        ["fanin/v1/query.proto", "fanin/v1/snapshot.proto"],
        ["proto"],
    )?;
    let serialize_with =
        |function: &str| format!("#[serde(serialize_with = \"crate::proto::json::{function}\")]");
    // prost-build applies a path's attributes to everything nested under it, so the
    // messages with oneofs (Series, AttributeValue) and the ones that must render as bare
    // values get hand-written impls in src/proto.rs; the rest derive.
    let derived = [
        "QueryResponse",
        "Histogram",
        "Bucket",
        "ExponentialHistogram",
        "ExponentialBuckets",
        "SummaryTotal",
        "MetricsResponse",
        "MetricInfo",
    ];
    let mut builder = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .btree_map(".")
        // A snapshot's body is checked, then decoded, from the file's buffer without a copy.
        .bytes(".fanin.v1.snapshot.SnapshotFile.body");
    for message in derived {
        builder = builder.type_attribute(
            format!(".fanin.v1.{message}"),
            "#[derive(serde::Serialize)]",
        );
    }
    builder
        .field_attribute(".fanin.v1.Histogram.sum", serialize_with("optional_double"))
        .field_attribute(".fanin.v1.Histogram.min", serialize_with("optional_double"))
        .field_attribute(".fanin.v1.Histogram.max", serialize_with("optional_double"))
        .field_attribute(".fanin.v1.Bucket.le", serialize_with("bucket_bound"))
        .field_attribute(
            ".fanin.v1.ExponentialHistogram.sum",
            serialize_with("optional_double"),
        )
        .field_attribute(
            ".fanin.v1.ExponentialHistogram.min",
            serialize_with("optional_double"),
        )
        .field_attribute(
            ".fanin.v1.ExponentialHistogram.max",
            serialize_with("optional_double"),
        )
        .field_attribute(
            ".fanin.v1.ExponentialHistogram.zero_threshold",
            serialize_with("double"),
        )
        .field_attribute(".fanin.v1.SummaryTotal.sum", serialize_with("double"))
        .compile_fds(descriptors)?;
    Ok(())
}
