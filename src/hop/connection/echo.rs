//! The echoing end's role: it turns every frame (a `turn` record) back up; with `-r`, it
//! answers plain payload, and echoes verbatim a peer that does not speak the protocol at all.

use super::Connection;
use crate::core::Socket;
use crate::wire;

/// What an echoing end with `--remove-perf-headers` found its peer speaking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Speech {
    Undecided,
    Frames,
    Plain,
}

impl<S: Socket> Connection<S> {
    pub(super) fn decide_speech(&mut self) {
        if self.speech != Speech::Undecided {
            return;
        }
        let data = self.down.input.data();
        let seen = data.len().min(wire::MAGIC.len());
        if data[..seen] != wire::MAGIC[..seen] {
            self.speech = Speech::Plain;
        } else if seen == wire::MAGIC.len() {
            self.speech = Speech::Frames;
        } else if self.upstream.read_closed && !data.is_empty() {
            self.speech = Speech::Plain;
        }
    }

    /// An echoing end with `-r` whose peer speaks plain bytes: echo them verbatim.
    pub(super) fn echo_plain(&mut self) -> bool {
        let count = self.down.input.len().min(self.up.output.room());
        if count == 0 {
            return false;
        }
        self.up.output.push(&self.down.input.data()[..count]);
        self.down.input.consume(count);
        self.bytes_down += count as u64;
        self.bytes_up += count as u64;
        true
    }
}
