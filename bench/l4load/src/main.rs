//! `l4load`: the load generator and sink of the network load balancer part of
//! `make bench` (`bench/bench.py`). Three subcommands, each a small module:
//!
//! - `sink` (`sink.rs`): the target behind the load balancer;
//! - `stream` (`stream.rs`): a few long connections pushing bytes (throughput);
//! - `connect` (`connect.rs`): many short connections (connections per second).
//!
//! The wire conventions they share live in `protocol.rs`. Every load loop is
//! bounded in time and ends by itself; results are one JSON line on stdout.
//! Sizes are decimal: 1 GB = 1e9 bytes.

mod connect;
mod protocol;
mod sink;
mod stream;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "l4load", about = "TCP load generator and sink for benchmarking network load balancers")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Accept connections: discard a stream until EOF, answer a request, or report counters.
    Sink {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// N connections each writing as fast as possible for S seconds; prints bytes and GB/s.
    Stream {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 4)]
        conns: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Bytes handed to each `write`.
        #[arg(long, default_value_t = 256 * 1024)]
        block: usize,
    },
    /// N threads each looping connect, request, response, close for S seconds; prints connections/s.
    Connect {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 32)]
        workers: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("l4load: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let report = match args.command {
        Command::Sink { listen } => return sink::run(listen),
        Command::Stream { to, conns, seconds, block } => {
            stream::run(stream::Config { to, conns, duration: Duration::from_secs_f64(seconds), block })?
        }
        Command::Connect { to, workers, seconds } => {
            connect::run(connect::Config { to, workers, duration: Duration::from_secs_f64(seconds) })?
        }
    };
    println!("{report}");
    Ok(())
}
