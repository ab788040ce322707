//! subsegment-tcp-speeds as a library: the modules the binary is built from, public so that
//! integration tests, fuzz targets and benchmarks can build and parse frames with the same code.

pub mod buffer;
pub mod cli;
pub mod clock;
pub mod core;
pub mod hop;
pub mod kernel;
pub mod live;
pub mod net;
pub mod nfqueue;
pub mod output;
pub mod report;
pub mod scrape;
pub mod source;
pub mod stats;
pub mod tuning;
pub mod wire;

/// Writes one line to stderr with a single `write`, so the lines of processes sharing a
/// terminal or a pipe (a local chain, a deploy script's merged output) never interleave
/// mid-line. `eprintln!` writes each piece of its format separately.
#[macro_export]
macro_rules! log_line {
    ($($arg:tt)*) => {
        $crate::write_log_line(::std::format_args!($($arg)*))
    };
}

#[doc(hidden)]
pub fn write_log_line(args: std::fmt::Arguments) {
    use std::io::Write;
    let mut line = args.to_string();
    line.push('\n');
    // Nothing sensible is left to do when stderr itself fails.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}
