//! Sockets and file descriptors: address parsing, listening and connecting with the options a
//! low-latency hop needs, kernel receive timestamps (SO_TIMESTAMPING read with `recvmsg`), and
//! the classification of I/O results that the loops act on. Nothing here knows about frames.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};

use mio::net::{TcpListener, TcpStream};
use socket2::{Domain, Protocol, Socket, Type};

/// Parses a `--listen` address: `host:port`, `*:port`, `:port`, `[v6]:port`, `0.0.0.0:port`.
/// `*` and an empty host mean every IPv4 interface.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Some(port) = text.strip_prefix("*:").or_else(|| text.strip_prefix(':')) {
        let port = port.parse::<u16>().map_err(|_| format!("bad port in '{text}'"))?;
        return Ok(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)));
    }
    resolve(text)
}

/// Resolves `host:port` or `[v6]:port`; host names go through the system resolver, and the
/// first address it gives is used.
pub fn resolve(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    if !text.contains(':') {
        return Err(format!("'{text}' has no port (expected host:port)"));
    }
    let mut addrs =
        text.to_socket_addrs().map_err(|error| format!("cannot resolve '{text}': {error}"))?;
    addrs.next().ok_or_else(|| format!("'{text}' resolves to no address"))
}

pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    // Accepted sockets inherit the option, so even the bytes a peer sends before the accept
    // (its path announcement, often its first frames) carry the kernel's receive timestamp.
    // Refused, each accepted socket asks again and says so (see `core::Peer::new`).
    let _ = enable_receive_timestamps(socket.as_raw_fd());
    socket.listen(1024)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Starts a non-blocking connect; the caller waits for writability, then calls
/// [`connect_result`].
pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Whether a non-blocking connect has finished: `Ok(true)` connected, `Ok(false)` still in
/// progress, `Err` failed (following the steps in mio's `TcpStream::connect` docs).
pub fn connect_result(stream: &TcpStream) -> io::Result<bool> {
    if let Some(error) = stream.take_error()? {
        return Err(error);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(error) if error.raw_os_error() == Some(libc::EINPROGRESS) => Ok(false),
        Err(error) => Err(error),
    }
}

/// An address block for `--allow`: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr =
            address.parse().map_err(|_| format!("'{text}' is not an address or address/prefix"))?;
        let max_len = if network.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            None => max_len,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|len| *len <= max_len)
                .ok_or_else(|| format!("bad prefix length in '{text}' (0 to {max_len})"))?,
        };
        Ok(Cidr { network, prefix_len })
    }

    /// An IPv4 peer seen on an IPv6 socket (`::ffff:a.b.c.d`) matches IPv4 blocks by its IPv4
    /// address, and IPv6 blocks by the mapped address it was seen with: the block
    /// `::ffff:10.0.0.0/104`, copied from the address a refusal line shows, holds it too, on
    /// either kind of socket.
    pub fn contains(&self, address: IpAddr) -> bool {
        match self.network {
            IpAddr::V4(network) => {
                let IpAddr::V4(address) = address.to_canonical() else { return false };
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0);
                u32::from(network) & mask == u32::from(address) & mask
            }
            IpAddr::V6(network) => {
                let address = match address {
                    IpAddr::V4(address) => address.to_ipv6_mapped(),
                    IpAddr::V6(address) => address,
                };
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix_len)).unwrap_or(0);
                u128::from(network) & mask == u128::from(address) & mask
            }
        }
    }
}

/// What a read or write did, in the terms the event loops act on.
#[derive(Debug)]
pub enum Io {
    Done(usize),
    WouldBlock,
    Closed,
    Failed(io::Error),
}

/// Classifies the result of one read or write, retrying on EINTR inside `op`.
pub fn classify(mut op: impl FnMut() -> io::Result<usize>) -> Io {
    loop {
        return match op() {
            Ok(0) => Io::Closed,
            Ok(count) => Io::Done(count),
            Err(error) => match error.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => Io::WouldBlock,
                _ => Io::Failed(error),
            },
        };
    }
}

