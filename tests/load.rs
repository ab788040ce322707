//! Load and admission at a relay, with the real binary on real sockets: a thousand connections
//! at once, the descriptor limit, and who may connect (`--allow`, `--max-conns`, the warning
//! for a relay bound to every interface).
//!
//! Admission lives here with load because both are about which connections a relay takes on
//! when it cannot (or must not) take them all; a refused peer is never a reason to disturb the
//! connections already served.

mod util;

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use util::frames::{self, Client, assert_answers, expect_closed, fd_count, wait_for_fds};
use util::{MAIN_BIN, Proc, random_bytes, spawn_listening};

/// How long a relay may take to give back every descriptor once its peers have gone: it closes
/// in the wake-up that sees the end of stream; the rest is slack for a loaded machine.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(20);
const LOG_TIMEOUT: Duration = Duration::from_secs(5);

fn echo(extra: &[&str]) -> (Proc, SocketAddr) {
    let mut args = vec!["--listen", "127.0.0.1:0", "--name", "Z"];
    args.extend_from_slice(extra);
    spawn_listening(MAIN_BIN, &args)
}

fn relay(next: SocketAddr, extra: &[&str]) -> (Proc, SocketAddr) {
    let next = next.to_string();
    let mut args = vec!["--listen", "127.0.0.1:0", "--forward-to", &next, "--name", "B"];
    args.extend_from_slice(extra);
    spawn_listening(MAIN_BIN, &args)
}

/// Raises this process's soft descriptor limit to at least `wanted` (up to the hard limit).
fn raise_fd_limit(wanted: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < wanted {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
}

/// The payload of frame `sequence` on connection `index`: distinct for every frame, so that an
/// answer delivered to the wrong connection or in the wrong order shows.
fn payload(index: usize, sequence: u64) -> Vec<u8> {
    random_bytes(700 + (index % 7) * 100, (index as u64) << 8 | sequence)
}

const CONNECTIONS: usize = 1000;
const THREADS: usize = 8;
const FRAMES_EACH: u64 = 4;

/// A thousand connections open at once through one relay, each announcing the path and then
/// exchanging frames; every answer is checked, and afterwards every descriptor the relay (and
/// the echoing end) used for them is released.
#[test]
fn a_thousand_concurrent_connections_complete_and_release_their_descriptors() {
    raise_fd_limit(4 * CONNECTIONS as u64);
    let (z, z_addr) = echo(&[]);
    let (b, b_addr) = relay(z_addr, &[]);
    let (b_baseline, z_baseline) = (fd_count(b.id()), fd_count(z.id()));

    let all_open = Arc::new(Barrier::new(THREADS + 1));
    let all_answered = Arc::new(Barrier::new(THREADS + 1));
    let workers: Vec<_> = (0..THREADS)
        .map(|worker| {
            let (all_open, all_answered) = (Arc::clone(&all_open), Arc::clone(&all_answered));
            thread::spawn(move || {
                let indexes: Vec<usize> = (worker..CONNECTIONS).step_by(THREADS).collect();
                let mut clients: Vec<Client> = indexes
                    .iter()
                    .map(|_| {
                        let mut client = Client::connect(b_addr);
                        client.handshake();
                        client
                    })
                    .collect();
                all_open.wait();
                // Every connection has all its frames in flight before any answer is read.
                for (client, &index) in clients.iter_mut().zip(&indexes) {
                    for sequence in 0..FRAMES_EACH {
                        client.send_data(sequence, &payload(index, sequence));
                    }
                }
                for (client, &index) in clients.iter_mut().zip(&indexes) {
                    for sequence in 0..FRAMES_EACH {
                        let answer = client.expect_frame();
                        assert_answers(&answer, sequence, &payload(index, sequence));
                        // Source, B down, Z turn, B up.
                        assert_eq!(answer.records.len(), 4, "{answer:?}");
                    }
                }
                all_answered.wait();
                for client in clients {
                    assert!(client.finish().is_empty(), "frames after the answers");
                }
            })
        })
        .collect();

    all_open.wait();
    let open_fds = fd_count(b.id());
    assert!(
        open_fds >= b_baseline + 2 * CONNECTIONS,
        "B holds {open_fds} descriptors with {CONNECTIONS} connections open (baseline {b_baseline})"
    );
    all_answered.wait();
    for worker in workers {
        worker.join().expect("a worker failed");
    }

    let left = wait_for_fds(b.id(), b_baseline, RELEASE_TIMEOUT);
    assert_eq!(left, b_baseline, "B kept descriptors after every peer left");
    let left = wait_for_fds(z.id(), z_baseline, RELEASE_TIMEOUT);
    assert_eq!(left, z_baseline, "Z kept descriptors after every peer left");
    let log = frames::wait_for_stderr(&b, LOG_TIMEOUT, |text| {
        text.matches(" ended after ").count() == CONNECTIONS
    });
    let log = log.unwrap_or_else(|| panic!("B did not log {CONNECTIONS} ends: {}", b.stderr()));
    let unclean: Vec<&str> = log.lines().filter(|line| line.contains("closed:")).collect();
    assert!(unclean.is_empty(), "connections ended with a reason: {unclean:#?}");
}

/// The descriptor limit of a relay under `ulimit -n 64`.
const FD_LIMIT: usize = 64;

/// Descriptor numbers the process may still open under `FD_LIMIT`: the limit is on numbers,
/// so a descriptor inherited above it (as some harnesses pass on) takes no room.
fn free_below_limit(pid: u32) -> usize {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
    let numbers = dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<usize>().ok());
    FD_LIMIT - numbers.filter(|&fd| fd < FD_LIMIT).count()
}

