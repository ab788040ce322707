//! The live view on a real terminal: a continuous probe run inside tmux (a private tmux
//! server, so no one's sessions are touched) shows the table, redraws it, starts its
//! statistics over on `r`, pauses on `p`, quits on `q` with the final report as usual, and
//! leaves the terminal as it found it. Skipped without tmux.

mod util;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use util::{MAIN_BIN, say_skipped, spawn_listening};

/// Generous: a busy machine may take long to start the chain and draw.
const WAIT: Duration = Duration::from_secs(30);
const POLL_EVERY: Duration = Duration::from_millis(100);

/// A tmux server of our own, killed (with its session and the source in it) when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux").args(["-L", &self.socket]).args(args).output().expect("tmux runs")
    }

    /// The pane's text, with `history` lines of scrollback above the visible ones.
    fn capture(&self, history: usize) -> String {
        let start = format!("-{history}");
        let output = self.run(&["capture-pane", "-p", "-t", "live", "-S", &start]);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The visible pane with its colours and attributes as escape sequences.
    fn capture_styled(&self) -> String {
        let output = self.run(&["capture-pane", "-p", "-e", "-t", "live"]);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Polls the pane until `check` finds what it wants in it, or panics after [`WAIT`].
    #[track_caller]
    fn wait_for<T>(&self, what: &str, history: usize, check: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            let pane = self.capture(history);
            if let Some(found) = check(&pane) {
                return found;
            }
            assert!(Instant::now() < deadline, "no {what} after {WAIT:?}; the pane:\n{pane}");
            std::thread::sleep(POLL_EVERY);
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// The view's first line (`A: live view, 2.5 s ...`), when it is shown.
fn header(pane: &str) -> Option<String> {
    pane.lines().find(|line| line.contains(": live view, ")).map(str::to_string)
}

fn no_tmux(test: &str) -> bool {
    let missing = Command::new("tmux")
        .arg("-V")
        .output()
        .map(|output| !output.status.success())
        .unwrap_or(true);
    if missing {
        say_skipped(test, "no tmux");
    }
    missing
}

/// The end-to-end row's count, when the live table shows one.
fn end_to_end_count(pane: &str) -> Option<u64> {
    if !pane.contains("live view") {
        return None;
    }
    let row = pane.lines().find(|line| line.starts_with("end-to-end"))?;
    row.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn the_live_view_redraws_quits_on_q_and_leaves_the_final_report() {
    if no_tmux("the_live_view_redraws_quits_on_q_and_leaves_the_final_report") {
        return;
    }
    let (_z, z_addr) = spawn_listening(MAIN_BIN, &["-l", "127.0.0.1:0", "-n", "Z"]);
    let z_text = z_addr.to_string();
    let (_b, b_addr) = spawn_listening(MAIN_BIN, &["-l", "127.0.0.1:0", "-f", &z_text, "-n", "B"]);
    let tmux = Tmux { socket: format!("subsegment-live-{}", std::process::id()) };
    // `stty -a` after the run: the terminal's modes as the source left them.
    let command = format!(
        "{MAIN_BIN} -f {b_addr} -n A -c 0 -i 2ms 2>&1; echo \"exit status $?\"; stty -a; sleep 30"
    );
    let started = tmux.run(&["new-session", "-d", "-s", "live", "-x", "200", "-y", "50", &command]);
    assert!(started.status.success(), "tmux new-session: {started:?}");

    let first = tmux.wait_for("live table with answers", 0, |pane| {
        end_to_end_count(pane).filter(|&count| count > 0)
    });
    let pane = tmux.capture(0);
    for column in ["count", "last", "p50", "p99", "max", "jitter", "share", "1s p50"] {
        assert!(pane.contains(column), "no {column} column:\n{pane}");
    }
    assert!(pane.contains("path: A → B → Z") || pane.contains("path: A -> B -> Z"), "{pane}");
    assert!(pane.contains("so far: sent"), "{pane}");
    // In colour (no NO_COLOR here): tmux shows the attributes as escape sequences.
    assert!(tmux.capture_styled().contains("\x1b["), "no colour or bold in the view");
    // Redrawn: the count grows from one capture to a later one.
    let before =
        tmux.wait_for("redraw", 0, |pane| end_to_end_count(pane).filter(|&count| count > first));
    // r: the view's statistics start over (the run's count never falls, the view's does).
    let keys = |key: &str| {
        let sent = tmux.run(&["send-keys", "-t", "live", key]);
        assert!(sent.status.success(), "tmux send-keys {key}: {sent:?}");
    };
    keys("r");
    tmux.wait_for("reset view", 0, |pane| end_to_end_count(pane).filter(|&count| count < before));
    // p: the redraw pauses, and says so.
    keys("p");
    let paused = tmux.wait_for("paused view", 0, |pane| {
        header(pane).filter(|header| header.contains("[paused]"))
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(header(&tmux.capture(0)), Some(paused.clone()), "redrawn while paused");
    // A resized window (SIGWINCH) is redrawn at once, paused or not: the span moves on.
    let resized = tmux.run(&["resize-window", "-t", "live", "-x", "150", "-y", "40"]);
    assert!(resized.status.success(), "tmux resize-window: {resized:?}");
    tmux.wait_for("redraw after the resize", 0, |pane| {
        header(pane).filter(|header| *header != paused && header.contains("[paused]"))
    });

    keys("q");
    let pane = tmux.wait_for("final report and stty output", 200, |pane| {
        let done = pane.contains("verdict:") && pane.contains("frames: sent");
        let stty = pane.split_whitespace().any(|word| word.ends_with("icanon"));
        (done && stty).then(|| pane.to_string())
    });
    // tmux keeps a cleared screen in its scrollback (scroll-on-clear): the visible screen
    // is where the view must be gone.
    // A continuous run ended by q exits as one ended by a first Ctrl-C: 0.
    assert!(pane.contains("exit status 0"), "{pane}");
    let visible = tmux.capture(0);
    assert!(!visible.contains("live view"), "the view was not cleared:\n{visible}");
    let words: Vec<&str> = pane.split_whitespace().collect();
    assert!(
        words.contains(&"icanon") && words.contains(&"echo") && !words.contains(&"-icanon"),
        "the terminal was left in raw mode:\n{pane}"
    );
}

/// No view with `TERM=dumb` or `--no-live` (not even for a moment: tmux keeps a cleared
/// screen in its scrollback), each run's report as usual; and with `NO_COLOR`, a view without
/// colour or bold.
#[test]
fn no_view_with_term_dumb_or_no_live_and_no_colour_with_no_color() {
    if no_tmux("no_view_with_term_dumb_or_no_live_and_no_colour_with_no_color") {
        return;
    }
    let (_z, z_addr) = spawn_listening(MAIN_BIN, &["-l", "127.0.0.1:0", "-n", "Z"]);
    let z_text = z_addr.to_string();
    let (_b, b_addr) = spawn_listening(MAIN_BIN, &["-l", "127.0.0.1:0", "-f", &z_text, "-n", "B"]);
    let tmux = Tmux { socket: format!("subsegment-nolive-{}", std::process::id()) };
    // 300 probes 5 ms apart: 1.5 s, long enough for a view to be drawn.
    let source = format!("{MAIN_BIN} -f {b_addr} -n A -c 300 -i 5ms");
    let command = format!(
        "NO_COLOR=1 {source} 2>&1; clear; echo \"colourless done $?\"; \
         TERM=dumb {source} 2>&1; echo \"dumb exit $?\"; \
         {source} --no-live 2>&1; echo \"no-live exit $?\"; sleep 30"
    );
    let started = tmux.run(&["new-session", "-d", "-s", "live", "-x", "200", "-y", "50", &command]);
    assert!(started.status.success(), "tmux new-session: {started:?}");

    tmux.wait_for("the NO_COLOR view", 0, |pane| header(pane).map(|_| ()));
    let styled = tmux.capture_styled();
    assert!(header(&styled).is_some() && !styled.contains("\x1b["), "colour:\n{styled:?}");
    tmux.wait_for("the colourless run's end", 0, |pane| {
        pane.contains("colourless done 0").then_some(())
    });
    tmux.run(&["clear-history", "-t", "live"]);
    let pane = tmux.wait_for("both runs without a view", 1000, |pane| {
        pane.contains("no-live exit 0").then(|| pane.to_string())
    });
    assert!(pane.contains("dumb exit 0"), "{pane}");
    assert_eq!(pane.matches("verdict:").count(), 2, "two final reports:\n{pane}");
    assert!(header(&pane).is_none(), "a view was drawn:\n{pane}");
}
