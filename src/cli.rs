//! The command line: options in, a validated [`Options`] (or help, or version) out.
//! Parsing only; `main` decides what to run.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::Duration;

use crate::core::transmit::TxMode;
use crate::net::{self, Cidr};
use crate::report::metrics::BucketLayout;
use crate::report::sla::SlaSpec;
use crate::report::{Parameters, Presentation, Units};
use crate::source::Probe;
use crate::stats::Symbols;
use crate::tuning::Tuning;
use crate::wire::{MAX_PAYLOAD, MAX_TAGS, Tag};

/// A continuous run's probe spacing when `--interval` is not given: never a flood by default.
pub const CONTINUOUS_INTERVAL: Duration = Duration::from_millis(100);
/// A continuous run's `--report-interval` when it is not given.
pub const CONTINUOUS_REPORT_INTERVAL: Duration = Duration::from_secs(10);

pub const USAGE: &str =
    "usage: subsegment-tcp-speeds [-t SECS] [-l ADDR] [-f ADDR] [-s BYTES] [-r] [-n NAME]
       [-w FRAMES] [-c N [--size BYTES] [-i DURATION]] [--duration D] [--json PATH]
       [--jsonl PATH] [--plot PATH.svg] [--report-interval D] [--samples PATH] [--sla SPEC]
       [--units U] [--ascii] [--kernel-info on|off] [--kernel-stamps all|sample|off]
       [--quickack] [--allow CIDR] [--max-conns N] [--busy-poll] [--cpu N] [--realtime] [--mlock]
       [--tag KEY=VALUE] [--metrics ADDR [--metrics-chain NAME] [--metrics-buckets B]
       [--metrics-linger D]]
       [--no-live] [--ingress [--probe-interval D]]";

pub const HELP: &str = "\
subsegment-tcp-speeds: find which subsegment of a TCP chain (a link, or a relay host) adds the
most delay. Every hop stamps every frame both ways; the source reports per subsegment.

usage: subsegment-tcp-speeds [options]

  no --listen              source: stdin -> chain, answers -> stdout, report -> stderr
  --listen + --forward-to  relay
  --listen alone           echoing end

options:
  -t, --timeout SECS            connect timeout, and the longest a connection may make no
                                progress while work is outstanding (default 10; fractions ok);
                                the source waits up to 1 s more, so that a hop's own report of
                                a stuck next hop reaches it first
  -l, --listen ADDR             host:port, *:port, :port, [v6]:port to accept the chain on
  -f, --forward-to ADDR         host:port or [v6]:port of the next hop (required at the source)
  -s, -b, --stdin-block-size, --block BYTES
                                source: read stdin in blocks of at most BYTES, one frame each
                                (default 512, at most 1048576)
  -r, --remove-perf-headers     relay: forward plain payload to an ordinary TCP server and
                                frame its answers; echo: answer plain payload
      --ingress                 relay in front of an unmodified client: frame its bytes, probe
                                its connection, deliver what comes back plain; put -r on the
                                hop in front of the server (the README: Measuring your own
                                application)
      --probe-interval D        ingress: a probe on every client connection this often
                                (default 10ms; 0: none)
  -n, --name NAME               this hop's name in reports (default: the host name)
      --tag KEY=VALUE           a label of this hop carried in the path (site, rack, provider,
                                circuit id; repeatable, at most 8, keys unique); KEY: 1 to 32
                                of A-Z a-z 0-9 _ . -; VALUE: at most 64 bytes, no control
                                characters, may be empty
      --metrics ADDR            serve GET /metrics (Prometheus, OpenMetrics text) on host:port,
                                e.g. 127.0.0.1:9464, from a thread of its own: delay histograms
                                and frame counters at the source; connections, frames and bytes,
                                residence histograms and faults by code at a hop, and each
                                path's delay histograms at an ingress (see the README's
                                Prometheus section); --allow restricts who may scrape
      --metrics-chain NAME      source, ingress: the `chain` label of its delay metrics
                                (default: --name)
      --metrics-buckets FIRST,FACTOR,COUNT
                                the histograms' buckets (delays at the source and an ingress,
                                residence at a hop), COUNT upper bounds FIRST × FACTOR^k, then
                                +Inf (default 5us,2,22: from 5 µs to 10.49 s); FIRST 100ns to
                                10s, FACTOR above 1 and at most 10, COUNT 1 to 64, the last
                                bound at most 1 h
      --metrics-linger D        once the run is over (the source's report printed, a hop
                                drained), keep serving the final figures for D before exiting
                                (default 0; at most 3600s), so that a scrape sees them; a signal
                                ends it early

relays and the echoing end:
      --allow CIDR              accept only peers in this block (repeatable; e.g. 10.0.0.0/8);
                                others are closed at accept with a log line; also for the
                                scrapers of --metrics (at the source too, for them only)
      --max-conns N             serve at most N connections at once; refuse the rest

low-jitter knobs (none is on by default):
      --busy-poll               spin on the poll instead of sleeping; only with --cpu on a CPU
                                nothing else uses, or the tail latency gets worse, not better
      --cpu N                   pin the process to CPU N
      --realtime                SCHED_FIFO priority 10 (needs CAP_SYS_NICE; warns otherwise): wakes
                                at once even when other tasks want the CPU; with --busy-poll the
                                kernel still stops it for them, up to 50 ms each second
      --mlock                   lock pages in memory as they are touched (no page faults later);
                                without CAP_IPC_LOCK, ulimit -l bounds how many connections fit

