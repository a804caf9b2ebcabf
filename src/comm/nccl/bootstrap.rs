//! torchrun-style bootstrap: the rank layout from the environment, and the exchange of NCCL's
//! 128-byte unique id over TCP.
//!
//! Protocol (one round, all-or-nothing): rank 0 listens on `MASTER_ADDR:MASTER_PORT`; every
//! other rank connects (retrying until the deadline, so start order does not matter) and sends
//! a hello (`FTNCCL1H`, its rank, its world size). Rank 0 answers nobody until every rank
//! `1..world_size` has said hello, then sends each the id (`FTNCCL1R`, status 0, 128 bytes). So
//! when any rank holds the id, every rank was alive a moment ago, and `ncclCommInitRank` is not
//! entered by a partial world. A duplicate rank or a different world size is answered at once
//! with a rejection the client reports as [`Error::InvalidArgument`]. Every wait is bounded by
//! one deadline; running past it is [`Error::Timeout`] naming the ranks that never arrived.
//! Nothing is encrypted or authenticated: the id lets a process join the NCCL communicator, so
//! run this on a trusted network, as with torchrun's store.

use crate::error::{Error, Result};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The size of an NCCL unique id (`NCCL_UNIQUE_ID_BYTES`).
pub(crate) const ID_BYTES: usize = 128;

const OP: &str = "nccl bootstrap";
const HELLO_MAGIC: [u8; 8] = *b"FTNCCL1H";
const REPLY_MAGIC: [u8; 8] = *b"FTNCCL1R";
const HELLO_BYTES: usize = 16;
const REPLY_BYTES: usize = 8 + 1 + 4 + ID_BYTES;
const STATUS_OK: u8 = 0;
const STATUS_DUPLICATE: u8 = 1;
const STATUS_WORLD: u8 = 2;
/// How long rank 0 waits for a connected client's hello before dropping it.
const HELLO_WAIT: Duration = Duration::from_secs(2);
/// The longest pause between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// A process's place in a torchrun-style launch, from `RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
/// `MASTER_ADDR` and `MASTER_PORT` (what `torchrun` sets for every process it starts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NcclEnv {
    /// This process's rank in `0..world_size` (`RANK`).
    pub rank: usize,
    /// The number of processes (`WORLD_SIZE`).
    pub world_size: usize,
    /// This process's rank on its machine (`LOCAL_RANK`): usually the GPU ordinal to use.
    pub local_rank: usize,
    /// Where rank 0 listens (`MASTER_ADDR`: a host name or an IP address).
    pub master_addr: String,
    /// The TCP port rank 0 listens on (`MASTER_PORT`).
    pub master_port: u16,
}

fn bad(what: &str, why: impl Into<String>) -> Error {
    Error::invalid(OP, what, why)
}

impl NcclEnv {
    /// Reads the layout from the process environment. Every missing or invalid variable is an
    /// [`Error::InvalidArgument`] (op `"nccl bootstrap"`) naming it.
    pub fn from_env() -> Result<NcclEnv> {
        NcclEnv::from_vars(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    }

    /// Like [`NcclEnv::from_env`], reading variables through `get` (e.g. from a map in tests or
    /// a launcher that is not torchrun).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<NcclEnv> {
        let text = |name: &str| -> Result<String> {
            match get(name) {
                None => Err(bad(
                    name,
                    "is not set (a torchrun-style launch sets RANK, WORLD_SIZE, LOCAL_RANK, \
                     MASTER_ADDR and MASTER_PORT for every process)",
                )),
                Some(v) if v.trim().is_empty() => Err(bad(name, "is set but empty")),
                Some(v) => Ok(v.trim().to_string()),
            }
        };
        let number = |name: &str| -> Result<usize> {
            let v = text(name)?;
            v.parse::<usize>()
                .map_err(|_| bad(name, format!("{v:?} is not a non-negative integer")))
        };
        let world_size = number("WORLD_SIZE")?;
        if world_size == 0 {
            return Err(bad("WORLD_SIZE", "must be at least 1"));
        }
        if world_size > i32::MAX as usize {
            return Err(bad(
                "WORLD_SIZE",
                format!("{world_size} exceeds NCCL's limit of {} ranks", i32::MAX),
            ));
        }
        let rank = number("RANK")?;
        if rank >= world_size {
            return Err(bad(
                "RANK",
                format!("RANK={rank} is not below WORLD_SIZE={world_size}"),
            ));
        }
        let local_rank = number("LOCAL_RANK")?;
        if local_rank >= world_size {
            return Err(bad(
                "LOCAL_RANK",
                format!("LOCAL_RANK={local_rank} is not below WORLD_SIZE={world_size}"),
            ));
        }
        let master_addr = text("MASTER_ADDR")?;
        let port_text = text("MASTER_PORT")?;
        let master_port = match port_text.parse::<u16>() {
            Ok(0) => return Err(bad("MASTER_PORT", "must not be 0")),
            Ok(p) => p,
            Err(_) => {
                return Err(bad(
                    "MASTER_PORT",
                    format!("{port_text:?} is not a TCP port (1..=65535)"),
                ))
            }
        };
        Ok(NcclEnv {
            rank,
            world_size,
            local_rank,
            master_addr,
            master_port,
        })
    }

