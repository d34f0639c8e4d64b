pub mod json;
pub mod otlp;