source only:
  -w, --window FRAMES           at most FRAMES frames in flight (default: as many as the buffers
                                hold); --window 1 measures unloaded latency, like a ping-pong
  -c, --count N                 probe mode: send N generated frames instead of stdin; answers
                                are checked and counted but not written to stdout
      --size BYTES              probe payload size (default: the block size)
                                --count 0: probes until interrupted (Ctrl-C, SIGTERM) or
                                until --duration: a continuous run, for monitoring
  -i, --interval DURATION       probe spacing: 250us, 1ms, 0.5s; a bare number is seconds
                                (default 0: back to back; 100ms in a continuous run)
      --duration DURATION       stop sending after DURATION (probes, or stdin), then report
      --json PATH               write the whole report as one JSON document at the end
                                (- = stdout, in probe mode only: stdin runs write payload there)
      --jsonl PATH              continuous runs: one JSON line per report interval, then the
                                summary (the --json document) as the last line
      --plot PATH               write an SVG picture of the report at the end: each
                                subsegment's delay distribution (CDF, log time axis), its share
                                of the end-to-end median, and in a continuous run p50 and p99
                                per report interval (- = stdout, in probe mode only)
      --report-interval DURATION
                                continuous runs: statistics per interval (default 10s), one
                                line on stderr and one --jsonl record each
      --samples PATH            one CSV line per answered frame: sequence, send time (Unix ns),
                                end-to-end and every subsegment in ns
      --sla SPEC                SUBSEGMENT:STAT<VALUE, repeatable, e.g. 1-2:p99<500us,
                                B-C:p50<2ms, link:max<10ms, end-to-end:loss<0.1%; exit 3 when
                                one is breached (see the README's exit codes)
      --units us|ms             the text report's unit (default: µs, or ms when the median round
                                trip is 10 ms or more)
      --ascii                   the text report in ASCII (also in a locale that is not UTF-8)
      --no-live                 no live table on stderr (shown by default when stderr is a
                                terminal, TERM is not dumb and the run lasts over a second;
                                keys in probe mode: q quit, r reset the view, p pause)
      --kernel-info on|off      ask every hop for its sockets' TCP_INFO (read on its 100 ms
                                timer, never per frame) to show what the kernel saw per link
                                (default on)
      --kernel-stamps all|sample|off
                                with it, transmit timestamps on every hop's sockets: how long
                                each write waited in the sender's queue, and SND -> ACK; all:
                                every write (two error-queue reads each); sample: one write
                                per socket every 10 ms (default off; Linux 6.2+)
      --quickack                every hop and the source set TCP_QUICKACK after each read, so
                                ACKs go at once where the routes have no `quickack 1` (the
                                kernel's srtt is then the wire's; one more call per read)
  -h, --help                    this text
  -V, --version                 the version

example chain (Z echoes, C and B relay, A is the source):
  Z:  subsegment-tcp-speeds --listen '*:9000'
  C:  subsegment-tcp-speeds --listen '*:9000' --forward-to Z:9000
  B:  subsegment-tcp-speeds --listen '*:9000' --forward-to C:9000
  A:  producer | subsegment-tcp-speeds --forward-to B:9000 > answered.bin
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Source,
    Relay,
    Echo,
    /// `--ingress`: a hop in front of an unmodified client.
    Ingress,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    pub timeout: Duration,
    pub listen: Option<SocketAddr>,
    /// The next hop as resolved, and as the user wrote it (for messages).
    pub forward_to: Option<(SocketAddr, String)>,
    pub block_size: usize,
    pub remove_perf_headers: bool,
    pub name: String,
    /// This hop's labels (`--tag`, any mode), in the order given: at most `MAX_TAGS`, keys
    /// unique.
    pub tags: Vec<Tag>,
    pub window: Option<u64>,
    pub probe: Option<Probe>,
    pub tuning: Tuning,
    /// Relays and the echoing end accept only peers in these blocks (all when empty).
    pub allow: Vec<Cidr>,
    pub max_conns: Option<usize>,
    /// The source's outputs and thresholds.
    pub outputs: Outputs,
    pub slas: Vec<SlaSpec>,
    pub presentation: Presentation,
    /// Stop sending after this long.
    pub duration: Option<Duration>,
    /// Continuous runs: statistics per interval.
    pub report_interval: Option<Duration>,
    /// The source asks every hop for its `TCP_INFO` readings (`--kernel-info on|off`).
    pub kernel_info: bool,
    /// ... and for transmit timestamps on its sockets (`--kernel-stamps all|sample|off`).
    pub kernel_stamps: TxMode,
    /// ... and for `TCP_QUICKACK` after every read (`--quickack`).
    pub quickack: bool,
    /// Where to serve `GET /metrics` (`--metrics`), any mode.
    pub metrics: Option<SocketAddr>,
    /// The source's or an ingress's `chain` label (`--metrics-chain`, else `--name`).
    pub metrics_chain: Option<String>,
    /// The histograms' buckets (`--metrics-buckets`): delays, and a hop's residence.
    pub metrics_buckets: BucketLayout,
    /// `--metrics-linger`: how long the final figures stay served once the run is over.
    pub metrics_linger: Duration,
    /// The source may show the live view on a terminal (no `--no-live`).
    pub live: bool,
    /// An ingress's probes per client connection (`--probe-interval`; `None`: off).
    pub probe_interval: Option<Duration>,
}

/// Where the source writes what it found, besides the text report on stderr.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outputs {
    /// `-` is stdout.
    pub json: Option<String>,
    pub jsonl: Option<String>,
    pub samples: Option<String>,
    /// An SVG picture of the report (`--plot`), written at the end.
    pub plot: Option<String>,
}

#[derive(Debug)]
pub enum Command {
    Run(Box<Options>),
    Help,
    Version,
}

/// The longest `--metrics-linger`.
pub const MAX_METRICS_LINGER: Duration = Duration::from_secs(3600);

/// An ingress probes each client connection this often unless told otherwise.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_millis(10);

pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Command, lexopt::Error> {
    use lexopt::prelude::*;

    let mut timeout = Duration::from_secs(10);
    let mut listen = None;
    let mut forward_to = None;
    let mut block_size = 512;
    let mut remove_perf_headers = false;
    let mut ingress = false;
    let mut probe_interval = None;
    let mut name = None;
    let mut tags: Vec<Tag> = Vec::new();
    let mut window = None;
    let mut count = None;
    let mut size = None;
    let mut interval = None;
    let mut tuning = Tuning::default();
    let mut allow = Vec::new();
    let mut max_conns = None;
    let mut outputs = Outputs::default();
    let mut slas = Vec::new();
    let mut units = Units::Auto;
    let mut ascii = false;
    let mut duration = None;
    let mut report_interval = None;
    let mut kernel_info = true;
    let mut live = true;
    let mut kernel_stamps = TxMode::Off;
    let mut quickack = false;
    let mut metrics = None;
    let mut metrics_chain = None;
    let mut metrics_buckets = None;
    let mut metrics_linger = None;

    let mut parser = lexopt::Parser::from_args(args);
    while let Some(arg) = parser.next()? {
        match arg {
            Short('t') | Long("timeout") => {
                let seconds: f64 = number(&mut parser, "--timeout")?;
                if !(seconds.is_finite() && seconds > 0.0 && seconds <= 86_400.0) {
                    return Err("--timeout must be more than 0 and at most 86400 seconds".into());
                }
                timeout = Duration::from_secs_f64(seconds);
            }
            Short('l') | Long("listen") => {
                let text = parser.value()?.string()?;
                listen = Some(net::parse_listen(&text).map_err(|e| format!("--listen: {e}"))?);
            }
            Short('f') | Long("forward-to") => {
                let text = parser.value()?.string()?;
                let addr = net::resolve(&text).map_err(|e| format!("--forward-to: {e}"))?;
                forward_to = Some((addr, text));
            }
            Short('s') | Short('b') | Long("stdin-block-size") | Long("block") => {
                block_size = number(&mut parser, "--stdin-block-size")?;
                if block_size == 0 || block_size > MAX_PAYLOAD {
                    return Err(format!(
                        "--stdin-block-size must be between 1 and {MAX_PAYLOAD} bytes"
                    )
                    .into());
                }
            }
            Short('r') | Long("remove-perf-headers") => remove_perf_headers = true,
            Long("ingress") => ingress = true,
            Long("probe-interval") => {
                let value = duration_of(&mut parser, "--probe-interval")?;
                if !value.is_zero() && value < Duration::from_micros(100) {
                    return Err("--probe-interval must be 0 (no probes) or at least 100us".into());
                }
                probe_interval = Some(value);
            }
            Short('n') | Long("name") => {
                let text = parser.value()?.string()?;
                if text.is_empty() || text.chars().any(char::is_control) {
                    return Err("--name must be non-empty and without control characters".into());
                }
                name = Some(text);
            }
            Long("tag") => {
                let tag = Tag::parse(&parser.value()?.string()?)
                    .map_err(|error| format!("--tag: {error}"))?;
                if tags.iter().any(|given| given.key == tag.key) {
                    return Err(format!("--tag: key '{}' is given twice", tag.key).into());
                }
                if tags.len() == MAX_TAGS {
                    return Err(format!("--tag: more than {MAX_TAGS} tags").into());
                }
                tags.push(tag);
            }
            Short('w') | Long("window") => {
                let frames: u64 = number(&mut parser, "--window")?;
                if frames == 0 {
                    return Err("--window must be at least 1 frame".into());
                }
                window = Some(frames);
            }
            Short('c') | Long("count") => count = Some(number(&mut parser, "--count")?),
            Long("size") => size = Some(number(&mut parser, "--size")?),
            Short('i') | Long("interval") => {
                interval = Some(duration_of(&mut parser, "--interval")?)
            }
            Long("duration") => {
                let value = duration_of(&mut parser, "--duration")?;
                if value.is_zero() {
                    return Err("--duration must be more than 0".into());
                }
                duration = Some(value);
            }
            Long("report-interval") => {
                let value = duration_of(&mut parser, "--report-interval")?;
                if value < Duration::from_millis(10) {
                    return Err("--report-interval must be at least 10ms".into());
                }
                report_interval = Some(value);
            }
            Long("json") => outputs.json = Some(path_of(&mut parser, "--json")?),
            Long("jsonl") => outputs.jsonl = Some(path_of(&mut parser, "--jsonl")?),
            Long("samples") => outputs.samples = Some(path_of(&mut parser, "--samples")?),
            Long("plot") => outputs.plot = Some(path_of(&mut parser, "--plot")?),
            Long("sla") => {
                let text = parser.value()?.string()?;
                slas.push(SlaSpec::parse(&text).map_err(|error| format!("--sla {error}"))?);
            }
            Long("units") => {
                units = match parser.value()?.string()?.as_str() {
                    "us" | "µs" => Units::Microseconds,
                    "ms" => Units::Milliseconds,
                    "auto" => Units::Auto,
                    other => return Err(format!("--units: '{other}' (use us, ms or auto)").into()),
                }
            }
            Long("ascii") => ascii = true,
            Long("kernel-stamps") => {
                let text = parser.value()?.string()?;
                kernel_stamps = TxMode::parse(&text)
                    .ok_or_else(|| format!("--kernel-stamps: '{text}' (use all, sample or off)"))?;
            }
            Long("quickack") => quickack = true,
            Long("kernel-info") => {
                kernel_info = match parser.value()?.string()?.as_str() {
                    "on" => true,
                    "off" => false,
                    other => return Err(format!("--kernel-info: '{other}' (use on or off)").into()),
                }
            }
            Long("metrics") => {
                let text = parser.value()?.string()?;
                metrics = Some(net::parse_listen(&text).map_err(|e| format!("--metrics: {e}"))?);
            }
            Long("metrics-chain") => {
                let text = parser.value()?.string()?;
                if text.is_empty() || text.chars().any(char::is_control) {
                    return Err(
                        "--metrics-chain must be non-empty and without control characters".into()
                    );
                }
                metrics_chain = Some(text);
            }
            Long("metrics-buckets") => {
                let text = parser.value()?.string()?;
                let layout = BucketLayout::parse(&text, parse_duration)
                    .map_err(|error| format!("--metrics-buckets: {error}"))?;
                metrics_buckets = Some(layout);
            }
            Long("metrics-linger") => {
                let value = duration_of(&mut parser, "--metrics-linger")?;
                if value > MAX_METRICS_LINGER {
                    return Err("--metrics-linger is at most 3600s".into());
                }
                metrics_linger = Some(value);
            }
            Long("no-live") => live = false,
            Long("busy-poll") => tuning.busy_poll = true,
            Long("cpu") => tuning.cpu = Some(number(&mut parser, "--cpu")?),
            Long("realtime") => tuning.realtime = true,
            Long("mlock") => tuning.mlock = true,
            Long("allow") => {
                let text = parser.value()?.string()?;
                allow.push(Cidr::parse(&text).map_err(|error| format!("--allow: {error}"))?);
            }
            Long("max-conns") => {
                let count: usize = number(&mut parser, "--max-conns")?;
                if count == 0 {
                    return Err("--max-conns must be at least 1".into());
                }
                max_conns = Some(count);
            }
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            _ => return Err(arg.unexpected()),
        }
    }

    let mode = match (&listen, &forward_to, ingress) {
        (None, None, _) => return Err("the source needs --forward-to (or give --listen)".into()),
        (Some(_), Some(_), true) => Mode::Ingress,
        (_, _, true) => return Err("--ingress needs --listen and --forward-to".into()),
        (None, Some(_), false) => Mode::Source,
        (Some(_), Some(_), false) => Mode::Relay,
        (Some(_), None, false) => Mode::Echo,
    };
    if mode == Mode::Ingress && remove_perf_headers {
        return Err("--ingress and --remove-perf-headers are the two ends of a chain: put -r on the hop in front of the server".into());
    }
    if probe_interval.is_some() && mode != Mode::Ingress {
        return Err("--probe-interval is for --ingress (the source probes with --count)".into());
    }
    if mode == Mode::Source && remove_perf_headers {
        return Err("--remove-perf-headers is for relays and the echoing end".into());
    }
    let probe = match (count, size) {
        (None, None) if interval.is_some() => {
            return Err("--interval needs --count (probe mode)".into());
        }
        (None, None) => None,
        (Some(count), size) => {
            let size = size.unwrap_or(block_size);
            if size > MAX_PAYLOAD {
                return Err(format!("--size must be at most {MAX_PAYLOAD} bytes").into());
            }
            let count = (count > 0).then_some(count);
            let default_interval =
                if count.is_none() { CONTINUOUS_INTERVAL } else { Duration::ZERO };
            Some(Probe { count, size, interval: interval.unwrap_or(default_interval) })
        }
        (None, Some(_)) => return Err("--size needs --count (probe mode)".into()),
    };
    let continuous = probe.is_some_and(|probe| probe.count.is_none());
    if report_interval.is_some() && !continuous && mode != Mode::Ingress {
        return Err("--report-interval is for continuous runs (--count 0)".into());
    }
    if outputs.jsonl.is_some() && !continuous && mode != Mode::Ingress {
        return Err("--jsonl is for continuous runs (--count 0); use --json for one report".into());
    }
    let report_interval = match mode {
        Mode::Ingress => report_interval,
        _ => continuous.then(|| report_interval.unwrap_or(CONTINUOUS_REPORT_INTERVAL)),
    };
    let stdout_outputs = [&outputs.json, &outputs.jsonl, &outputs.samples, &outputs.plot];
    if probe.is_none() && stdout_outputs.iter().any(|output| output.as_deref() == Some("-")) {
        return Err("--json -, --jsonl -, --samples - and --plot - need probe mode (--count): a stdin run writes its payload to stdout".into());
    }
    if stdout_outputs.iter().filter(|output| output.as_deref() == Some("-")).count() > 1 {
        return Err("only one of --json, --jsonl, --samples and --plot can write to stdout".into());
    }
    let source_only = !slas.is_empty()
        || outputs != Outputs::default()
        || duration.is_some()
        || ascii
        || units != Units::Auto;
    let ingress_output = mode == Mode::Ingress
        && slas.is_empty()
        && outputs == Outputs { jsonl: outputs.jsonl.clone(), ..Outputs::default() }
        && duration.is_none()
        && !ascii
        && units == Units::Auto;
    if mode != Mode::Source && source_only && !ingress_output {
        return Err(
            "--json, --jsonl, --samples, --plot, --sla, --duration, --units and --ascii are for the source (an ingress takes --jsonl)"
                .into(),
        );
    }
    if mode != Mode::Source && (probe.is_some() || window.is_some()) {
        return Err("--window, --count, --size and --interval are for the source".into());
    }
    if mode == Mode::Source && (max_conns.is_some() || (!allow.is_empty() && metrics.is_none())) {
        return Err(
            "--allow and --max-conns are for relays and the echoing end (--allow also for the \
             source's --metrics)"
                .into(),
        );
    }
    if mode != Mode::Source && !live {
        return Err("--no-live is for the source".into());
    }
    let delays = matches!(mode, Mode::Source | Mode::Ingress);
    if metrics_chain.is_some() && (!delays || metrics.is_none()) {
        return Err("--metrics-chain is for the --metrics of the source or an ingress".into());
    }
    if metrics_buckets.is_some() && metrics.is_none() {
        return Err("--metrics-buckets needs --metrics".into());
    }
    if metrics_linger.is_some() && metrics.is_none() {
        return Err("--metrics-linger needs --metrics".into());
    }
    Ok(Command::Run(Box::new(Options {
        mode,
        timeout,
        listen,
        forward_to,
        block_size,
        remove_perf_headers,
        name: name.unwrap_or_else(net::host_name),
        tags,
        window,
        probe,
        tuning,
        allow,
        max_conns,
        outputs,
        slas,
        presentation: Presentation {
            units,
            symbols: if ascii || !locale_is_utf8() { Symbols::Ascii } else { Symbols::Unicode },
        },
        duration,
        report_interval,
        kernel_info,
        kernel_stamps,
        quickack,
        metrics,
        metrics_chain,
        metrics_buckets: metrics_buckets.unwrap_or_default(),
        metrics_linger: metrics_linger.unwrap_or_default(),
        live,
        probe_interval: match (mode, probe_interval) {
            (Mode::Ingress, None) => Some(DEFAULT_PROBE_INTERVAL),
            (_, interval) => interval.filter(|interval| !interval.is_zero()),
        },
    })))
}