/// A relay that runs out of descriptors refuses each new peer at accept, with a line naming it
/// and the reason, and keeps serving the connections it has; once they close, it takes new ones
/// again.
#[test]
fn a_relay_out_of_descriptors_refuses_new_peers_and_serves_the_old() {
    let (_z, z_addr) = echo(&[]);
    let next = z_addr.to_string();
    let limit = format!("ulimit -n {FD_LIMIT}; exec \"$0\" \"$@\"");
    let args = [&limit, MAIN_BIN, "--listen", "127.0.0.1:0", "--forward-to", &next, "--name", "B"];
    let (b, b_addr) = spawn_listening("sh", &["-c"].into_iter().chain(args).collect::<Vec<_>>());
    let baseline = fd_count(b.id());

    // Each served connection costs the relay two descriptors (the peer and its next hop). Make
    // the room left even, so that the limit is met by an accept, where the relay can refuse.
    let free = free_below_limit(b.id());
    let mut held = Vec::new();
    if free % 2 == 1 {
        held.push(TcpStream::connect(b_addr).unwrap());
    }
    let expected_served = (free - held.len()) / 2;
    let mut served = Vec::new();
    let mut refused = Vec::new();
    while refused.len() < 3 && served.len() <= expected_served {
        let mut client = Client::connect(b_addr);
        client.stream.set_read_timeout(Some(LOG_TIMEOUT)).unwrap();
        client.send(&frames::path_frame("A"));
        match client.read_frame() {
            Ok(Some(_)) => served.push(client),
            // Closed at accept, the path unread: an end of stream or a reset.
            Ok(None) | Err(_) => refused.push(client.local_addr()),
        }
    }
    let log = b.stderr();
    assert_eq!(served.len(), expected_served, "served {} before the limit: {log}", served.len());
    for peer in &refused {
        let line = format!("refusing connection from {peer}: out of file descriptors");
        let logged = frames::wait_for_stderr(&b, LOG_TIMEOUT, |text| text.contains(&line));
        assert!(logged.is_some(), "no refusal line for {peer}: {}", b.stderr());
    }

    for (index, client) in served.iter_mut().enumerate() {
        client.round_trip(index as u64, &payload(index, 0));
    }
    for client in served {
        assert!(client.finish().is_empty());
    }
    drop(held);
    assert_eq!(wait_for_fds(b.id(), baseline, RELEASE_TIMEOUT), baseline, "{}", b.stderr());
    let mut again = Client::connect(b_addr);
    again.handshake();
    again.round_trip(0, b"served again once descriptors are free");
}

