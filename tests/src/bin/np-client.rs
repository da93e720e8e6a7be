//! `np-client tcp|udp ADDR PORT`: one request to a pod server, printing its
//! answer line. The test cluster runs it inside a pod (its network namespace
//! and its node's cgroup) to test traffic that starts in a pod.
//!
//! `np-client hold ADDR PORT`: holds many connections open, driven by
//! commands on stdin ([`nodeport_tests::hold`]).
//!
//! `np-client bind-tcp|bind-udp ADDR PORT`: binds a socket (and listens,
//! for TCP) and prints `bound`, or fails with `errno=N` on stderr (the
//! datapath's bind protection answers EADDRINUSE, 98).

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(2);

fn request(proto: &str, to: SocketAddr) -> std::io::Result<String> {
    if proto == "udp" {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        sock.set_read_timeout(Some(TIMEOUT))?;
        sock.connect(to)?;
        sock.send(b"hello\n")?;
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf)?;
        return Ok(String::from_utf8_lossy(&buf[..n]).trim_end().to_string());
    }
    // The pod server answers on accept, without reading.
    let stream = TcpStream::connect_timeout(&to, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim_end().to_string())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [proto, addr, port] = args.as_slice() else {
        eprintln!("usage: np-client tcp|udp|hold|bind-tcp|bind-udp ADDR PORT");
        return ExitCode::from(2);
    };
    let to: SocketAddr = match format!("{addr}:{port}").parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("np-client: bad address {addr}:{port}: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(kind) = proto.strip_prefix("bind-") {
        let bound = match kind {
            "tcp" => TcpListener::bind(to).map(drop),
            "udp" => UdpSocket::bind(to).map(drop),
            _ => {
                eprintln!("np-client: bind-tcp or bind-udp, not {proto}");
                return ExitCode::from(2);
            }
        };
        return match bound {
            Ok(()) => {
                println!("bound");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!(
                    "np-client: {proto} {to}: {e} errno={}",
                    e.raw_os_error().unwrap_or(0)
                );
                ExitCode::FAILURE
            }
        };
    }
    if proto == "hold" {
        let stdin = std::io::stdin().lock();
        return match nodeport_tests::hold::serve(to, stdin, std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("np-client: hold {to}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match request(proto, to) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("np-client: {proto} {to}: {e}");
            ExitCode::FAILURE
        }
    }
}