impl Options {
    /// What shaped the run, for the report.
    pub fn parameters(&self) -> Parameters {
        let (addr, text) = self
            .forward_to
            .clone()
            .unwrap_or_else(|| ("0.0.0.0:0".parse().expect("an address"), String::new()));
        let nanos = |duration: Duration| duration.as_nanos() as u64;
        Parameters {
            name: self.name.clone(),
            forward_to: text,
            forward_to_addr: addr.to_string(),
            input: match (self.mode, self.probe) {
                (Mode::Ingress, _) => "application",
                (_, Some(_)) => "probes",
                (_, None) => "stdin",
            },
            block_size: self.block_size,
            probe_count: self.probe.map(|probe| probe.count.unwrap_or(0)),
            probe_size: self.probe.map(|probe| probe.size),
            interval_ns: self.probe.map(|probe| nanos(probe.interval)),
            window: self.window,
            timeout_ns: nanos(self.timeout),
            duration_ns: self.duration.map(nanos),
            report_interval_ns: self.report_interval.map(nanos),
            continuous: self.probe.is_some_and(|probe| probe.count.is_none()),
            sla: self.slas.iter().map(|spec| spec.text.clone()).collect(),
            tags: self.tags.iter().map(|tag| (tag.key.clone(), tag.value.clone())).collect(),
            units: self.presentation.units.name(),
            busy_poll: self.tuning.busy_poll,
            cpu: self.tuning.cpu,
            realtime: self.tuning.realtime,
            mlock: self.tuning.mlock,
            kernel_info: self.kernel_info,
            kernel_stamps: self.kernel_stamps != TxMode::Off,
            kernel_stamps_mode: self.kernel_stamps.name(),
            quickack: self.quickack,
        }
    }
}

