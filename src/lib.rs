//! subsegment-tcp-speeds as a library: the modules the binary is built from, public so that
//! integration tests, fuzz targets and benchmarks can build and parse frames with the same code.

pub mod buffer;
pub mod cli;
pub mod clock;
pub mod hop;
pub mod net;
pub mod report;
pub mod source;
pub mod stats;
pub mod tuning;
pub mod wire;