/// A plain read(2) or write(2) on a raw descriptor (stdin, stdout).
pub fn read_fd(fd: RawFd, into: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `into` is a valid writable slice of `into.len()` bytes.
    let count = unsafe { libc::read(fd, into.as_mut_ptr().cast(), into.len()) };
    if count < 0 { Err(io::Error::last_os_error()) } else { Ok(count as usize) }
}

pub fn write_fd(fd: RawFd, from: &[u8]) -> io::Result<usize> {
    // SAFETY: `from` is a valid readable slice of `from.len()` bytes.
    let count = unsafe { libc::write(fd, from.as_ptr().cast(), from.len()) };
    if count < 0 { Err(io::Error::last_os_error()) } else { Ok(count as usize) }
}

/// Puts a descriptor in non-blocking mode until dropped, then restores its flags: stdin and
/// stdout may be a terminal shared with the shell, which must get them back as they were.
pub struct NonBlocking {
    fd: RawFd,
    saved_flags: libc::c_int,
}

impl NonBlocking {
    pub fn set(fd: RawFd) -> io::Result<NonBlocking> {
        // SAFETY: fcntl on a descriptor number has no memory effects; errors are returned.
        let saved_flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if saved_flags < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, saved_flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(NonBlocking { fd, saved_flags })
    }
}

impl Drop for NonBlocking {
    fn drop(&mut self) {
        // SAFETY: restores the flags read in `set` on the same descriptor.
        unsafe { libc::fcntl(self.fd, libc::F_SETFL, self.saved_flags) };
    }
}

/// `SO_TIMESTAMPING` (and its control message, `SCM_TIMESTAMPING`) on the generic Linux ABI
/// (x86_64, aarch64, riscv64, …; libc does not export it for Linux). Its payload there is
/// `struct scm_timestamping { struct timespec ts[3]; }` with 64-bit fields.
const SO_TIMESTAMPING: libc::c_int = 37;

/// Asks the kernel to stamp every segment this socket receives (software stamp, taken when the
/// packet reaches the host's network stack, CLOCK_REALTIME) and to report the stamp of the last
/// byte each `recvmsg` returns.
pub fn enable_receive_timestamps(fd: RawFd) -> io::Result<()> {
    set_timestamping(fd, libc::SOF_TIMESTAMPING_RX_SOFTWARE | libc::SOF_TIMESTAMPING_SOFTWARE)
}