/// `--mlock` under a locked-memory limit the hop cannot lift (no CAP_IPC_LOCK): once every new
/// mapping counts against the limit, a connection whose buffers cannot be mapped is closed at
/// accept with a line naming the peer and the reason, the connections already served carry on,
/// and new ones are served again once those close. (A failed mapping used to abort the hop.)
/// The echoing end is the hop here: 2 MiB of buffers per connection, so a few fit under the
/// usual 8 MiB limit.
#[test]
fn a_hop_out_of_locked_memory_refuses_new_peers_and_serves_the_old() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit with a valid rlimit struct.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) }, 0);
    if limit.rlim_max < 8 << 20 && root {
        // Raised for this test process, so the hop started from it inherits the room (needs
        // CAP_SYS_RESOURCE, which root in a container may lack).
        let raised = libc::rlimit { rlim_cur: 12 << 20, rlim_max: 12 << 20 };
        // SAFETY: setrlimit with a valid rlimit struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) } == 0 {
            limit = raised;
        }
    }
    if limit.rlim_max < 8 << 20 {
        // Below the hop's own mappings plus one connection, mlockall itself fails instead.
        let why = format!(
            "the hard RLIMIT_MEMLOCK ({} B) leaves no room for a connection, and could not be raised",
            limit.rlim_max
        );
        util::say_skipped("a_hop_out_of_locked_memory_refuses_new_peers_and_serves_the_old", &why);
        return;
    }
    // Up to 12 MiB, and at most the hard limit (lowering the soft limit needs no privilege).
    let memlock = format!("--memlock={}:", limit.rlim_max.min(12 << 20));
    let mut args = vec![memlock.as_str()];
    if root {
        // Root holds CAP_IPC_LOCK, which ignores the limit: drop it for the hop.
        args.extend(["setpriv", "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock"]);
    }
    args.extend([MAIN_BIN, "-l", "127.0.0.1:0", "-n", "Z", "--mlock"]);
    let (z, z_addr) = spawn_listening("prlimit", &args);
    assert!(z.stderr().contains("--mlock without CAP_IPC_LOCK"), "{}", z.stderr());

    let mut served = Vec::new();
    let mut refused = None;
    while refused.is_none() && served.len() < 16 {
        let mut client = Client::connect(z_addr);
        client.stream.set_read_timeout(Some(LOG_TIMEOUT)).unwrap();
        client.send(&frames::path_frame("A"));
        match client.read_frame() {
            Ok(Some(_)) => served.push(client),
            Ok(None) | Err(_) => refused = Some(client.local_addr()),
        }
    }
    let peer = refused.unwrap_or_else(|| panic!("16 connections served: {}", z.stderr()));
    assert_one_line(&z, peer, "cannot set up the connection: cannot map a 1026 KiB buffer");
    assert!(!served.is_empty(), "not even one connection fits: {}", z.stderr());

    for (index, client) in served.iter_mut().enumerate() {
        client.round_trip(index as u64, &payload(index, 0));
    }
    let count = served.len();
    for client in served {
        assert!(client.finish().is_empty());
    }
    let ended = frames::wait_for_stderr(&z, RELEASE_TIMEOUT, |text| {
        text.matches("ended after").count() >= count
    });
    assert!(ended.is_some(), "{}", z.stderr());
    let mut again = Client::connect(z_addr);
    again.handshake();
    again.round_trip(0, b"served again once the others gave their buffers back");
}

/// A client connecting from `source_ip` (any 127.0.0.0/8 address is this host's loopback).
fn connect_from(source_ip: &str, to: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{source_ip}:0").parse().unwrap();
    socket.bind(&from.into()).unwrap();
    socket.connect(&to.into()).unwrap();
    socket.into()
}

/// Checks that `hop` logged exactly one line about `peer`, and that it says `reason`.
#[track_caller]
fn assert_one_line(hop: &Proc, peer: SocketAddr, reason: &str) {
    let logged = frames::wait_for_stderr(hop, LOG_TIMEOUT, |text| {
        text.lines().any(|line| frames::mentions(line, peer))
    });
    let log = logged.unwrap_or_else(|| panic!("nothing about {peer}: {}", hop.stderr()));
    let about: Vec<&str> = log.lines().filter(|line| frames::mentions(line, peer)).collect();
    assert_eq!(about.len(), 1, "{log}");
    assert!(about[0].contains(reason), "{}", about[0]);
}

/// `--allow` (repeatable) on a relay and on the echoing end: a peer outside every block is
/// closed at accept with one line; peers inside any block are served.
#[test]
fn only_peers_in_an_allowed_block_are_served() {
    let (z, z_addr) = echo(&["--allow", "127.0.0.1/32"]);
    let (b, b_addr) = relay(z_addr, &["--allow", "10.0.0.0/8", "--allow", "127.0.0.1/32"]);

    let mut stranger = connect_from("127.0.0.2", b_addr);
    let stranger_addr = stranger.local_addr().unwrap();
    assert!(expect_closed(&mut stranger, LOG_TIMEOUT).is_empty());
    assert_one_line(&b, stranger_addr, "refusing connection from 127.0.0.2");
    assert_one_line(&b, stranger_addr, "not in --allow");

    // B itself reaches Z from 127.0.0.1, inside Z's block; a stranger reaching Z directly is not.
    let mut client = Client::from_stream(connect_from("127.0.0.1", b_addr));
    client.handshake();
    client.round_trip(0, b"from an allowed address");
    let mut stranger = connect_from("127.0.0.3", z_addr);
    let stranger_addr = stranger.local_addr().unwrap();
    assert!(expect_closed(&mut stranger, LOG_TIMEOUT).is_empty());
    assert_one_line(&z, stranger_addr, "not in --allow");
    client.round_trip(1, b"still served after the echoing end refused someone");
    assert!(client.finish().is_empty());
}

