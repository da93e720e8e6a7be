//! Many TCP connections opened one after the other and held open, driven
//! by commands: the worker behind `np-client hold ADDR PORT`, of which a
//! benchmark runs several (one process holds at most what its descriptor
//! limit allows).
//!
//! One command per line on the input, one answer line each on the output:
//!
//! | command | answer |
//! |---|---|
//! | (at start) | `ready CAPACITY` — the most connections this process can hold |
//! | `open N TIMEOUT_MS BUDGET_MS` | `held H OPENING_MS` or `held H OPENING_MS failure REASON` |
//! | `ack WAIT_MS` | `acknowledged K` |
//! | `reset` | `reset` |
//!
//! `open` opens connections until `N` are held, one fails (connect error,
//! or no handshake within `TIMEOUT_MS`; nothing more is opened after a
//! failure) or `BUDGET_MS` pass. `ack` sends one byte on every held
//! connection and answers how many are still established with their byte
//! acknowledged within `WAIT_MS`. `reset` closes every connection with a
//! reset (`SO_LINGER` 0, no TIME_WAIT on either side). The end of the input
//! resets everything and ends the worker.

use std::io::{self, BufRead, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd as _;
use std::thread;
use std::time::{Duration, Instant};

/// Descriptors a worker keeps for everything but its connections.
const SPARE_DESCRIPTORS: u64 = 256;

/// Connections held open, and the first that failed.
#[derive(Debug, Default)]
pub struct Held {
    pub streams: Vec<TcpStream>,
    /// Why the first connection that failed failed (nothing is opened after
    /// it).
    pub first_failure: Option<String>,
    /// Time spent opening.
    pub opening: Duration,
}

impl Held {
    /// Opens connections to `to` one after the other, in the calling
    /// thread's namespace, keeping each, until `upto` are held, one fails
    /// or `deadline` passes.
    pub fn open_more(&mut self, to: SocketAddr, upto: usize, timeout: Duration, deadline: Instant) {
        let t = Instant::now();
        while self.streams.len() < upto && self.first_failure.is_none() {
            if Instant::now() > deadline {
                self.first_failure = Some("the time allowed for opening ran out".into());
                break;
            }
            match crate::client::tcp_connect(to, None, timeout) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    self.streams.push(s);
                }
                Err(e) => {
                    self.first_failure =
                        Some(format!("connection {}: {e}", self.streams.len() + 1));
                }
            }
        }
        self.opening += t.elapsed();
    }

    /// Sends one byte on every connection and waits up to `wait` for the
    /// peer's acknowledgements: how many connections are still established
    /// with their byte acknowledged (the path carries data both ways on all
    /// of them at once).
    #[must_use]
    pub fn acknowledged(&self, wait: Duration) -> usize {
        const TCP_ESTABLISHED: u8 = 1;
        let mut pending: Vec<&TcpStream> = self
            .streams
            .iter()
            .filter(|s| {
                let mut w: &TcpStream = s;
                w.write(&[1]).is_ok_and(|n| n == 1)
            })
            .collect();
        let sent = pending.len();
        let deadline = Instant::now() + wait;
        loop {
            pending.retain(|s| !matches!(tcp_state(s), Some((TCP_ESTABLISHED, 0))));
            if pending.is_empty() || Instant::now() > deadline {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        sent - pending.len()
    }

    /// Resets every held connection and closes it.
    pub fn reset_all(&mut self) {
        for s in self.streams.drain(..) {
            linger_zero(&s);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.reset_all();
    }
}

/// `SO_LINGER` 0: closing the socket sends a reset and leaves no TIME_WAIT.
pub fn linger_zero(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let len = libc::socklen_t::try_from(size_of::<libc::linger>()).unwrap_or(0);
    // SAFETY: a valid socket and a linger struct of `len` bytes.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const l).cast(),
            len,
        );
    }
}

/// The TCP state of a socket (`TCP_INFO`) and the bytes of its send queue
/// not yet acknowledged by the peer (`SIOCOUTQ`: sent or not).
fn tcp_state(s: &TcpStream) -> Option<(u8, i32)> {
    // SAFETY: tcp_info is plain data; zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(size_of::<libc::tcp_info>()).ok()?;
    // SAFETY: a valid socket and a buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    let mut outq: libc::c_int = 0;
    // SAFETY: a valid socket and an int for the ioctl's answer.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &raw mut outq) } != 0 {
        return None;
    }
    Some((info.tcpi_state, outq))
}

