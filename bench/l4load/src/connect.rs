//! `l4load connect`: connections per second. N threads each loop: connect,
//! send the 64-byte request, read the 64-byte response, read EOF, close.
//!
//! The client closes only after EOF, so the far side closed first and the
//! client's socket never enters TIME_WAIT: over a 10 s run at tens of
//! thousands of connections per second, TIME_WAIT on the client would pin
//! its ~28k ephemeral ports and the run would measure port exhaustion. The
//! TIME_WAIT lands on the sink's (and the proxy's accepted) sockets, keyed by
//! a listening port, which costs no ephemeral port. SO_LINGER 0 would avoid it
//! too, but by resetting connections, which a load balancer may count (and
//! handle) as errors; a clean close is the case worth measuring.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::protocol::{REQUEST, RESPONSE};

pub struct Config {
    pub to: SocketAddr,
    pub workers: usize,
    pub duration: Duration,
}

/// Bounds every blocking call: a connection that takes longer is a failure.
const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// After a failure, so that a refusing address does not turn a worker into a
/// busy loop.
const FAILURE_PAUSE: Duration = Duration::from_millis(1);

#[derive(Default)]
struct Tally {
    /// Microseconds from connect to EOF, per completed connection.
    latencies: Vec<u32>,
    failures: u64,
    first_error: Option<String>,
}

pub fn run(config: Config) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(config.workers > 0, "--workers must be positive");
    let start = Instant::now();
    let deadline = start + config.duration;
    let workers: Vec<_> = (0..config.workers)
        .map(|_| {
            let to = config.to;
            thread::spawn(move || {
                let mut tally = Tally::default();
                while Instant::now() < deadline {
                    let began = Instant::now();
                    match exchange(to) {
                        Ok(()) => tally.latencies.push(began.elapsed().as_micros().min(u32::MAX as u128) as u32),
                        Err(err) => {
                            tally.failures += 1;
                            tally.first_error.get_or_insert_with(|| err.to_string());
                            thread::sleep(FAILURE_PAUSE);
                        }
                    }
                }
                tally
            })
        })
        .collect();
    let mut all = Tally::default();
    for worker in workers {
        let tally = worker.join().expect("connect worker panicked");
        all.latencies.extend(tally.latencies);
        all.failures += tally.failures;
        all.first_error = all.first_error.or(tally.first_error);
    }
    let seconds = start.elapsed().as_secs_f64();
    all.latencies.sort_unstable();
    let percentile_ms = |pct: usize| -> Option<f64> {
        let idx = (all.latencies.len() * pct / 100).min(all.latencies.len().checked_sub(1)?);
        Some(f64::from(all.latencies[idx]) / 1000.0)
    };
    Ok(json!({
        "mode": "connect",
        "workers": config.workers,
        "completed": all.latencies.len(),
        "failures": all.failures,
        "seconds": seconds,
        "conns_per_sec": all.latencies.len() as f64 / seconds,
        "p50_ms": percentile_ms(50),
        "p99_ms": percentile_ms(99),
        "first_error": all.first_error,
    }))
}

/// One short connection, start to clean close.
fn exchange(to: SocketAddr) -> io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&to, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(REQUEST)?;
    let mut response = [0u8; RESPONSE.len()];
    stream.read_exact(&mut response)?;
    if response != *RESPONSE {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected response"));
    }
    let mut rest = [0u8; 1];
    match stream.read(&mut rest)? {
        0 => Ok(()),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "bytes after the response")),
    }
}