/// `--max-conns N`: the N+1-th peer is refused with one line while N are open; the N keep being
/// served, and when one leaves a new peer is taken.
#[test]
fn max_conns_refuses_the_rest_and_serves_the_first() {
    let (_z, z_addr) = echo(&[]);
    let (b, b_addr) = relay(z_addr, &["--max-conns", "3"]);
    let mut first: Vec<Client> = (0..3)
        .map(|_| {
            let mut client = Client::connect(b_addr);
            client.handshake();
            client
        })
        .collect();

    let mut extra = util::connect(b_addr);
    let extra_addr = extra.local_addr().unwrap();
    expect_closed(&mut extra, LOG_TIMEOUT);
    assert_one_line(&b, extra_addr, "3 connections open (--max-conns)");

    for (index, client) in first.iter_mut().enumerate() {
        client.round_trip(index as u64, &payload(index, 1));
    }
    let leaving = first.pop().unwrap();
    let leaving_addr = leaving.local_addr();
    assert!(leaving.finish().is_empty());
    // The relay counts the connection closed once it has logged its end.
    assert_one_line(&b, leaving_addr, "ended after");
    let mut next = Client::connect(b_addr);
    next.handshake();
    next.round_trip(0, b"taken once a slot was free");
    for client in first.iter_mut() {
        client.round_trip(9, b"the first ones are still served");
    }
}

/// Binding every interface without `--allow` prints one warning naming the flags that restrict
/// it; with `--allow` (or a specific address) there is no warning.
#[test]
fn binding_every_interface_warns_once_and_names_the_flag() {
    let (_z, z_addr) = echo(&[]);
    let next = z_addr.to_string();
    for args in [
        vec!["--listen", "*:0", "--name", "W"],
        vec!["--listen", "0.0.0.0:0", "--forward-to", &next, "--name", "W"],
    ] {
        let (hop, _) = spawn_listening(MAIN_BIN, &args);
        let log = frames::wait_for_stderr(&hop, LOG_TIMEOUT, |text| text.contains("warning"));
        let log = log.unwrap_or_else(|| panic!("no warning for {args:?}: {}", hop.stderr()));
        let warnings: Vec<&str> = log.lines().filter(|line| line.contains("warning")).collect();
        assert_eq!(warnings.len(), 1, "{log}");
        assert!(warnings[0].contains("--allow"), "{}", warnings[0]);
    }
    for args in [
        vec!["--listen", "*:0", "--allow", "127.0.0.1", "--name", "Q"],
        vec!["--listen", "127.0.0.1:0", "--forward-to", &next, "--name", "Q"],
    ] {
        let (hop, addr) = spawn_listening(MAIN_BIN, &args);
        // A warning would be written before the hop serves its first connection.
        let addr = if addr.ip().is_unspecified() {
            format!("127.0.0.1:{}", addr.port()).parse().unwrap()
        } else {
            addr
        };
        frames::log_marker(&hop, addr, LOG_TIMEOUT);
        assert!(!hop.stderr().contains("warning"), "{args:?}: {}", hop.stderr());
    }
}

/// `--max-conns` at the echoing end, as at a relay: with N open, the N+1-th peer is closed at
/// accept with one line, the N are still answered, and once one leaves a new peer is taken.
#[test]
fn max_conns_at_the_echo_end_refuses_the_rest_and_accepts_again() {
    let (z, z_addr) = echo(&["--max-conns", "2"]);
    let mut first: Vec<Client> = (0..2)
        .map(|_| {
            let mut client = Client::connect(z_addr);
            client.handshake();
            client
        })
        .collect();

    let mut extra = util::connect(z_addr);
    let extra_addr = extra.local_addr().unwrap();
    expect_closed(&mut extra, LOG_TIMEOUT);
    assert_one_line(&z, extra_addr, "refusing connection from");
    assert_one_line(&z, extra_addr, "2 connections open (--max-conns)");

    for (index, client) in first.iter_mut().enumerate() {
        client.round_trip(index as u64, &payload(index, 2));
    }
    let leaving = first.pop().unwrap();
    let leaving_addr = leaving.local_addr();
    assert!(leaving.finish().is_empty());
    // The echoing end counts the connection closed once it has logged its end.
    assert_one_line(&z, leaving_addr, "ended after");
    let mut next = Client::connect(z_addr);
    next.handshake();
    next.round_trip(0, b"taken by the echoing end once a slot was free");
    first[0].round_trip(1, b"the first one is still answered");
}