    /// `MASTER_ADDR:MASTER_PORT` for messages (IPv6 literals bracketed).
    fn endpoint(&self) -> String {
        if self.master_addr.contains(':') && !self.master_addr.starts_with('[') {
            format!("[{}]:{}", self.master_addr, self.master_port)
        } else {
            format!("{}:{}", self.master_addr, self.master_port)
        }
    }

    /// The addresses `MASTER_ADDR:MASTER_PORT` resolves to.
    fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        let host = self
            .master_addr
            .trim_start_matches('[')
            .trim_end_matches(']');
        Ok((host, self.master_port).to_socket_addrs()?.collect())
    }
}

/// Distributes rank 0's 128-byte NCCL unique id to every rank of `env`'s world over TCP (see the
/// module docs for the protocol). Rank 0 passes `Some(id)` and gets it back once every other
/// rank has received it; the others pass `None`. Every wait ends by `timeout` with
/// [`Error::Timeout`].
pub(crate) fn exchange_unique_id(
    env: &NcclEnv,
    id_if_rank0: Option<[u8; ID_BYTES]>,
    timeout: Duration,
) -> Result<[u8; ID_BYTES]> {
    let deadline = Instant::now() + timeout;
    match (env.rank, id_if_rank0) {
        (0, Some(id)) => {
            serve(env, &id, deadline, timeout)?;
            Ok(id)
        }
        (0, None) => Err(bad("id", "rank 0 must supply the unique id it serves")),
        (_, Some(_)) => Err(bad("id", "only rank 0 supplies the unique id")),
        (_, None) => fetch(env, deadline, timeout),
    }
}

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn timed_out(what: String, timeout: Duration) -> Error {
    Error::Timeout {
        what,
        seconds: timeout.as_secs_f64(),
    }
}

