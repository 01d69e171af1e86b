//! `l4load stream`: throughput. N connections, one thread each, write a
//! buffer of zeros as fast as they can until the deadline. Each then
//! half-closes and waits for EOF: the sink closes when it has read everything,
//! so EOF means every byte sent was delivered (`drained` in the report).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

pub struct Config {
    pub to: SocketAddr,
    pub conns: usize,
    pub duration: Duration,
    /// Bytes handed to each `write`.
    pub block: usize,
}

/// Bounds every blocking call, so a stalled load balancer ends a run late
/// rather than never. Not shorter: on this loopback under load the kernel
/// retransmits segments (`nstat`: TcpRetransSegs in the hundreds per run,
/// through HAProxy and lbctl alike), and a lost retransmission
/// (TcpExtTCPLostRetransmit) backs the retransmission timer off, so one
/// write can wait seconds: with 2 s, about one lbctl run in ten failed so,
/// and HAProxy's runs showed the same retransmissions.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Outcome {
    bytes: u64,
    drained: bool,
    error: Option<String>,
}

pub fn run(config: Config) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(config.conns > 0 && config.block > 0, "--conns and --block must be positive");
    let start = Instant::now();
    let deadline = start + config.duration;
    let workers: Vec<_> = (0..config.conns)
        .map(|_| {
            let (to, block) = (config.to, config.block);
            thread::spawn(move || {
                let mut outcome = Outcome::default();
                let sent_at = match push(to, block, deadline, &mut outcome) {
                    Ok(sent_at) => sent_at,
                    Err(err) => {
                        outcome.error = Some(err.to_string());
                        Instant::now()
                    }
                };
                (outcome, sent_at)
            })
        })
        .collect();
    let mut bytes = 0;
    let mut drained = true;
    let mut errors = Vec::new();
    let mut last_sent_at = start;
    for worker in workers {
        let (outcome, sent_at) = worker.join().expect("stream worker panicked");
        bytes += outcome.bytes;
        drained &= outcome.drained;
        errors.extend(outcome.error);
        last_sent_at = last_sent_at.max(sent_at);
    }
    // Throughput counts the sending time only: what is still in flight at the
    // deadline is at most a few socket buffers, small beside gigabytes.
    let seconds = (last_sent_at - start).as_secs_f64();
    Ok(json!({
        "mode": "stream",
        "conns": config.conns,
        "block": config.block,
        "bytes": bytes,
        "seconds": seconds,
        "gb_per_sec": bytes as f64 / seconds / 1e9,
        "drained": drained && errors.is_empty(),
        "errors": errors.len(),
        "first_error": errors.first(),
    }))
}

/// Writes until the deadline, then drains; returns when the writing stopped.
fn push(to: SocketAddr, block: usize, deadline: Instant, outcome: &mut Outcome) -> std::io::Result<Instant> {
    let mut stream = TcpStream::connect_timeout(&to, IO_TIMEOUT)?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let buf = vec![0u8; block];
    while Instant::now() < deadline {
        outcome.bytes += stream.write(&buf)? as u64;
    }
    let sent_at = Instant::now();
    stream.shutdown(Shutdown::Write)?;
    stream.set_read_timeout(Some(DRAIN_TIMEOUT))?;
    let mut rest = [0u8; 64];
    outcome.drained = stream.read(&mut rest)? == 0;
    Ok(sent_at)
}