/// The every-interface warning for the IPv6 wildcard: `--listen '[::]:0'` warns once, naming
/// `--allow`, as `*:0` and `0.0.0.0:0` do.
#[test]
fn binding_every_ipv6_interface_warns_once() {
    if !util::has_ipv6_loopback() {
        util::say_skipped("binding_every_ipv6_interface_warns_once", "no IPv6 on this machine");
        return;
    }
    let (hop, addr) = spawn_listening(MAIN_BIN, &["--listen", "[::]:0", "--name", "W"]);
    assert!(addr.is_ipv6() && addr.ip().is_unspecified(), "W listens on {addr}");
    let log = frames::wait_for_stderr(&hop, LOG_TIMEOUT, |text| text.contains("warning"));
    let log = log.unwrap_or_else(|| panic!("no warning for [::]:0: {}", hop.stderr()));
    let warnings: Vec<&str> = log.lines().filter(|line| line.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("every interface") && warnings[0].contains("--allow"), "{log}");
}

/// The address a hop on `[::]` sees an IPv4 peer come from: `::ffff:a.b.c.d`, with the port.
fn v4_mapped(peer: SocketAddr) -> SocketAddr {
    let SocketAddr::V4(peer) = peer else { panic!("{peer} is not an IPv4 address") };
    SocketAddr::new(IpAddr::V6(peer.ip().to_ipv6_mapped()), peer.port())
}

/// A hop on the IPv6 wildcard with an IPv4 `--allow` block: an IPv4 client from 127.0.0.1,
/// which the hop sees as `::ffff:127.0.0.1`, is served (the path it gets back says how the hop
/// saw it); one from 127.0.0.2, and one over IPv6 from `::1`, are outside the block and closed
/// at accept with one line each. A block written in the mapped form works the same.
#[test]
fn a_hop_on_the_ipv6_wildcard_matches_v4_mapped_peers_against_ipv4_blocks() {
    if !util::has_ipv6_loopback() {
        util::say_skipped(
            "a_hop_on_the_ipv6_wildcard_matches_v4_mapped_peers_against_ipv4_blocks",
            "no IPv6 loopback on this machine",
        );
        return;
    }
    for block in ["127.0.0.1/32", "::ffff:127.0.0.1/128"] {
        let (z, z_any) = spawn_listening(MAIN_BIN, &["-l", "[::]:0", "-n", "Z", "--allow", block]);
        let over_v4: SocketAddr = format!("127.0.0.1:{}", z_any.port()).parse().unwrap();
        let over_v6: SocketAddr = format!("[::1]:{}", z_any.port()).parse().unwrap();

        let mut client = Client::from_stream(connect_from("127.0.0.1", over_v4));
        let path = client.handshake();
        let seen_from = &path.last().expect("a path").peer;
        assert_eq!(*seen_from, v4_mapped(client.local_addr()).to_string(), "{block}: {path:?}");
        client.round_trip(0, b"an IPv4 peer inside the block, on an IPv6 socket");

        let mut stranger = connect_from("127.0.0.2", over_v4);
        let stranger_addr = v4_mapped(stranger.local_addr().unwrap());
        assert!(expect_closed(&mut stranger, LOG_TIMEOUT).is_empty(), "{block}");
        assert_one_line(&z, stranger_addr, "not in --allow");

        let mut v6_stranger = util::connect(over_v6);
        let v6_stranger_addr = v6_stranger.local_addr().unwrap();
        assert!(expect_closed(&mut v6_stranger, LOG_TIMEOUT).is_empty(), "{block}");
        assert_one_line(&z, v6_stranger_addr, "not in --allow");

        client.round_trip(1, b"still served after two refusals");
        assert!(client.finish().is_empty());
        assert!(!z.stderr().contains("warning"), "--allow was given: {}", z.stderr());
    }
}