/// Sets the socket's `SO_TIMESTAMPING` flags (they replace what was set before).
fn set_timestamping(fd: RawFd, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: `flags` lives across the call and its size is passed; errors are returned.
    let result = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_TIMESTAMPING,
            (&flags as *const libc::c_uint).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if result == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// `SOF_TIMESTAMPING_OPT_ID_TCP` (Linux 6.2): the ID of a TCP stamp is the byte offset of the
/// write's last byte since the option was set (libc does not export it yet).
const SOF_TIMESTAMPING_OPT_ID_TCP: libc::c_uint = 1 << 16;

/// Adds transmit timestamps to the receive timestamps: for each write that asks, a software
/// stamp when its last byte leaves for the device and one when the peer acknowledges it, on the
/// error queue, keyed by byte offset (`OPT_ID_TCP`), without the packet (`OPT_TSONLY`, so
/// entries cost little of the receive buffer). `every_write`: the socket asks for every write
/// (`TX_SOFTWARE | TX_ACK` here); else only the reporting and key options are set, and a write
/// asks for itself through [`send_asking_tx_stamps`]. Refused by kernels before 6.2.
pub fn enable_transmit_timestamps(fd: RawFd, every_write: bool) -> io::Result<()> {
    let mut flags: libc::c_uint = libc::SOF_TIMESTAMPING_RX_SOFTWARE
        | libc::SOF_TIMESTAMPING_SOFTWARE
        | libc::SOF_TIMESTAMPING_OPT_ID
        | libc::SOF_TIMESTAMPING_OPT_TSONLY
        | SOF_TIMESTAMPING_OPT_ID_TCP;
    if every_write {
        flags |= TX_STAMPS_OF_A_WRITE;
    }
    set_timestamping(fd, flags)
}

/// What a stamped write asks for: SND (its last byte left for the device) and ACK.
const TX_STAMPS_OF_A_WRITE: libc::c_uint =
    libc::SOF_TIMESTAMPING_TX_SOFTWARE | libc::SOF_TIMESTAMPING_TX_ACK;

/// One `sendmsg` of `data` that asks for this write's transmit stamps with an `SCM_TIMESTAMPING`
/// control message (its `TX_*` flags override the socket's for this call; the socket's
/// reporting options, set by [`enable_transmit_timestamps`], say how they come back). Flags as
/// `std`'s `send`: `MSG_NOSIGNAL`, so a peer gone is an error, not a SIGPIPE.
pub fn send_asking_tx_stamps(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    let payload_len = std::mem::size_of::<u32>() as u32;
    // u64 storage keeps the control buffer aligned for `cmsghdr`; CMSG_SPACE(4) is 24 bytes.
    let mut control = [0u64; 4];
    // SAFETY: pure arithmetic on a length.
    let space = unsafe { libc::CMSG_SPACE(payload_len) } as usize;
    debug_assert!(space <= std::mem::size_of_val(&control), "room for one u32 control message");
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: an all-zero msghdr is valid; the fields are set below.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = space;
    // SAFETY: `control` holds CMSG_SPACE(4) bytes, so the first header and its u32 fit; the
    // kernel wants `cmsg_len` exactly CMSG_LEN(4).
    unsafe {
        let header = libc::CMSG_FIRSTHDR(&message);
        debug_assert!(!header.is_null(), "a control buffer of CMSG_SPACE(4) has a first header");
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = SO_TIMESTAMPING;
        (*header).cmsg_len = libc::CMSG_LEN(payload_len) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<u32>(), TX_STAMPS_OF_A_WRITE);
    }
    // SAFETY: `message` points to `iov` (describing `data`, only read) and `control`, both live
    // for the call.
    let count = unsafe { libc::sendmsg(fd, &message, libc::MSG_NOSIGNAL) };
    if count < 0 { Err(io::Error::last_os_error()) } else { Ok(count as usize) }
}

/// `SO_EE_ORIGIN_TIMESTAMPING`, and `SCM_TSTAMP_SND` / `SCM_TSTAMP_ACK` in `ee_info`.
const SO_EE_ORIGIN_TIMESTAMPING: u8 = 4;
const SCM_TSTAMP_SND: u32 = 0;
const SCM_TSTAMP_ACK: u32 = 2;