/// Whether the locale (LC_ALL, else LC_CTYPE, else LANG; none is the C locale) is UTF-8.
fn locale_is_utf8() -> bool {
    let locale = ["LC_ALL", "LC_CTYPE", "LANG"]
        .into_iter()
        .find_map(|name| std::env::var(name).ok().filter(|value| !value.is_empty()))
        .unwrap_or_default()
        .to_ascii_lowercase();
    locale.contains("utf-8") || locale.contains("utf8")
}

fn duration_of(parser: &mut lexopt::Parser, option: &str) -> Result<Duration, lexopt::Error> {
    let text = lexopt::ValueExt::string(parser.value()?)?;
    parse_duration(&text).map_err(|error| format!("{option}: {error}").into())
}

fn path_of(parser: &mut lexopt::Parser, option: &str) -> Result<String, lexopt::Error> {
    let text = lexopt::ValueExt::string(parser.value()?)?;
    if text.is_empty() {
        return Err(format!("{option} needs a file path, or - for stdout").into());
    }
    Ok(text)
}

/// The name given with `-n`/`--name` in arguments that may not parse, so that a usage error
/// is prefixed with the hop's name like every other line of the hop; `None` when absent or
/// unusable.
pub fn name_given(args: &[OsString]) -> Option<String> {
    let mut args = args.iter().map(|arg| arg.to_str());
    let mut name = None;
    while let Some(arg) = args.next() {
        let value = match arg {
            Some("-n" | "--name") => args.next().flatten(),
            Some(arg) => arg
                .strip_prefix("--name=")
                .or_else(|| arg.strip_prefix("-n").filter(|rest| !rest.is_empty())),
            None => None,
        };
        if let Some(value) =
            value.filter(|value| !value.is_empty() && !value.chars().any(char::is_control))
        {
            name = Some(value.to_string());
        }
    }
    name
}

/// The option's value as a number, or an error that names the option.
fn number<T>(parser: &mut lexopt::Parser, option: &str) -> Result<T, lexopt::Error>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let text = lexopt::ValueExt::string(parser.value()?)?;
    text.parse()
        .map_err(|error| format!("{option}: '{text}' is not a valid number ({error})").into())
}