/// Reads exactly `buf.len()` bytes, giving up at `deadline` (`Ok(false)` on timeout).
fn read_full(sock: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        let rest = left(deadline);
        if rest.is_zero() {
            return Ok(false);
        }
        sock.set_read_timeout(Some(rest.max(Duration::from_millis(1))))?;
        match sock.read(&mut buf[got..]) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Writes all of `buf` with a write timeout of what is left until `deadline` (at least 1 s).
fn write_full(sock: &mut TcpStream, buf: &[u8], deadline: Instant) -> std::io::Result<()> {
    sock.set_write_timeout(Some(left(deadline).max(Duration::from_secs(1))))?;
    sock.write_all(buf)?;
    sock.flush()
}

fn reply(status: u8, detail: u32, id: &[u8; ID_BYTES]) -> [u8; REPLY_BYTES] {
    let mut r = [0u8; REPLY_BYTES];
    r[..8].copy_from_slice(&REPLY_MAGIC);
    r[8] = status;
    r[9..13].copy_from_slice(&detail.to_le_bytes());
    if status == STATUS_OK {
        r[13..].copy_from_slice(id);
    }
    r
}

/// Rank 0's listening socket: on `MASTER_ADDR` itself, or on every interface of its address
/// family when `MASTER_ADDR` is not an address of this machine (a name behind NAT). A port in use
/// is retried until the deadline (a previous job may still be exiting).
fn listen(env: &NcclEnv, deadline: Instant) -> Result<TcpListener> {
    let addrs = env.resolve().map_err(|e| {
        bad(
            "MASTER_ADDR",
            format!("{:?} does not resolve: {e}", env.master_addr),
        )
    })?;
    if addrs.is_empty() {
        return Err(bad(
            "MASTER_ADDR",
            format!("{:?} resolves to no address", env.master_addr),
        ));
    }
    loop {
        let mut last = None;
        for a in &addrs {
            match TcpListener::bind(a) {
                Ok(l) => return Ok(l),
                Err(e) if e.kind() == ErrorKind::AddrNotAvailable => {
                    let any: SocketAddr = if a.is_ipv4() {
                        (std::net::Ipv4Addr::UNSPECIFIED, a.port()).into()
                    } else {
                        (std::net::Ipv6Addr::UNSPECIFIED, a.port()).into()
                    };
                    match TcpListener::bind(any) {
                        Ok(l) => return Ok(l),
                        Err(e) => last = Some((any, e)),
                    }
                }
                Err(e) => last = Some((*a, e)),
            }
        }
        let (a, e) = last.expect("at least one address was tried");
        if e.kind() != ErrorKind::AddrInUse || left(deadline).is_zero() {
            return Err(bad(
                "MASTER_PORT",
                format!("rank 0 cannot listen on {a}: {e}"),
            ));
        }
        std::thread::sleep(left(deadline).min(Duration::from_millis(100)));
    }
}

/// Whether a joined client's connection is still open (a rank that gave up and restarted
/// reconnects; its new connection then replaces the closed one instead of being a duplicate).
fn is_alive(sock: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    if sock.set_nonblocking(true).is_err() {
        return true;
    }
    let alive = match sock.peek(&mut b) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => e.kind() == ErrorKind::WouldBlock,
    };
    let _ = sock.set_nonblocking(false);
    alive
}

/// Rank 0: wait for a hello from every other rank, then send each the id.
fn serve(env: &NcclEnv, id: &[u8; ID_BYTES], deadline: Instant, timeout: Duration) -> Result<()> {
    let n = env.world_size;
    if n == 1 {
        return Ok(());
    }
    let listener = listen(env, deadline)?;
    listener.set_nonblocking(true).map_err(|e| {
        bad(
            "MASTER_PORT",
            format!("cannot make the listening socket non-blocking: {e}"),
        )
    })?;
    let mut joined: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    let mut count = 0;
    let mut notes: Vec<String> = Vec::new();
    while count < n - 1 {
        if left(deadline).is_zero() {
            let missing: Vec<usize> = (1..n).filter(|&r| joined[r].is_none()).collect();
            let mut what = format!(
                "{OP}: ranks {missing:?} never connected to rank 0 at {}",
                env.endpoint()
            );
            if !notes.is_empty() {
                what.push_str(&format!(" ({})", notes.join("; ")));
            }
            return Err(timed_out(what, timeout));
        }
        let (mut sock, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(left(deadline).min(Duration::from_millis(5)));
                continue;
            }
            Err(e) => {
                // A connection that died before we accepted it (ECONNABORTED and kin).
                notes.push(format!("accept failed: {e}"));
                notes.dedup();
                std::thread::sleep(left(deadline).min(Duration::from_millis(5)));
                continue;
            }
        };
        let mut hello = [0u8; HELLO_BYTES];
        let hello_deadline = Instant::now() + HELLO_WAIT.min(left(deadline));
        let ok = sock.set_nonblocking(false).is_ok()
            && matches!(read_full(&mut sock, &mut hello, hello_deadline), Ok(true))
            && hello[..8] == HELLO_MAGIC;
        if !ok {
            // Not one of ours (or too slow): drop it and keep listening.
            notes.push(format!(
                "ignored a connection from {peer} that sent no valid hello"
            ));
            notes.dedup();
            continue;
        }
        let rank = u32::from_le_bytes(hello[8..12].try_into().expect("4 bytes")) as usize;
        let world = u32::from_le_bytes(hello[12..16].try_into().expect("4 bytes")) as usize;
        let status = if world != n {
            notes.push(format!(
                "rejected rank {rank} from {peer}: its WORLD_SIZE is {world}, rank 0's is {n}"
            ));
            Some(STATUS_WORLD)
        } else if rank == 0 || rank >= n || joined[rank].as_ref().is_some_and(is_alive) {
            notes.push(format!("rejected a second rank {rank} from {peer}"));
            Some(STATUS_DUPLICATE)
        } else {
            None
        };
        match status {
            Some(s) => {
                let _ = write_full(&mut sock, &reply(s, n as u32, id), deadline);
            }
            None => {
                if joined[rank].replace(sock).is_none() {
                    count += 1;
                }
            }
        }
    }
    let mut lost = Vec::new();
    for (r, sock) in joined.iter_mut().enumerate() {
        if let Some(s) = sock {
            if let Err(e) = write_full(s, &reply(STATUS_OK, n as u32, id), deadline) {
                lost.push(format!("rank {r}: {e}"));
            }
        }
    }
    if !lost.is_empty() {
        return Err(Error::Cuda {
            call: OP.to_string(),
            message: format!(
                "rank 0 could not send the NCCL unique id to {} (those ranks died after joining)",
                lost.join(", ")
            ),
        });
    }
    Ok(())
}

