//! The source's streamed outputs (`--samples`, `--jsonl`, the interval lines on stderr),
//! written by a thread behind a bounded queue so the measuring loop never waits on a file.
//! A line that finds the queue full is dropped and counted, never waited for; the report says
//! how many. The files are opened before the run, so a bad path fails at once.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::thread::JoinHandle;

use crate::tuning;

/// Lines waiting for the writer at most: at 100 000 frames/s, a second of samples.
const QUEUE_LINES: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Samples,
    Jsonl,
    Stderr,
}

/// Lines dropped because the writer fell behind, per destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Dropped {
    pub samples: u64,
    pub jsonl: u64,
    pub stderr: u64,
}

impl Dropped {
    pub fn total(&self) -> u64 {
        self.samples + self.jsonl + self.stderr
    }
}

pub struct Writer {
    sender: Option<SyncSender<(Destination, String)>>,
    thread: Option<JoinHandle<io::Result<()>>>,
    pub dropped: Dropped,
    pub samples: bool,
    pub jsonl: bool,
}

fn open(path: &str) -> io::Result<Box<dyn Write + Send>> {
    if path == "-" {
        return Ok(Box::new(io::stdout()));
    }
    let file = File::create(path)
        .map_err(|error| io::Error::new(error.kind(), format!("cannot create {path}: {error}")))?;
    Ok(Box::new(file))
}

impl Writer {
    /// Opens the files and starts the thread (off `loop_cpu`, at normal priority).
    pub fn start(
        samples: Option<&str>,
        jsonl: Option<&str>,
        loop_cpu: Option<usize>,
    ) -> io::Result<Writer> {
        let mut samples_out = samples.map(open).transpose()?.map(BufWriter::new);
        let mut jsonl_out = jsonl.map(open).transpose()?.map(BufWriter::new);
        let (sender, receiver) = mpsc::sync_channel::<(Destination, String)>(QUEUE_LINES);
        let thread = std::thread::Builder::new().name("output".to_string()).spawn(move || {
            tuning::leave_loop_settings(loop_cpu);
            let mut first_error = None;
            for (destination, line) in receiver {
                let result = match destination {
                    Destination::Samples => {
                        samples_out.as_mut().map(|out| out.write_all(line.as_bytes()))
                    }
                    Destination::Jsonl => jsonl_out.as_mut().map(|out| {
                        // Each record reaches the file whole and at once: a tail -f sees it.
                        out.write_all(line.as_bytes()).and_then(|()| out.flush())
                    }),
                    Destination::Stderr => {
                        crate::write_log_line(format_args!("{}", line.trim_end()));
                        None
                    }
                };
                if let Some(Err(error)) = result {
                    first_error.get_or_insert(error);
                }
            }
            for out in [samples_out.as_mut(), jsonl_out.as_mut()].into_iter().flatten() {
                if let Err(error) = out.flush() {
                    first_error.get_or_insert(error);
                }
            }
            first_error.map_or(Ok(()), Err)
        })?;
        Ok(Writer {
            sender: Some(sender),
            thread: Some(thread),
            dropped: Dropped::default(),
            samples: samples.is_some(),
            jsonl: jsonl.is_some(),
        })
    }

    /// Queues a line (ending in a newline); drops and counts it when the queue is full.
    pub fn send(&mut self, destination: Destination, line: String) {
        let Some(sender) = &self.sender else { return };
        match sender.try_send((destination, line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => match destination {
                Destination::Samples => self.dropped.samples += 1,
                Destination::Jsonl => self.dropped.jsonl += 1,
                Destination::Stderr => self.dropped.stderr += 1,
            },
        }
    }

    /// Queues a line the run cannot do without (the summary): waits for room.
    pub fn send_waiting(&mut self, destination: Destination, line: String) {
        if let Some(sender) = &self.sender
            && sender.send((destination, line)).is_err()
        {
            self.dropped.jsonl += 1;
        }
    }

    /// Writes what is queued and ends the thread.
    pub fn finish(&mut self) -> io::Result<()> {
        self.sender = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the output thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}
