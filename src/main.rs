//! subsegment-tcp-speeds: parses the command line, runs the source, a relay or the echoing end,
//! and picks the exit code (the README's table): 2 usage error, 1 runtime failure, 3 an SLA
//! breached, 0 success; 130 for a one-shot run interrupted by Ctrl-C.

use std::process::ExitCode;

use subsegment_tcp_speeds::cli::{self, Command, Mode, Options};
use subsegment_tcp_speeds::output::{Destination, Writer};
use subsegment_tcp_speeds::report::{self, Context, Report, Times};
use subsegment_tcp_speeds::scrape::{self, Publisher};
use subsegment_tcp_speeds::source::{self, Ending, Run};
use subsegment_tcp_speeds::{clock, hop, live, log_line, net, tuning};

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let options = match cli::parse_args(args.clone()) {
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
            // Every line a hop prints starts with its name, so that the lines of a chain
            // sharing a terminal say whose they are; a usage error too.
            let name = cli::name_given(&args).unwrap_or_else(net::host_name);
            log_line!("{name}: usage error: {error}\n{}\ntry --help", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    options.tuning.apply(&options.name);
    match options.mode {
        Mode::Source => run_source(options),
        Mode::Relay | Mode::Echo | Mode::Ingress => run_hop(options),
    }
}

fn run_source(options: Options) -> ExitCode {
    let name = options.name.clone();
    let linger_after = Linger::of(&options);
    let parameters = options.parameters();
    let outputs = options.outputs.clone();
    let continuous = parameters.continuous;
    let mut writer = match Writer::start(
        outputs.samples.as_deref(),
        outputs.jsonl.as_deref(),
        options.tuning.cpu,
    ) {
        Ok(writer) => writer,
        Err(error) => {
            log_line!("{name}: error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let publisher = match start_metrics(&options) {
        Ok(publisher) => publisher,
        Err(code) => return code,
    };
    let chain_label = options.metrics_chain.clone().unwrap_or_else(|| name.clone());
    let (mut live_view, live_feed) = if live::wanted(options.live) {
        match live::start(&name, options.presentation, options.probe.is_some(), options.tuning.cpu)
        {
            Ok((view, feed)) => (Some(view), Some(feed)),
            Err(error) => {
                log_line!("{name}: warning: no live view: {error}");
                (None, None)
            }
        }
    } else {
        (None, None)
    };
    let config = source::SourceConfig {
        name: options.name,
        tags: options.tags,
        forward_to: options.forward_to.expect("the source has --forward-to"),
        block_size: options.block_size,
        timeout: options.timeout,
        window: options.window,
        probe: options.probe,
        busy_poll: options.tuning.busy_poll,
        slas: options.slas.clone(),
        duration: options.duration,
        report_interval: options.report_interval,
        presentation: options.presentation,
        kernel_info: options.kernel_info,
        kernel_stamps: options.kernel_stamps,
        quickack: options.quickack,
        keep_history: outputs.plot.is_some(),
        metrics: publisher.map(|publisher| (publisher, chain_label)),
        metrics_buckets: options.metrics_buckets.clone(),
        live: live_feed,
    };
    let started_unix_ns = clock::realtime_ns();
    let run = source::run(config, &mut writer).unwrap_or_else(|error| {
        Run::ended(
            Ending::Failed { message: error.to_string(), broken_link: None },
            options.window != Some(1),
        )
    });
    if let Some(view) = live_view.as_mut() {
        view.finish();
        if view.missed() > 0 {
            log_line!(
                "{name}: the live view missed {} answers (its queue was full); the report has \
                 them all",
                view.missed()
            );
        }
    }
    let times = Times { started_unix_ns, ended_unix_ns: clock::realtime_ns() };
    let context = Context {
        parameters: &parameters,
        presentation: options.presentation,
        slas: &options.slas,
        times,
        dropped_lines: writer.dropped,
    };
    let report = Report::build(&run, &context);
    // With nothing back at all (not even the path), a report would only be empty rows.
    if !(run.path.is_empty() && run.sequencing.answered == 0) {
        eprint!("{}", report::text::render(&report));
    }
    if writer.jsonl {
        writer.send_waiting(Destination::Jsonl, report::json::summary_line(&report));
    }
    let mut output_failed = false;
    if let Err(error) = writer.finish() {
        log_line!("{name}: error: writing the outputs: {error}");
        output_failed = true;
    }
    if let Some(path) = &outputs.json
        && let Err(error) = write_document(path, &report::json::document(&report))
    {
        log_line!("{name}: error: writing {path}: {error}");
        output_failed = true;
    }
    if let Some(path) = &outputs.plot
        && let Err(error) = write_document(path, &report::plot::render(&report))
    {
        log_line!("{name}: error: writing {path}: {error}");
        output_failed = true;
    }
    let code = exit_code(&name, &run.ending, continuous, report.sla_breached(), output_failed);
    linger(&linger_after);
    code
}

/// What `--metrics-linger` needs once the options are gone: who, and for how long.
struct Linger {
    name: String,
    duration: std::time::Duration,
}

impl Linger {
    fn of(options: &Options) -> Linger {
        let duration =
            if options.metrics.is_some() { options.metrics_linger } else { Default::default() };
        Linger { name: options.name.clone(), duration }
    }
}

/// `--metrics-linger`: the run is over and its final snapshot published; the metrics thread
/// goes on serving it while this waits, for the time given or until a SIGINT or SIGTERM.
fn linger(linger: &Linger) {
    if linger.duration.is_zero() {
        return;
    }
    log_line!(
        "{}: serving the final metrics for {} s more (--metrics-linger; SIGINT or SIGTERM ends it)",
        linger.name,
        linger.duration.as_secs_f64()
    );
    tuning::catch_stop_signals();
    let signals = tuning::stop_signals();
    let until = std::time::Instant::now() + linger.duration;
    while std::time::Instant::now() < until && tuning::stop_signals() == signals {
        let left = until.saturating_duration_since(std::time::Instant::now());
        std::thread::sleep(std::time::Duration::from_millis(20).min(left));
    }
}

fn write_document(path: &str, document: &str) -> std::io::Result<()> {
    use std::io::Write;
    if path == "-" {
        let mut stdout = std::io::stdout().lock();
        return stdout.write_all(document.as_bytes()).and_then(|()| stdout.flush());
    }
    std::fs::write(path, document)
}

/// The README's exit-code table: usage error (2) > runtime failure (1) > SLA breached (3) > 0;
/// a one-shot run interrupted exits 130, a continuous one as if it had completed.
fn exit_code(
    name: &str,
    ending: &Ending,
    continuous: bool,
    breached: bool,
    output_failed: bool,
) -> ExitCode {
    let completed = if breached { ExitCode::from(3) } else { ExitCode::SUCCESS };
    match ending {
        Ending::UsageError(message) => {
            log_line!("{name}: usage error: {message}");
            ExitCode::from(2)
        }
        Ending::Failed { message, .. } | Ending::TimedOut(message) => {
            log_line!("{name}: error: {message}");
            ExitCode::FAILURE
        }
        _ if output_failed => ExitCode::FAILURE,
        Ending::Interrupted if continuous => completed,
        Ending::Interrupted => {
            log_line!("{name}: interrupted; the report covers what came back so far");
            ExitCode::from(130)
        }
        Ending::Complete => completed,
    }
}

/// Starts the `--metrics` server, when asked for, off the loop's CPU.
fn start_metrics(options: &Options) -> Result<Option<Publisher>, ExitCode> {
    let Some(addr) = options.metrics else { return Ok(None) };
    scrape::start(addr, options.allow.clone(), &options.name, options.tuning.cpu).map(Some).map_err(
        |error| {
            log_line!("{}: error: {error}", options.name);
            ExitCode::FAILURE
        },
    )
}

fn run_hop(options: Options) -> ExitCode {
    let name = options.name.clone();
    let parameters = options.parameters();
    let metrics = match start_metrics(&options) {
        Ok(publisher) => publisher,
        Err(code) => return code,
    };
    let ingress = if options.mode == Mode::Ingress {
        let jsonl = options.outputs.jsonl.as_deref();
        let output = match (jsonl, options.report_interval) {
            (None, None) => None,
            _ => match Writer::start(None, jsonl, options.tuning.cpu) {
                Ok(writer) => Some(writer),
                Err(error) => {
                    log_line!("{name}: error: {error}");
                    return ExitCode::FAILURE;
                }
            },
        };
        Some(hop::ingress::IngressConfig {
            probe_interval: options.probe_interval,
            report_interval: options.report_interval,
            presentation: options.presentation,
            output,
        })
    } else {
        None
    };
    let config = hop::HopConfig {
        name: options.name.clone(),
        tags: options.tags.clone(),
        listen: options.listen.expect("a hop has --listen"),
        forward_to: options.forward_to.clone(),
        remove_perf_headers: options.remove_perf_headers,
        timeout: options.timeout,
        busy_poll: options.tuning.busy_poll,
        allow: options.allow.clone(),
        max_conns: options.max_conns,
        metrics,
        metrics_buckets: options.metrics_buckets.clone(),
        metrics_chain: options.metrics_chain.clone(),
        ingress,
    };
    let started_unix_ns = clock::realtime_ns();
    let code = match hop::run(config) {
        Ok(totals) if options.mode == Mode::Ingress => {
            let times = Times { started_unix_ns, ended_unix_ns: clock::realtime_ns() };
            report_ingress(&options, &parameters, times, totals)
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            log_line!("{name}: error: {error}");
            return ExitCode::FAILURE;
        }
    };
    linger(&Linger::of(&options));
    code
}

/// An ingress's reports when it exits: one per distinct path its client connections took,
/// rendered like a source's (text on stderr, `--jsonl` summary lines).
fn report_ingress(
    options: &Options,
    parameters: &report::Parameters,
    times: Times,
    mut totals: hop::ingress::IngressTotals,
) -> ExitCode {
    let context = Context {
        parameters,
        presentation: options.presentation,
        slas: &options.slas,
        times,
        dropped_lines: Default::default(),
    };
    let count = totals.paths.len();
    let mut output = totals.output.take();
    for (index, kept) in totals.paths.iter().enumerate() {
        let report = Report::build(&kept.run, &context);
        log_line!(
            "{}: path {} of {count}, {} client connections:",
            options.name,
            index + 1,
            kept.connections
        );
        eprint!("{}", report::text::render(&report));
        eprint!("{}", hop::ingress::render_server_data(&kept.run.path, &kept.server_data));
        if let [ingress, .., egress, server] = &kept.run.path[..] {
            log_line!(
                "not measured: the client ⇄ {} link (the client stamps nothing) and {} ⇄ {} with \
                 the server's own time (receipts turn at {}; the server stamps nothing)",
                ingress.name,
                egress.name,
                server.name,
                egress.name
            );
        }
        if let Some(output) = output.as_mut().filter(|output| output.jsonl) {
            output.send_waiting(Destination::Jsonl, report::json::summary_line(&report));
        }
    }
    if totals.uncounted_connections > 0 {
        log_line!(
            "{}: {} client connections ended before their path came back, or took a path past the {} kept",
            options.name,
            totals.uncounted_connections,
            hop::ingress::MAX_PATHS
        );
    }
    if let Some(mut output) = output {
        if let Err(error) = output.finish() {
            log_line!("{}: error: writing the outputs: {error}", options.name);
            return ExitCode::FAILURE;
        }
        if output.dropped.total() > 0 {
            log_line!(
                "{}: {} lines dropped: the output thread fell behind",
                options.name,
                output.dropped.total()
            );
        }
    }
    ExitCode::SUCCESS
}
