//! `l4load sink`: the target behind the load balancer under test. It speaks
//! the conventions of `protocol.rs`: discards streams until EOF, answers
//! short-connection requests, reports its counters.
//!
//! One thread and one `mio` event loop serve every connection. The sink shares
//! a core with the load generators, so it must cost little per connection: a
//! thread per connection would add a thread spawn to every short connection.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;

use anyhow::Context;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::protocol::{HEAD_LEN, REQUEST, RESPONSE, STAT};

const LISTENER: Token = Token(0);

/// Large reads keep the syscall count per stream byte low.
const READ_BUF_LEN: usize = 1 << 20;

pub fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut sink = Sink::default();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; READ_BUF_LEN];
    loop {
        if let Err(err) = poll.poll(&mut events, None) {
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err.into());
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                sink.accept(&listener, poll.registry());
            } else {
                sink.readable(event.token(), &mut buf);
            }
        }
    }
}

#[derive(Default)]
struct Sink {
    conns: HashMap<Token, Conn>,
    next_token: usize,
    /// Bytes received on stream connections, including their first bytes.
    stream_bytes: u64,
    /// Requests answered with [`RESPONSE`].
    answered: u64,
}

struct Conn {
    stream: TcpStream,
    kind: Kind,
    /// The first bytes, kept until they decide the kind (and, for a request,
    /// until the whole request is in).
    head: [u8; REQUEST.len()],
    head_len: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Undecided,
    Request,
    Stream,
}

/// What to do with a connection after its bytes are handled.
enum Next {
    Keep,
    Close,
}

impl Sink {
    fn accept(&mut self, listener: &TcpListener, registry: &mio::Registry) {
        loop {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    self.next_token += 1;
                    let token = Token(self.next_token);
                    if registry.register(&mut stream, token, Interest::READABLE).is_ok() {
                        self.conns.insert(
                            token,
                            Conn { stream, kind: Kind::Undecided, head: [0; REQUEST.len()], head_len: 0 },
                        );
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                // Out of descriptors or an aborted handshake: the client sees
                // it and counts a failure; the sink keeps serving.
                Err(err) => {
                    eprintln!("l4load sink: accept: {err}");
                    return;
                }
            }
        }
    }

    /// Reads until the socket would block (the event loop is edge-triggered).
    fn readable(&mut self, token: Token, buf: &mut [u8]) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        let next = loop {
            match conn.stream.read(buf) {
                Ok(0) => break Next::Close,
                Ok(n) => {
                    if let Next::Close = handle(conn, &buf[..n], &mut self.stream_bytes, &mut self.answered) {
                        break Next::Close;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break Next::Keep,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break Next::Close,
            }
        };
        if let Next::Close = next {
            // Dropping the stream closes it, which also removes it from epoll.
            self.conns.remove(&token);
        }
    }
}

fn handle(conn: &mut Conn, bytes: &[u8], stream_bytes: &mut u64, answered: &mut u64) -> Next {
    if conn.kind == Kind::Stream {
        *stream_bytes += bytes.len() as u64;
        return Next::Keep;
    }
    let take = bytes.len().min(conn.head.len() - conn.head_len);
    conn.head[conn.head_len..conn.head_len + take].copy_from_slice(&bytes[..take]);
    conn.head_len += take;
    if conn.kind == Kind::Undecided {
        if conn.head_len < HEAD_LEN {
            return Next::Keep;
        }
        let head = &conn.head[..HEAD_LEN];
        if head == STAT {
            let stat = format!("{{\"stream_bytes\":{stream_bytes},\"answered\":{answered}}}\n");
            let _ = conn.stream.write_all(stat.as_bytes());
            return Next::Close;
        }
        if head != &REQUEST[..HEAD_LEN] {
            conn.kind = Kind::Stream;
            *stream_bytes += (conn.head_len + bytes.len() - take) as u64;
            return Next::Keep;
        }
        conn.kind = Kind::Request;
    }
    if conn.head_len < REQUEST.len() {
        return Next::Keep;
    }
    // A fresh socket's send buffer always takes 64 bytes in one write.
    if conn.head == *REQUEST && matches!(conn.stream.write(RESPONSE), Ok(n) if n == RESPONSE.len()) {
        *answered += 1;
    }
    Next::Close
}
