//! `--plot PATH.svg` from the real binary on a real loopback chain: the file is an SVG that
//! renders (resvg, to a pixmap) to a picture that is not blank, with the labels a reader needs
//! (the path, the date, the subsegments, the axes' units); a continuous run's picture has its
//! intervals over time; a path that cannot be written is exit 1 and one line naming it.

mod util;

use std::path::PathBuf;
use std::time::Duration;

use util::{MAIN_BIN, Proc, run_source, spawn_listening};

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Z (echo) ← B; returns the processes and B's address.
fn chain() -> (Vec<Proc>, String) {
    let (z, z_addr) = spawn_listening(MAIN_BIN, &["-l", "127.0.0.1:0", "-n", "Z"]);
    let z_text = z_addr.to_string();
    let (b, b_addr) = spawn_listening(MAIN_BIN, &["-l", "127.0.0.1:0", "-f", &z_text, "-n", "B"]);
    (vec![z, b], b_addr.to_string())
}

/// A fresh path for this test process's next picture.
fn plot_path() -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let index = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("ssts-plot-{}-{index}.svg", std::process::id()))
}

/// Runs the source with `--plot` and returns the SVG it wrote, and its JSON report.
#[track_caller]
fn run_with_plot(args: &[&str]) -> (String, serde_json::Value) {
    let path = plot_path();
    let mut args = args.to_vec();
    args.extend(["--plot", path.to_str().expect("a UTF-8 temp path")]);
    let run = run_source(&args, b"", RUN_TIMEOUT);
    assert_eq!(run.status.and_then(|status| status.code()), Some(0), "{}", run.stderr);
    let svg = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("no plot at {}: {error}\n{}", path.display(), run.stderr));
    let _ = std::fs::remove_file(&path);
    (svg, run.report().json)
}

/// What the picture looks like as pixels.
struct Painted {
    width: u32,
    height: u32,
    /// Pixels that differ from the white background.
    inked: f64,
    /// Pixels in a colour (not a grey): the data, not the grid or the frame.
    coloured: f64,
}

#[track_caller]
fn paint(svg: &str) -> Painted {
    use resvg::tiny_skia::{Color, Pixmap, Transform};
    let tree = resvg::usvg::Tree::from_str(svg, &resvg::usvg::Options::default())
        .unwrap_or_else(|error| panic!("not an SVG resvg reads ({error}):\n{svg}"));
    let size = tree.size().to_int_size();
    let mut pixmap = Pixmap::new(size.width(), size.height()).expect("a non-empty picture");
    pixmap.fill(Color::WHITE);
    resvg::render(&tree, Transform::default(), &mut pixmap.as_mut());
    let pixels = pixmap.pixels();
    let total = pixels.len() as f64;
    let rgb = |pixel: &&resvg::tiny_skia::PremultipliedColorU8| {
        (pixel.red(), pixel.green(), pixel.blue())
    };
    let inked = pixels.iter().filter(|pixel| rgb(pixel) != (255, 255, 255)).count();
    let coloured = pixels
        .iter()
        .filter(|pixel| {
            let (r, g, b) = rgb(pixel);
            r.max(g).max(b) - r.min(g).min(b) > 40
        })
        .count();
    Painted {
        width: size.width(),
        height: size.height(),
        inked: inked as f64 / total,
        coloured: coloured as f64 / total,
    }
}

#[track_caller]
fn assert_says(svg: &str, says: &[&str]) {
    for text in says {
        assert!(svg.contains(text), "the plot lacks {text:?}:\n{svg}");
    }
}

#[test]
fn a_probe_run_plots_each_subsegments_distribution_and_share() {
    let (_hops, b) = chain();
    let (svg, json) = run_with_plot(&["-f", &b, "-n", "A", "-c", "300", "-i", "200us", "-w", "1"]);
    let date = json["started_at"].as_str().unwrap()[..19].replace('T', " ");
    assert_says(
        &svg,
        &[
            &format!("delay per subsegment: A → B → Z, {date} UTC"),
            "300 frames answered of 300 sent; ending: complete",
            "delay distribution per subsegment",
            "delay (log scale)",
            "samples at or below (%)",
            " µs</text>",
            "share of the end-to-end median",
            "A ⇄ B  p50 ",
            "B ↓ (relay)  p50 ",
            "B ⇄ Z  p50 ",
            "Z (echo)  p50 ",
            "end-to-end  p50 ",
        ],
    );
    assert!(!svg.contains("per report interval"), "a probe run has no intervals:\n{svg}");
    // Every row's share, as the report has it.
    for row in json["subsegments"].as_array().unwrap() {
        let share = format!(">{:.1} %</text>", row["share"].as_f64().unwrap() * 100.0);
        assert!(svg.contains(&share), "{share} for {}:\n{svg}", row["id"]);
    }
    let painted = paint(&svg);
    assert_eq!(painted.width, 1000);
    assert!(painted.height > 600, "{}", painted.height);
    assert!(painted.inked > 0.03, "mostly blank: {:.3} inked", painted.inked);
    assert!(painted.coloured > 0.008, "no data drawn: {:.4} coloured", painted.coloured);
}

#[test]
fn a_continuous_run_plots_p50_and_p99_per_interval() {
    let (_hops, b) = chain();
    let args = ["-f", &b, "-n", "A", "-c", "0", "-i", "2ms", "--report-interval", "100ms"];
    let (svg, json) = run_with_plot(&[&args[..], &["--duration", "700ms"]].concat());
    assert_eq!(json["parameters"]["continuous"], true);
    assert_says(
        &svg,
        &[
            "p50 (solid) and p99 (dashed) per report interval of 0.1 s",
            "time since the start (s)",
            "<title>B ⇄ Z p50</title>",
            "<title>B ⇄ Z p99</title>",
            "<title>end-to-end p99</title>",
            "delay distribution per subsegment",
        ],
    );
    assert!(!svg.contains("intervals; the "), "nothing dropped in 7 intervals:\n{svg}");
    // One dot per interval and line (p50 and p99 of 5 subsegments and end-to-end): about 7
    // intervals of 100 ms in 700 ms, the last one cut short by the end.
    let line = svg.lines().find(|line| line.contains("<title>end-to-end p50</title>")).unwrap();
    let points = line.matches(['M', 'L']).count();
    assert!((5..=9).contains(&points), "{points} intervals: {line}");
    assert_eq!(svg.matches("<circle").count(), points * 2 * 5 + points * 2, "{svg}");
    let painted = paint(&svg);
    assert!(painted.height > 1000, "three panels: {}", painted.height);
    assert!(painted.inked > 0.03, "mostly blank: {:.3} inked", painted.inked);
    assert!(painted.coloured > 0.008, "no data drawn: {:.4} coloured", painted.coloured);
}

#[test]
fn a_plot_that_cannot_be_written_is_exit_1_naming_the_file() {
    let (_hops, b) = chain();
    let path = "/nonexistent-directory-of-ssts/plot.svg";
    let run = run_source(&["-f", &b, "-n", "A", "-c", "20", "--plot", path], b"", RUN_TIMEOUT);
    assert_eq!(run.status.and_then(|status| status.code()), Some(1), "{}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().filter(|line| line.contains(path)).collect();
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    assert!(lines[0].starts_with(&format!("A: error: writing {path}: ")), "{}", run.stderr);
    // The run itself was fine: its report still came out.
    assert_eq!(run.report().json["frames"]["answered"], 20);
}