/// Reads the socket's error queue until it is empty, handing each transmit stamp to `stamped`
/// as (is it the ACK stamp, key, CLOCK_REALTIME ns). Returns how many entries were read.
pub fn read_error_queue(fd: RawFd, mut stamped: impl FnMut(bool, u32, u64)) -> io::Result<usize> {
    let mut entries = 0;
    loop {
        let mut control = [0u64; 16];
        // SAFETY: an all-zero msghdr is valid; no data buffer (OPT_TSONLY), only control.
        let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: `message` points to `control`, live and writable for its length.
        let result =
            unsafe { libc::recvmsg(fd, &mut message, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
        if result < 0 {
            let error = io::Error::last_os_error();
            return match error.kind() {
                io::ErrorKind::WouldBlock => Ok(entries),
                io::ErrorKind::Interrupted => continue,
                _ => Err(error),
            };
        }
        entries += 1;
        let (mut stamp_ns, mut event) = (None, None);
        // SAFETY: as in `receive`: each header's level, type and length are checked before its
        // data is read, unaligned, within `msg_controllen`.
        unsafe {
            let mut header = libc::CMSG_FIRSTHDR(&message);
            while !header.is_null() {
                let level = (*header).cmsg_level;
                let kind = (*header).cmsg_type;
                let len = (*header).cmsg_len as usize;
                let stamps_len = libc::CMSG_LEN(std::mem::size_of::<[libc::timespec; 3]>() as u32);
                let error_len =
                    libc::CMSG_LEN(std::mem::size_of::<libc::sock_extended_err>() as u32);
                if level == libc::SOL_SOCKET
                    && kind == SO_TIMESTAMPING
                    && len >= stamps_len as usize
                {
                    let stamps: [libc::timespec; 3] =
                        std::ptr::read_unaligned(libc::CMSG_DATA(header).cast());
                    stamp_ns =
                        Some(stamps[0].tv_sec as u64 * 1_000_000_000 + stamps[0].tv_nsec as u64);
                } else if ((level == libc::SOL_IP && kind == libc::IP_RECVERR)
                    || (level == libc::SOL_IPV6 && kind == libc::IPV6_RECVERR))
                    && len >= error_len as usize
                {
                    let error: libc::sock_extended_err =
                        std::ptr::read_unaligned(libc::CMSG_DATA(header).cast());
                    if error.ee_origin == SO_EE_ORIGIN_TIMESTAMPING {
                        event = Some((error.ee_info, error.ee_data));
                    }
                }
                header = libc::CMSG_NXTHDR(&message, header);
            }
        }
        if let (Some(stamp_ns), Some((info, key))) = (stamp_ns, event)
            && (info == SCM_TSTAMP_SND || info == SCM_TSTAMP_ACK)
        {
            stamped(info == SCM_TSTAMP_ACK, key, stamp_ns);
        }
    }
}

/// One `recvmsg` into `into`: the byte count and, when the kernel attached one, the software
/// receive timestamp (CLOCK_REALTIME, ns) of the highest-sequence byte read. On TCP that is the
/// arrival of the segment holding the last byte returned.
pub fn receive(fd: RawFd, into: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    // u64 storage keeps the control buffer aligned for `cmsghdr`.
    let mut control = [0u64; 16];
    let mut iov = libc::iovec { iov_base: into.as_mut_ptr().cast(), iov_len: into.len() };
    // SAFETY: an all-zero msghdr is valid (no name, no buffers); the fields are set below.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: `message` points to `iov` (describing `into`) and `control`, all live and
    // writable for the lengths given.
    let count = unsafe { libc::recvmsg(fd, &mut message, 0) };
    if count < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp_ns = None;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, within
    // `msg_controllen`; each header is checked for its level, type and length before its data
    // is read, unaligned.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&message);
        while !header.is_null() {
            let wanted = libc::CMSG_LEN(std::mem::size_of::<[libc::timespec; 3]>() as u32);
            if (*header).cmsg_level == libc::SOL_SOCKET
                && (*header).cmsg_type == SO_TIMESTAMPING
                && (*header).cmsg_len as usize >= wanted as usize
            {
                let stamps: [libc::timespec; 3] =
                    std::ptr::read_unaligned(libc::CMSG_DATA(header).cast());
                let software = stamps[0];
                if software.tv_sec > 0 || software.tv_nsec > 0 {
                    stamp_ns =
                        Some(software.tv_sec as u64 * 1_000_000_000 + software.tv_nsec as u64);
                }
            }
            header = libc::CMSG_NXTHDR(&message, header);
        }
    }
    Ok((count as usize, stamp_ns))
}

/// Asks the kernel to acknowledge what this socket has received at once (`TCP_QUICKACK`),
/// instead of holding the ACK for a reply to carry. Not sticky: the kernel returns to delayed
/// ACKs on its own, so `--quickack` calls it after every read. A route with `quickack 1` does
/// the same for every socket without a call.
pub fn quick_ack(fd: RawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: `one` lives across the call and its size is passed; errors are returned.
    let result = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// The socket's `TCP_INFO`, the fields its kernel gives; `None` when the kernel refuses.
pub fn tcp_info(fd: RawFd) -> Option<crate::kernel::TcpInfo> {
    let mut buffer = [0u8; crate::kernel::TCP_INFO_BUFFER];
    let mut len = buffer.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `buffer` and sets `len`.
    let result = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buffer.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (result == 0)
        .then(|| crate::kernel::TcpInfo::parse(&buffer[..(len as usize).min(buffer.len())]))
}

/// The host name, for a hop that was given no `--name`.
pub fn host_name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is writable for its length; gethostname NUL-terminates on success.
    let result = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if result != 0 {
        return "unknown-host".to_string();
    }
    let end = buffer.iter().position(|&byte| byte == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_listen_address_forms() {
        assert_eq!(parse_listen("*:9000").unwrap(), "0.0.0.0:9000".parse().unwrap());
        assert_eq!(parse_listen(":9000").unwrap(), "0.0.0.0:9000".parse().unwrap());
        assert_eq!(parse_listen("[::1]:9000").unwrap(), "[::1]:9000".parse().unwrap());
        assert_eq!(parse_listen("127.0.0.1:1").unwrap(), "127.0.0.1:1".parse().unwrap());
        assert_eq!(parse_listen("localhost:80").unwrap().port(), 80);
        assert!(parse_listen("*:http").is_err());
        assert!(resolve("10.0.0.1").unwrap_err().contains("no port"));
    }

    #[test]
    fn test_cidr_blocks() {
        let block = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(block.contains("10.1.200.3".parse().unwrap()));
        assert!(!block.contains("10.2.0.1".parse().unwrap()));
        assert!(block.contains("::ffff:10.1.0.9".parse().unwrap()), "v4-mapped peers match");
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("192.0.2.1".parse().unwrap()));
        assert!(Cidr::parse("127.0.0.1").unwrap().contains("127.0.0.1".parse().unwrap()));
        assert!(!Cidr::parse("127.0.0.1").unwrap().contains("127.0.0.2".parse().unwrap()));
        assert!(Cidr::parse("2001:db8::/32").unwrap().contains("2001:db8:1::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(!Cidr::parse("::1").unwrap().contains("127.0.0.1".parse().unwrap()));
        assert!(!block.contains("2001:db8::a01:9".parse().unwrap()), "only ::ffff: is mapped");
    }

    /// The address a dual-stack hop logs for an IPv4 peer is the mapped one; an `--allow` block
    /// written that way (or as plain IPv4) must hold the peer, seen either way.
    #[test]
    fn test_cidr_blocks_and_v4_mapped_peers() {
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let plain: IpAddr = "127.0.0.1".parse().unwrap();
        let outside: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        for text in ["127.0.0.1/32", "127.0.0.1", "::ffff:127.0.0.1", "::ffff:127.0.0.0/127"] {
            let block = Cidr::parse(text).unwrap();
            assert!(block.contains(mapped), "{text} holds {mapped}");
            assert!(block.contains(plain), "{text} holds {plain}");
            assert!(!block.contains(outside), "{text} does not hold {outside}");
        }
        let mapped_block = Cidr::parse("::ffff:10.0.0.0/104").unwrap();
        assert!(mapped_block.contains("10.200.0.1".parse().unwrap()));
        assert!(mapped_block.contains("::ffff:10.200.0.1".parse().unwrap()));
        assert!(!mapped_block.contains("11.0.0.1".parse().unwrap()));
        assert!(!mapped_block.contains("::ffff:11.0.0.1".parse().unwrap()));
        assert!(!mapped_block.contains("::1".parse().unwrap()));
        assert!(Cidr::parse("nonsense/8").is_err());
    }
}
