//! `np-podserver`: the workload of the test cluster's pods (and any other
//! "ordinary" server a test needs).
//!
//! ```text
//! np-podserver --name NAME [--tcp PORT[,PORT...]] [--udp PORT[,PORT...]]
//!              [--tcp-echo PORT[,PORT...]] [--bind ADDR]
//! ```
//!
//! Every TCP connection and every UDP datagram is answered with
//! `"<NAME> <peer_ip>:<peer_port> <local_port>\n"`: who the server is, which
//! client address it saw, and which port the traffic arrived on. TCP writes
//! the line without reading first and then closes; a `--tcp-echo` port
//! instead echoes everything after the line until the client's EOF. UDP
//! sends the line to the datagram's sender, followed by whatever the
//! datagram carried after its first newline (an echo, for datagrams larger
//! than one frame).
//!
//! Prints `ready` on stdout once every socket is bound, and logs one line per
//! request on stderr.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

const USAGE: &str = "usage: np-podserver --name NAME [--tcp PORT[,PORT...]] [--udp PORT[,PORT...]] \
                     [--tcp-echo PORT[,PORT...]] [--bind ADDR]";

#[derive(Debug, Default)]
struct Args {
    name: String,
    bind: Option<IpAddr>,
    tcp: Vec<u16>,
    udp: Vec<u16>,
    tcp_echo: Vec<u16>,
}

fn parse_ports(flag: &str, value: &str) -> Result<Vec<u16>, String> {
    value
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("{flag}: {p:?} is not a port"))
        })
        .collect()
}

fn parse_args(mut words: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args::default();
    while let Some(flag) = words.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = words
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--name" => args.name = value,
            "--tcp" => args.tcp.extend(parse_ports(&flag, &value)?),
            "--udp" => args.udp.extend(parse_ports(&flag, &value)?),
            "--tcp-echo" => args.tcp_echo.extend(parse_ports(&flag, &value)?),
            "--bind" => {
                args.bind = Some(
                    value
                        .parse()
                        .map_err(|_| format!("--bind: {value:?} is not an IP address"))?,
                );
            }
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    if args.name.is_empty() {
        return Err("--name is required".to_owned());
    }
    if args.tcp.is_empty() && args.udp.is_empty() && args.tcp_echo.is_empty() {
        return Err("nothing to serve: give --tcp, --udp or --tcp-echo".to_owned());
    }
    Ok(args)
}

/// The answer to a request from `peer` that arrived on `local_port`.
fn answer(name: &str, peer: SocketAddr, local_port: u16) -> String {
    format!("{name} {}:{} {local_port}\n", peer.ip(), peer.port())
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("np-podserver: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let bind = args.bind.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let name: Arc<str> = Arc::from(args.name.as_str());

    // Bind everything first, so "ready" means every socket accepts traffic.
    let mut tcp = Vec::new();
    for (ports, echo) in [(&args.tcp, false), (&args.tcp_echo, true)] {
        for &port in ports {
            match TcpListener::bind((bind, port)) {
                Ok(l) => tcp.push((l, echo)),
                Err(e) => {
                    eprintln!("np-podserver {name}: cannot listen on tcp {bind}:{port}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    let mut udp = Vec::new();
    for &port in &args.udp {
        match UdpSocket::bind((bind, port)) {
            Ok(s) => udp.push(s),
            Err(e) => {
                eprintln!("np-podserver {name}: cannot bind udp {bind}:{port}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }

    for (listener, echo) in tcp {
        let name = Arc::clone(&name);
        thread::spawn(move || serve_tcp(&name, &listener, echo));
    }
    for socket in udp {
        let name = Arc::clone(&name);
        thread::spawn(move || serve_udp(&name, &socket));
    }

    let mut stdout = io::stdout().lock();
    if writeln!(stdout, "ready")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    drop(stdout);
    loop {
        thread::park();
    }
}

fn serve_tcp(name: &Arc<str>, listener: &TcpListener, echo: bool) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let name = Arc::clone(name);
                thread::spawn(move || {
                    if let Err(e) = handle_tcp(&name, &stream, echo) {
                        eprintln!("{name}: tcp connection: {e}");
                    }
                });
            }
            Err(e) => eprintln!("{name}: accept: {e}"),
        }
    }
}

fn handle_tcp(name: &str, stream: &TcpStream, echo: bool) -> io::Result<()> {
    let peer = stream.peer_addr()?;
    let local = stream.local_addr()?;
    eprintln!(
        "{name}: tcp{} {peer} -> {local}",
        if echo { " echo" } else { "" }
    );
    let mut w = stream;
    w.write_all(answer(name, peer, local.port()).as_bytes())?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    if echo {
        let mut r = stream;
        io::copy(&mut r, &mut w)?;
    }
    stream.shutdown(Shutdown::Write)?;
    // Wait for the client's FIN (briefly) so that data it may have sent does
    // not turn our close into a RST.
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut sink = [0u8; 4096];
    let mut r = stream;
    while matches!(r.read(&mut sink), Ok(n) if n > 0) {}
    Ok(())
}

fn serve_udp(name: &str, socket: &UdpSocket) {
    let local_port = socket.local_addr().map_or(0, |a| a.port());
    let mut buf = vec![0u8; 65536];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, peer)) => {
                eprintln!("{name}: udp {peer} -> :{local_port} ({n} bytes)");
                let mut reply = answer(name, peer, local_port).into_bytes();
                if let Some(nl) = buf[..n].iter().position(|b| *b == b'\n') {
                    reply.extend_from_slice(&buf[nl + 1..n]);
                }
                if let Err(e) = socket.send_to(&reply, peer) {
                    eprintln!("{name}: udp reply to {peer}: {e}");
                }
            }
            Err(e) => eprintln!("{name}: udp recv: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, String> {
        parse_args(list.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn parses_port_lists() {
        let a = args(&[
            "--name",
            "p",
            "--tcp",
            "80,8080",
            "--udp",
            "53",
            "--tcp-echo",
            "9000",
        ])
        .expect("valid");
        assert_eq!(a.name, "p");
        assert_eq!(a.tcp, [80, 8080]);
        assert_eq!(a.udp, [53]);
        assert_eq!(a.tcp_echo, [9000]);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(args(&["--tcp", "80"]).is_err());
        assert!(args(&["--name", "p"]).is_err());
        assert!(args(&["--name", "p", "--tcp", "x"]).is_err());
        assert!(args(&["--name", "p", "--tcp", "0"]).is_err());
        assert!(args(&["--name", "p", "--udp"]).is_err());
    }

    #[test]
    fn answer_format() {
        let peer: SocketAddr = "10.200.0.2:40001".parse().expect("valid");
        assert_eq!(
            answer("node1-pod1", peer, 8080),
            "node1-pod1 10.200.0.2:40001 8080\n"
        );
    }
}