/// Raises this process's `RLIMIT_NOFILE` soft limit (and, where allowed,
/// the hard one) to at least `want` descriptors; returns the soft limit now
/// in force.
#[must_use]
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } != 0 {
        return 0;
    }
    if lim.rlim_cur >= want {
        return lim.rlim_cur;
    }
    let raised = libc::rlimit {
        rlim_cur: want,
        rlim_max: lim.rlim_max.max(want),
    };
    // SAFETY: a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
        return want;
    }
    // Not allowed to raise the hard limit (no CAP_SYS_RESOURCE): up to it.
    let capped = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const capped) } == 0 {
        lim.rlim_max
    } else {
        lim.rlim_cur
    }
}

/// A command of the worker's input.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Open {
        upto: usize,
        timeout: Duration,
        budget: Duration,
    },
    Ack {
        wait: Duration,
    },
    Reset,
}

fn parse(line: &str) -> Result<Command, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let number = |w: &str| {
        w.parse::<u64>()
            .map_err(|e| format!("{w:?} is not a number: {e}"))
    };
    let millis = |w: &str| number(w).map(Duration::from_millis);
    match words.as_slice() {
        ["open", n, timeout, budget] => Ok(Command::Open {
            upto: usize::try_from(number(n)?).map_err(|e| e.to_string())?,
            timeout: millis(timeout)?,
            budget: millis(budget)?,
        }),
        ["ack", wait] => Ok(Command::Ack {
            wait: millis(wait)?,
        }),
        ["reset"] => Ok(Command::Reset),
        _ => Err(format!(
            "unknown command {line:?}: expected `open N TIMEOUT_MS BUDGET_MS`, `ack WAIT_MS` or `reset`"
        )),
    }
}

/// Runs the worker: holds connections to `to` as `input` commands until it
/// ends. Errors are the output's, or a command it cannot parse.
///
/// # Errors
/// Writing an answer failed, reading the input failed, or a line was no
/// command.
pub fn serve(to: SocketAddr, input: impl BufRead, mut output: impl Write) -> io::Result<()> {
    // As many as the kernel lets one process have (`fs.nr_open`'s default).
    let limit = raise_nofile(1 << 20);
    let capacity = limit.saturating_sub(SPARE_DESCRIPTORS);
    writeln!(output, "ready {capacity}")?;
    output.flush()?;
    let capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
    let mut held = Held::default();
    for line in input.lines() {
        let line = line?;
        let answer = match parse(&line).map_err(io::Error::other)? {
            Command::Open {
                upto,
                timeout,
                budget,
            } => {
                let before = held.opening;
                held.open_more(to, upto.min(capacity), timeout, Instant::now() + budget);
                let ms = held.opening.saturating_sub(before).as_millis();
                match &held.first_failure {
                    Some(why) => format!("held {} {ms} failure {why}", held.streams.len()),
                    None => format!("held {} {ms}", held.streams.len()),
                }
            }
            Command::Ack { wait } => format!("acknowledged {}", held.acknowledged(wait)),
            Command::Reset => {
                held.reset_all();
                "reset".to_owned()
            }
        };
        writeln!(output, "{answer}")?;
        output.flush()?;
    }
    held.reset_all();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!(
            parse("open 10 3000 60000"),
            Ok(Command::Open {
                upto: 10,
                timeout: Duration::from_secs(3),
                budget: Duration::from_mins(1),
            })
        );
        assert_eq!(
            parse(" ack 5000 "),
            Ok(Command::Ack {
                wait: Duration::from_secs(5)
            })
        );
        assert_eq!(parse("reset"), Ok(Command::Reset));
        for bad in ["", "open 10", "open x 1 1", "ack", "ack -1", "close"] {
            let err = parse(bad).expect_err(bad);
            assert!(
                err.contains("not a number") || err.contains("expected `open"),
                "{bad:?}: {err}"
            );
        }
    }
}
