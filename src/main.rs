//! subsegment-tcp-speeds: parses the command line and runs the source, a relay or the echoing
//! end. Exit codes: 0 success, 1 runtime failure, 2 usage error, 130 interrupted.

use std::process::ExitCode;

use subsegment_tcp_speeds::cli::{self, Command, Mode, Options};
use subsegment_tcp_speeds::source::{self, Ending};
use subsegment_tcp_speeds::{hop, log_line, report};

fn main() -> ExitCode {
    let options = match cli::parse_args(std::env::args_os().skip(1)) {
        Ok(Command::Run(options)) => *options,
        Ok(Command::Help) => {
            print!("{}", cli::HELP);
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("subsegment-tcp-speeds {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            log_line!("subsegment-tcp-speeds: {error}\n{}\ntry --help", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    options.tuning.apply(&options.name);
    match options.mode {
        Mode::Source => run_source(options),
        Mode::Relay | Mode::Echo => run_hop(options),
    }
}

fn run_source(options: Options) -> ExitCode {
    let name = options.name.clone();
    let config = source::SourceConfig {
        name: options.name,
        tags: options.tags,
        forward_to: options.forward_to.expect("the source has --forward-to"),
        block_size: options.block_size,
        timeout: options.timeout,
        window: options.window,
        probe: options.probe,
        busy_poll: options.tuning.busy_poll,
    };
    let run = match source::run(config) {
        Ok(run) => run,
        Err(error) => {
            log_line!("{name}: error: {error}");
            return ExitCode::FAILURE;
        }
    };
    // With nothing back at all (not even the path), a report would only be empty rows.
    if !(run.path.is_empty() && run.sequencing.answered == 0) {
        eprint!("{}", report::render(&run));
    }
    match &run.ending {
        Ending::Complete => ExitCode::SUCCESS,
        Ending::Interrupted => {
            log_line!("{name}: interrupted; the report covers what came back so far");
            ExitCode::from(130)
        }
        Ending::Failed(message) => {
            log_line!("{name}: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run_hop(options: Options) -> ExitCode {
    let name = options.name.clone();
    let config = hop::HopConfig {
        name: options.name,
        tags: options.tags,
        listen: options.listen.expect("a hop has --listen"),
        forward_to: options.forward_to,
        remove_perf_headers: options.remove_perf_headers,
        timeout: options.timeout,
        busy_poll: options.tuning.busy_poll,
        allow: options.allow,
        max_conns: options.max_conns,
    };
    match hop::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            log_line!("{name}: error: {error}");
            ExitCode::FAILURE
        }
    }
}