/// Ranks `1..`: connect to rank 0 (retrying until the deadline), say hello, receive the id.
fn fetch(env: &NcclEnv, deadline: Instant, timeout: Duration) -> Result<[u8; ID_BYTES]> {
    let mut backoff = Duration::from_millis(10);
    let mut last_error = String::from("no attempt finished");
    let mut hello = [0u8; HELLO_BYTES];
    hello[..8].copy_from_slice(&HELLO_MAGIC);
    hello[8..12].copy_from_slice(&(env.rank as u32).to_le_bytes());
    hello[12..16].copy_from_slice(&(env.world_size as u32).to_le_bytes());
    loop {
        if left(deadline).is_zero() {
            return Err(timed_out(
                format!(
                    "{OP}: rank {} got no NCCL unique id from rank 0 at {} (last: {last_error})",
                    env.rank,
                    env.endpoint()
                ),
                timeout,
            ));
        }
        match attempt(env, &hello, deadline) {
            Ok(Attempt::Done(id)) => return Ok(id),
            Ok(Attempt::Retry(why)) => last_error = why,
            Err(e) => return Err(e),
        }
        std::thread::sleep(left(deadline).min(backoff));
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

enum Attempt {
    Done([u8; ID_BYTES]),
    Retry(String),
}

fn attempt(env: &NcclEnv, hello: &[u8; HELLO_BYTES], deadline: Instant) -> Result<Attempt> {
    let addrs = match env.resolve() {
        Ok(a) if !a.is_empty() => a,
        Ok(_) => return Ok(Attempt::Retry("MASTER_ADDR resolves to no address".into())),
        Err(e) => return Ok(Attempt::Retry(format!("MASTER_ADDR does not resolve: {e}"))),
    };
    let mut sock = None;
    let mut why = String::new();
    for a in &addrs {
        let rest = left(deadline);
        if rest.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(a, rest.min(Duration::from_secs(1))) {
            Ok(s) => {
                sock = Some(s);
                break;
            }
            Err(e) => why = format!("connecting to {a}: {e}"),
        }
    }
    let Some(mut sock) = sock else {
        return Ok(Attempt::Retry(why));
    };
    let _ = sock.set_nodelay(true);
    if let Err(e) = write_full(&mut sock, hello, deadline) {
        return Ok(Attempt::Retry(format!("sending the hello: {e}")));
    }
    let mut r = [0u8; REPLY_BYTES];
    match read_full(&mut sock, &mut r, deadline) {
        Ok(true) => {}
        Ok(false) => {
            return Ok(Attempt::Retry(
                "rank 0 accepted the connection but never sent the id (are all ranks started?)"
                    .into(),
            ))
        }
        // Rank 0 dropped the connection (e.g. it restarted): try again.
        Err(e) => return Ok(Attempt::Retry(format!("reading the reply: {e}"))),
    }
    if r[..8] != REPLY_MAGIC {
        return Err(bad(
            "MASTER_PORT",
            format!(
                "the server at {} does not speak ferrotron's NCCL bootstrap protocol (another \
                 service on that port?)",
                env.endpoint()
            ),
        ));
    }
    let detail = u32::from_le_bytes(r[9..13].try_into().expect("4 bytes"));
    match r[8] {
        STATUS_OK => {
            let mut id = [0u8; ID_BYTES];
            id.copy_from_slice(&r[13..]);
            Ok(Attempt::Done(id))
        }
        STATUS_WORLD => Err(bad(
            "WORLD_SIZE",
            format!(
                "this rank has WORLD_SIZE={}, but rank 0 at {} has {detail}",
                env.world_size,
                env.endpoint()
            ),
        )),
        STATUS_DUPLICATE => Err(bad(
            "RANK",
            format!(
                "rank 0 at {} already has a process with RANK={}",
                env.endpoint(),
                env.rank
            ),
        )),
        s => Err(bad(
            "MASTER_PORT",
            format!(
                "rank 0 at {} answered with unknown status {s}",
                env.endpoint()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    const FULL: [(&str, &str); 5] = [
        ("RANK", "2"),
        ("WORLD_SIZE", "4"),
        ("LOCAL_RANK", "0"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "29500"),
    ];

    fn with(overrides: &[(&'static str, Option<&'static str>)]) -> Result<NcclEnv> {
        let mut m: Vec<(&str, &str)> = FULL.to_vec();
        for (k, v) in overrides {
            m.retain(|(kk, _)| kk != k);
            if let Some(v) = v {
                m.push((k, v));
            }
        }
        NcclEnv::from_vars(vars(&m))
    }

    fn what_of(e: Error) -> (String, String) {
        match e {
            Error::InvalidArgument { op, what, why } => {
                assert_eq!(op, "nccl bootstrap");
                (what, why)
            }
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn env_parses_a_torchrun_layout() {
        let env = with(&[("RANK", Some(" 3 "))]).unwrap();
        assert_eq!(
            env,
            NcclEnv {
                rank: 3,
                world_size: 4,
                local_rank: 0,
                master_addr: "127.0.0.1".into(),
                master_port: 29500,
            }
        );
        assert_eq!(env.endpoint(), "127.0.0.1:29500");
    }

    #[test]
    fn env_missing_variables_are_named() {
        for name in [
            "RANK",
            "WORLD_SIZE",
            "LOCAL_RANK",
            "MASTER_ADDR",
            "MASTER_PORT",
        ] {
            let (what, why) = what_of(with(&[(name, None)]).unwrap_err());
            assert_eq!(what, name);
            assert!(why.contains("not set"), "{why}");
        }
        let (what, why) = what_of(with(&[("MASTER_ADDR", Some("  "))]).unwrap_err());
        assert_eq!(what, "MASTER_ADDR");
        assert!(why.contains("empty"), "{why}");
    }

    #[test]
    fn env_non_numeric_values_are_named() {
        for name in ["RANK", "WORLD_SIZE", "LOCAL_RANK"] {
            let (what, why) = what_of(with(&[(name, Some("two"))]).unwrap_err());
            assert_eq!(what, name);
            assert!(why.contains("\"two\""), "{why}");
        }
        let (what, _) = what_of(with(&[("RANK", Some("-1"))]).unwrap_err());
        assert_eq!(what, "RANK");
        for port in ["http", "70000", "0"] {
            let (what, _) = what_of(with(&[("MASTER_PORT", Some(port))]).unwrap_err());
            assert_eq!(what, "MASTER_PORT");
        }
    }

    #[test]
    fn env_ranks_must_lie_inside_the_world() {
        let (what, why) = what_of(with(&[("RANK", Some("4"))]).unwrap_err());
        assert_eq!(what, "RANK");
        assert!(
            why.contains("RANK=4") && why.contains("WORLD_SIZE=4"),
            "{why}"
        );
        let (what, _) = what_of(with(&[("LOCAL_RANK", Some("9"))]).unwrap_err());
        assert_eq!(what, "LOCAL_RANK");
        let (what, _) = what_of(with(&[("WORLD_SIZE", Some("0"))]).unwrap_err());
        assert_eq!(what, "WORLD_SIZE");
    }

    /// A port that was free a moment ago (bound to port 0, then released).
    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn env(rank: usize, world_size: usize, port: u16) -> NcclEnv {
        NcclEnv {
            rank,
            world_size,
            local_rank: rank,
            master_addr: "127.0.0.1".into(),
            master_port: port,
        }
    }

    fn random_id() -> [u8; ID_BYTES] {
        let mut id = [0u8; ID_BYTES];
        rand::Rng::fill(&mut rand::rng(), &mut id[..]);
        id
    }

    #[test]
    fn four_ranks_get_rank_0s_id() {
        let port = free_port();
        let id = random_id();
        let started = Instant::now();
        let handles: Vec<_> = (0..4)
            .map(|r| {
                std::thread::spawn(move || {
                    if r == 0 {
                        // Start the server last so the clients exercise their retries.
                        std::thread::sleep(Duration::from_millis(150));
                    }
                    let mine = (r == 0).then_some(id);
                    exchange_unique_id(&env(r, 4, port), mine, Duration::from_secs(20))
                })
            })
            .collect();
        for (r, h) in handles.into_iter().enumerate() {
            let got = h
                .join()
                .expect("no panic")
                .unwrap_or_else(|e| panic!("rank {r}: {e}"));
            assert_eq!(got, id, "rank {r}");
        }
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_single_rank_needs_no_network() {
        let id = random_id();
        let got = exchange_unique_id(&env(0, 1, 1), Some(id), Duration::from_millis(10)).unwrap();
        assert_eq!(got, id);
    }

    #[test]
    fn a_missing_rank_0_times_out_in_time() {
        let port = free_port();
        let timeout = Duration::from_millis(600);
        let handles: Vec<_> = (1..4)
            .map(|r| {
                std::thread::spawn(move || {
                    let t = Instant::now();
                    let out = exchange_unique_id(&env(r, 4, port), None, timeout);
                    (out, t.elapsed())
                })
            })
            .collect();
        for h in handles {
            let (out, took) = h.join().expect("no panic");
            match out {
                Err(Error::Timeout { what, .. }) => {
                    assert!(what.contains("from rank 0 at 127.0.0.1"), "{what}");
                }
                other => panic!("expected a timeout, got {other:?}"),
            }
            assert!(
                took >= timeout && took < timeout + Duration::from_secs(2),
                "{took:?}"
            );
        }
    }

    #[test]
    fn rank_0_names_the_ranks_that_never_came() {
        let port = free_port();
        let timeout = Duration::from_millis(800);
        let server = std::thread::spawn(move || {
            exchange_unique_id(&env(0, 3, port), Some(random_id()), timeout)
        });
        let one = exchange_unique_id(&env(1, 3, port), None, timeout);
        assert!(matches!(one, Err(Error::Timeout { .. })), "{one:?}");
        match server.join().expect("no panic") {
            Err(Error::Timeout { what, .. }) => assert!(what.contains("ranks [2]"), "{what}"),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[test]
    fn a_different_world_size_is_rejected() {
        let port = free_port();
        let timeout = Duration::from_millis(800);
        let server = std::thread::spawn(move || {
            exchange_unique_id(&env(0, 2, port), Some(random_id()), timeout)
        });
        let (what, why) = what_of(exchange_unique_id(&env(1, 3, port), None, timeout).unwrap_err());
        assert_eq!(what, "WORLD_SIZE");
        assert!(
            why.contains("WORLD_SIZE=3") && why.contains("has 2"),
            "{why}"
        );
        match server.join().expect("no panic") {
            Err(Error::Timeout { what, .. }) => {
                assert!(what.contains("WORLD_SIZE is 3"), "{what}")
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[test]
    fn the_id_goes_only_from_rank_0() {
        let e = exchange_unique_id(&env(0, 2, 1), None, Duration::from_millis(10)).unwrap_err();
        assert_eq!(what_of(e).0, "id");
        let e = exchange_unique_id(
            &env(1, 2, 1),
            Some([0; ID_BYTES]),
            Duration::from_millis(10),
        )
        .unwrap_err();
        assert_eq!(what_of(e).0, "id");
    }
}
