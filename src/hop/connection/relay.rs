//! A relay's role going up (and the echoing end's, which has nothing coming up): what comes
//! from the next hop is checked and passed on, each DATA frame with this hop's `up` record.
//! Going down, a relay restamps every frame (the shared path in the connection's module).

use super::{Connection, forward_restamped, unwritten};
use crate::core::{Clock, Socket};
use crate::wire::{self, Direction, Fault, KernelSample, Kind, MAX_RECORDS};

impl<S: Socket> Connection<S> {
    /// Answers, the server's own frames, the path, faults and kernel readings coming up from
    /// the next hop: checked, restamped (DATA) and passed on.
    pub(super) fn pass_answers_up(&mut self, clock: &impl Clock) -> Result<bool, String> {
        let mut progress = false;
        self.up.stalled = false;
        while let Some((frame, read)) = self.up.input.next_frame().map_err(Self::bad_downstream)? {
            let len = frame.total_len();
            let moved = match frame.kind() {
                Kind::Data if frame.flags() & wire::DATA_FROM_SERVER != 0 => {
                    // Stamped from the egress up: at least its record, and room for ours.
                    let hop = self.hop.unwrap_or(0);
                    if frame.record_count() == 0 || frame.record_count() >= MAX_RECORDS {
                        return Err(format!(
                            "server data {} carries {} stamp records, expected between 1 and {}",
                            frame.sequence(),
                            frame.record_count(),
                            MAX_RECORDS - 1
                        ));
                    }
                    {
                        let stamp = unwritten(hop, Direction::Up, read);
                        let upstream = Some(&mut self.upstream);
                        forward_restamped(upstream, clock, &mut self.up.output, &frame, stamp)
                    }
                }
                Kind::Data => {
                    let hop = self.hop.unwrap_or(0);
                    if frame.record_count() <= usize::from(hop)
                        || frame.record_count() >= MAX_RECORDS
                    {
                        return Err(format!(
                            "answer {} carries {} stamp records, expected between {} and {}",
                            frame.sequence(),
                            frame.record_count(),
                            usize::from(hop) + 1,
                            MAX_RECORDS - 1
                        ));
                    }
                    {
                        let stamp = unwritten(hop, Direction::Up, read);
                        let upstream = Some(&mut self.upstream);
                        forward_restamped(upstream, clock, &mut self.up.output, &frame, stamp)
                    }
                }
                Kind::Path => {
                    self.unanswered_path = None;
                    self.up.output.push(frame.as_bytes())
                }
                Kind::Fault => {
                    let fault = Fault::parse(frame.payload()).map_err(Self::bad_downstream)?;
                    self.passed_fault = Some(format!("passed on: {}", fault.message));
                    self.passed_code = Some(fault.code);
                    self.up.output.push(frame.as_bytes())
                }
                Kind::Kernel => {
                    KernelSample::parse(frame.payload()).map_err(Self::bad_downstream)?;
                    self.up.output.push(frame.as_bytes())
                }
            };
            if !moved {
                self.up.stalled = true;
                self.up.input.hold_back();
                break;
            }
            match frame.kind() {
                Kind::Data if frame.flags() & wire::DATA_FROM_SERVER != 0 => {
                    self.server_frames_up += 1;
                    self.bytes_up += frame.payload_len() as u64;
                }
                Kind::Data => {
                    self.frames_up += 1;
                    self.bytes_up += frame.payload_len() as u64;
                }
                _ => {}
            }
            self.up.input.consume(len);
            progress = true;
        }
        Ok(progress)
    }
}