/// A duration with a unit (`250us`, `1.5ms`, `2s`, `100ns`); a bare number is seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("'{text}' is not a duration"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "ns" => value / 1e9,
        _ => {
            return Err(format!("unknown unit '{unit}' in '{text}' (use ns, us, ms or s)"));
        }
    };
    if !(seconds.is_finite() && (0.0..=86_400.0).contains(&seconds)) {
        return Err(format!("'{text}' is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, String> {
        let args = std::iter::once("prog").chain(args.iter().copied()).map(OsString::from);
        match parse_args(args.skip(1)) {
            Ok(Command::Run(options)) => Ok(*options),
            Ok(other) => Err(format!("{other:?}")),
            Err(error) => Err(error.to_string()),
        }
    }

    #[test]
    fn test_modes_follow_the_options() {
        assert_eq!(parse(&["-f", "127.0.0.1:9"]).unwrap().mode, Mode::Source);
        assert_eq!(parse(&["-l", ":9", "-f", "127.0.0.1:9"]).unwrap().mode, Mode::Relay);
        assert_eq!(parse(&["--listen", "*:9"]).unwrap().mode, Mode::Echo);
        assert!(parse(&[]).unwrap_err().contains("--forward-to"));
    }

    #[test]
    fn test_ingress_options() {
        let hop = ["-l", ":9", "-f", "127.0.0.1:9", "--ingress"];
        let options = parse(&hop).unwrap();
        assert_eq!(options.mode, Mode::Ingress);
        assert_eq!(options.probe_interval, Some(DEFAULT_PROBE_INTERVAL));
        assert_eq!(options.parameters().input, "application");
        let with = |extra: &[&str]| parse(&[&hop[..], extra].concat());
        assert_eq!(with(&["--probe-interval", "0"]).unwrap().probe_interval, None);
        let every = with(&["--probe-interval", "250us"]).unwrap().probe_interval;
        assert_eq!(every, Some(Duration::from_micros(250)));
        assert!(with(&["--probe-interval", "10us"]).unwrap_err().contains("at least 100us"));
        assert!(with(&["-r"]).unwrap_err().contains("two ends of a chain"));
        assert!(with(&["--jsonl", "x", "--report-interval", "1s"]).is_ok());
        assert!(with(&["--json", "x"]).unwrap_err().contains("an ingress takes --jsonl"));
        assert!(parse(&["-l", ":9", "--ingress"]).unwrap_err().contains("--forward-to"));
        assert!(parse(&["-f", "127.0.0.1:9", "--ingress"]).unwrap_err().contains("--listen"));
        let relay = parse(&["-l", ":9", "-f", "127.0.0.1:9", "--probe-interval", "1ms"]);
        assert!(relay.unwrap_err().contains("is for --ingress"));
    }

    #[test]
    fn test_defaults_and_aliases() {
        let options = parse(&["-f", "127.0.0.1:9"]).unwrap();
        assert_eq!(options.block_size, 512);
        assert_eq!(options.timeout, Duration::from_secs(10));
        assert_eq!(parse(&["-f", "127.0.0.1:9", "-b", "64"]).unwrap().block_size, 64);
        assert_eq!(parse(&["-f", "127.0.0.1:9", "--block=65"]).unwrap().block_size, 65);
        assert_eq!(parse(&["-f", "127.0.0.1:9", "-s", "66"]).unwrap().block_size, 66);
        let timeout = parse(&["-f", "127.0.0.1:9", "-t", "0.25"]).unwrap().timeout;
        assert_eq!(timeout, Duration::from_millis(250));
        assert!(parse(&["-l", ":9", "-r", "-n", "zed"]).unwrap().remove_perf_headers);
    }

    #[test]
    fn test_no_live_turns_the_live_view_off_and_is_for_the_source() {
        assert!(parse(&["-f", "127.0.0.1:9", "-c", "0"]).unwrap().live);
        assert!(!parse(&["-f", "127.0.0.1:9", "-c", "0", "--no-live"]).unwrap().live);
        assert!(!parse(&["-f", "127.0.0.1:9", "--no-live"]).unwrap().live);
        let relay = parse(&["-l", ":9", "-f", "127.0.0.1:9", "--no-live"]).unwrap_err();
        assert!(relay.contains("--no-live is for the source"), "{relay}");
        assert!(parse(&["-l", ":9", "--no-live"]).unwrap_err().contains("for the source"));
    }

    #[test]
    fn test_metrics_buckets_need_metrics_and_are_checked() {
        let source = ["-f", "127.0.0.1:9", "-c", "0", "--metrics", "127.0.0.1:9464"];
        let default = parse(&source).unwrap().metrics_buckets;
        assert_eq!(default.bounds_ns()[..3], [5_000, 10_000, 20_000]);
        let chosen =
            parse(&[&source[..], &["--metrics-buckets", "250us,1.5,30"]].concat()).unwrap();
        assert_eq!(chosen.metrics_buckets.bounds_ns()[..3], [250_000, 375_000, 562_500]);
        assert_eq!(chosen.metrics_buckets.count, 30);
        let bad = parse(&[&source[..], &["--metrics-buckets", "5us,2,99"]].concat()).unwrap_err();
        assert!(bad.contains("--metrics-buckets: the count must be from 1 to 64"), "{bad}");
        let bad = parse(&[&source[..], &["--metrics-buckets", "20,2,3"]].concat()).unwrap_err();
        assert!(bad.contains("from 100ns to 10s, not 20s"), "{bad}");
        let seconds = parse(&[&source[..], &["--metrics-buckets", "1,2,3"]].concat()).unwrap();
        assert_eq!(
            seconds.metrics_buckets.bounds_ns(),
            [1_000_000_000, 2_000_000_000, 4_000_000_000]
        );
        let unit = parse(&[&source[..], &["--metrics-buckets", "5qs,2,3"]].concat()).unwrap_err();
        assert!(unit.contains("--metrics-buckets: unknown unit 'qs'"), "{unit}");
        let alone = parse(&["-f", "127.0.0.1:9", "--metrics-buckets", "5us,2,22"]).unwrap_err();
        assert!(alone.contains("--metrics-buckets needs --metrics"), "{alone}");
        // A hop's residence histograms take them too.
        let hop = ["-l", ":9", "--metrics", ":9465", "--metrics-buckets", "500ns,2,24"];
        assert_eq!(parse(&hop).unwrap().metrics_buckets.bounds_ns()[..2], [500, 1_000]);
        let hop = ["-l", ":9", "--metrics-buckets", "500ns,2,24"];
        assert!(parse(&hop).unwrap_err().contains("--metrics-buckets needs --metrics"));
    }

    #[test]
    fn test_metrics_linger_needs_metrics_and_is_bounded() {
        let source = ["-f", "127.0.0.1:9", "-c", "0", "--metrics", "127.0.0.1:9464"];
        assert_eq!(parse(&source).unwrap().metrics_linger, Duration::ZERO);
        let linger = parse(&[&source[..], &["--metrics-linger", "2.5s"]].concat()).unwrap();
        assert_eq!(linger.metrics_linger, Duration::from_millis(2500));
        let ingress = [
            "-l",
            ":9",
            "-f",
            "127.0.0.1:9",
            "--ingress",
            "--metrics",
            ":0",
            "--metrics-linger",
            "1",
        ];
        assert_eq!(parse(&ingress).unwrap().metrics_linger, Duration::from_secs(1));
        let long = parse(&[&source[..], &["--metrics-linger", "3601"]].concat()).unwrap_err();
        assert!(long.contains("--metrics-linger is at most 3600s"), "{long}");
        let alone = parse(&["-f", "127.0.0.1:9", "--metrics-linger", "1s"]).unwrap_err();
        assert!(alone.contains("--metrics-linger needs --metrics"), "{alone}");
        let bad = parse(&[&source[..], &["--metrics-linger", "soon"]].concat()).unwrap_err();
        assert!(bad.contains("--metrics-linger: 'soon' is not a duration"), "{bad}");
    }

    #[test]
    fn test_metrics_in_every_mode() {
        let source = parse(&["-f", "127.0.0.1:9", "-c", "0", "--metrics", "127.0.0.1:9464"]);
        let source = source.unwrap();
        assert_eq!(source.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(source.metrics_chain, None);
        let relay = parse(&["-l", ":9", "-f", "127.0.0.1:9", "--metrics", ":9465"]).unwrap();
        assert_eq!(relay.metrics, Some("0.0.0.0:9465".parse().unwrap()));
        let echo = parse(&["-l", ":9", "--metrics", "[::1]:0", "--allow", "::1"]).unwrap();
        assert_eq!(echo.metrics, Some("[::1]:0".parse().unwrap()));
        assert_eq!(parse(&["-l", ":9"]).unwrap().metrics, None);
        let named = parse(&["-f", "127.0.0.1:9", "--metrics", ":0", "--metrics-chain", "eu-1"]);
        assert_eq!(named.unwrap().metrics_chain.as_deref(), Some("eu-1"));
        // --allow at the source restricts its scrapers, so it needs --metrics there.
        let allowed = parse(&["-f", "127.0.0.1:9", "--metrics", ":0", "--allow", "10.0.0.0/8"]);
        assert_eq!(allowed.unwrap().allow.len(), 1);
        assert!(parse(&["-f", "127.0.0.1:9", "--allow", "10.0.0.0/8"]).is_err());
        assert!(
            parse(&["-f", "127.0.0.1:9", "--metrics", "9464"]).unwrap_err().contains("--metrics")
        );
        assert!(parse(&["-f", "127.0.0.1:9", "--metrics-chain", "x"]).is_err());
        assert!(parse(&["-l", ":9", "--metrics", ":0", "--metrics-chain", "x"]).is_err());
        assert!(parse(&["-f", "127.0.0.1:9", "--metrics", ":0", "--metrics-chain", ""]).is_err());
    }

    #[test]
    fn test_hop_options() {
        let options =
            parse(&["-l", ":9", "--allow", "10.0.0.0/8", "--allow", "::1", "--max-conns", "5"]);
        let options = options.unwrap();
        assert_eq!(options.allow.len(), 2);
        assert_eq!(options.max_conns, Some(5));
        let options = parse(&["-l", ":9", "--busy-poll", "--cpu", "1", "--mlock"]).unwrap();
        assert!(options.tuning.busy_poll && options.tuning.mlock && !options.tuning.realtime);
        assert_eq!(options.tuning.cpu, Some(1));
        assert!(parse(&["-f", "127.0.0.1:9", "--allow", "10.0.0.0/8"]).is_err());
        assert!(parse(&["-l", ":9", "--allow", "10.0.0.0/40"]).unwrap_err().contains("prefix"));
        assert!(parse(&["-l", ":9", "--max-conns", "0"]).is_err());
    }

    #[test]
    fn test_bad_values_are_rejected_with_the_limit() {
        assert!(parse(&["-f", "127.0.0.1:9", "-s", "0"]).unwrap_err().contains("1048576"));
        assert!(parse(&["-f", "127.0.0.1:9", "-s", "2000000"]).unwrap_err().contains("1048576"));
        assert!(parse(&["-f", "127.0.0.1:9", "-t", "-1"]).is_err());
        assert!(parse(&["-f", "nonsense"]).unwrap_err().contains("--forward-to"));
        assert!(parse(&["--frobnicate"]).unwrap_err().contains("--frobnicate"));
        assert!(parse(&["-f", "127.0.0.1:9", "-r"]).is_err());
        assert!(parse(&["-f", "127.0.0.1:9", "-w", "0"]).is_err());
        assert!(parse(&["-l", ":9", "--count", "5"]).is_err());
        assert!(parse(&["-f", "127.0.0.1:9", "--size", "5"]).is_err());
        assert!(parse(&["-f", "127.0.0.1:9", "-i", "1ms"]).unwrap_err().contains("--count"));
        assert!(parse(&["-f", "127.0.0.1:9", "-c", "-3"]).unwrap_err().contains("--count"));
        assert!(parse(&["-f", "127.0.0.1:9", "-t", "abc"]).unwrap_err().contains("--timeout"));
        assert!(parse(&["-f", "127.0.0.1:9", "-c", "1", "-i", "3h"]).unwrap_err().contains("unit"));
        assert!(parse(&["-f", "127.0.0.1:9", "-t", "0"]).unwrap_err().contains("more than 0"));
        assert!(parse(&["-f", "127.0.0.1:9", "-n", ""]).unwrap_err().contains("non-empty"));
        assert!(parse(&["-l", ":9", "-n", "a\tb"]).unwrap_err().contains("control"));
    }

    #[test]
    fn test_kernel_stamps_modes() {
        let mode = |args: &[&str]| parse(args).map(|options| options.kernel_stamps);
        assert_eq!(mode(&["-f", "127.0.0.1:9"]), Ok(TxMode::Off));
        assert_eq!(mode(&["-f", "127.0.0.1:9", "--kernel-stamps", "sample"]), Ok(TxMode::Sample));
        assert_eq!(mode(&["-f", "127.0.0.1:9", "--kernel-stamps", "all"]), Ok(TxMode::All));
        let error = mode(&["-f", "127.0.0.1:9", "--kernel-stamps", "1/10"]).unwrap_err();
        assert!(error.contains("'1/10' (use all, sample or off)"), "{error}");
        let options = parse(&["-f", "127.0.0.1:9", "--kernel-stamps", "sample"]).unwrap();
        let parameters = options.parameters();
        assert_eq!((parameters.kernel_stamps, parameters.kernel_stamps_mode), (true, "sample"));
        assert!(!parameters.quickack);
        assert!(parse(&["-f", "127.0.0.1:9", "--quickack"]).unwrap().parameters().quickack);
    }

    #[test]
    fn test_the_name_is_found_even_in_arguments_that_do_not_parse() {
        let name = |args: &[&str]| name_given(&args.iter().map(OsString::from).collect::<Vec<_>>());
        assert_eq!(name(&["-n", "B", "--frobnicate"]).as_deref(), Some("B"));
        assert_eq!(name(&["--name=C", "-s", "0"]).as_deref(), Some("C"));
        assert_eq!(name(&["-nZ"]).as_deref(), Some("Z"));
        assert_eq!(name(&["-n", ""]), None);
        assert_eq!(name(&["-f", "x"]), None);
    }

    #[test]
    fn test_continuous_runs_and_outputs() {
        let options = parse(&["-f", "127.0.0.1:9", "-c", "0", "--jsonl", "-"]).unwrap();
        let probe = options.probe.unwrap();
        assert_eq!((probe.count, probe.interval), (None, CONTINUOUS_INTERVAL));
        assert_eq!(options.report_interval, Some(CONTINUOUS_REPORT_INTERVAL));
        assert_eq!(options.outputs.jsonl.as_deref(), Some("-"));
        let options =
            parse(&["-f", "127.0.0.1:9", "-c", "0", "-i", "1ms", "--report-interval", "2s"]);
        let options = options.unwrap();
        assert_eq!(options.probe.unwrap().interval, Duration::from_millis(1));
        assert_eq!(options.report_interval, Some(Duration::from_secs(2)));
        let options =
            parse(&["-f", "127.0.0.1:9", "--duration", "5s", "--json", "r.json"]).unwrap();
        assert_eq!(options.duration, Some(Duration::from_secs(5)));
        assert_eq!(options.report_interval, None, "a stdin run has no intervals");
        for (args, says) in [
            (&["--json", "-"][..], "need probe mode"),
            (&["--samples", "-"], "need probe mode"),
            (&["-c", "5", "--json", "-", "--samples", "-"], "only one of"),
            (&["--jsonl", "x"], "continuous runs"),
            (&["-c", "5", "--report-interval", "1s"], "continuous runs"),
            (&["-c", "0", "--report-interval", "1ms"], "at least 10ms"),
            (&["--duration", "0"], "more than 0"),
            (&["--json", ""], "needs a file path"),
            (&["--units", "s"], "use us, ms or auto"),
            (&["--sla", "1-2:p95<1ms"], "--sla '1-2:p95<1ms': unknown statistic"),
        ] {
            let args: Vec<&str> = ["-f", "127.0.0.1:9"].iter().chain(args).copied().collect();
            let error = parse(&args).unwrap_err();
            assert!(error.contains(says), "{args:?}: {error}");
        }
        assert!(
            parse(&["-l", ":9", "--sla", "1-2:p99<1ms"]).unwrap_err().contains("for the source")
        );
        let options =
            parse(&["-f", "127.0.0.1:9", "-c", "1", "--json", "-", "--ascii", "--units", "ms"]);
        let presentation = options.unwrap().presentation;
        assert_eq!(
            presentation,
            Presentation { units: Units::Milliseconds, symbols: Symbols::Ascii }
        );
    }

    #[test]
    fn test_plot_is_a_source_output() {
        let plot = |args: &[&str]| parse(args).map(|options| options.outputs.plot);
        assert_eq!(plot(&["-f", "127.0.0.1:9"]), Ok(None));
        assert_eq!(
            plot(&["-f", "127.0.0.1:9", "--plot", "run.svg"]).unwrap().as_deref(),
            Some("run.svg")
        );
        assert_eq!(
            plot(&["-f", "127.0.0.1:9", "--plot=a b.svg"]).unwrap().as_deref(),
            Some("a b.svg")
        );
        let continuous = parse(&["-f", "127.0.0.1:9", "-c", "0", "--plot", "-", "--jsonl", "j"]);
        assert_eq!(continuous.unwrap().outputs.plot.as_deref(), Some("-"));
        for (args, says) in [
            (&["-f", "127.0.0.1:9", "--plot"][..], "--plot"),
            (&["-f", "127.0.0.1:9", "--plot", ""], "--plot needs a file path"),
            (&["-f", "127.0.0.1:9", "--plot", "-"], "--plot - need probe mode"),
            (&["-f", "127.0.0.1:9", "-c", "5", "--plot", "-", "--json", "-"], "only one of"),
            (&["-l", ":9", "--plot", "x.svg"], "--plot, --sla"),
            (&["-l", ":9", "-f", "127.0.0.1:9", "--plot", "x.svg"], "are for the source"),
        ] {
            let error = plot(args).unwrap_err();
            assert!(error.contains(says), "{args:?}: {error}");
        }
    }

    #[test]
    fn test_tags_in_every_mode() {
        let tags = |args: &[&str]| parse(args).map(|options| options.tags);
        assert_eq!(tags(&["-f", "127.0.0.1:9"]), Ok(Vec::new()));
        let given = tags(&["-f", "127.0.0.1:9", "--tag", "site=fra1", "--tag=rack=b12"]).unwrap();
        let shown: Vec<String> = given.iter().map(Tag::to_string).collect();
        assert_eq!(shown, ["site=fra1", "rack=b12"], "in the order given");
        assert_eq!(tags(&["-l", ":9", "-f", "127.0.0.1:9", "--tag", "a="]).unwrap().len(), 1);
        assert_eq!(tags(&["-l", ":9", "--tag", "circuit=x=y"]).unwrap()[0].value, "x=y");
    }

    #[test]
    fn test_bad_tags_are_usage_errors_naming_the_option() {
        let error = |extra: &[&str]| {
            let mut args = vec!["-l", ":9"];
            args.extend_from_slice(extra);
            parse(&args).unwrap_err()
        };
        let eight: Vec<String> = (0..MAX_TAGS).map(|index| format!("k{index}=v")).collect();
        let mut args: Vec<&str> = eight.iter().flat_map(|tag| ["--tag", tag.as_str()]).collect();
        assert_eq!(parse(&[&["-l", ":9"][..], &args].concat()).unwrap().tags.len(), MAX_TAGS);
        args.extend(["--tag", "k8=v"]);
        assert_eq!(error(&args), "--tag: more than 8 tags");
        assert_eq!(
            error(&["--tag", "site=a", "--tag", "site=b"]),
            "--tag: key 'site' is given twice"
        );
        for (bad, says) in [
            ("site", "KEY=VALUE"),
            ("=v", "empty key"),
            ("a b=v", "' '"),
            (&format!("{}=v", "k".repeat(33)), "limit of 32"),
            (&format!("k={}", "v".repeat(65)), "limit of 64"),
            ("k=a\u{1b}[31m", "control character"),
        ] {
            let message = error(&["--tag", bad]);
            assert!(message.starts_with("--tag: ") && message.contains(says), "{bad}: {message}");
        }
        assert!(error(&["--tag"]).contains("--tag"), "a missing value names the option");
    }

    #[test]
    fn test_probe_mode() {
        let options =
            parse(&["-f", "127.0.0.1:9", "-c", "100", "--size", "64", "-i", "250us", "-w", "1"]);
        let options = options.unwrap();
        assert_eq!(options.window, Some(1));
        let interval = Duration::from_micros(250);
        assert_eq!(options.probe, Some(Probe { count: Some(100), size: 64, interval }));
        let options = parse(&["-f", "127.0.0.1:9", "-c", "3", "-s", "99"]).unwrap();
        assert_eq!(options.probe.unwrap().size, 99, "the block size is the default probe size");
        assert_eq!(parse_duration("1.5ms"), Ok(Duration::from_micros(1500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
    }
}
