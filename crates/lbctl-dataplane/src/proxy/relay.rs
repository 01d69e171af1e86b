//! Moving bytes both ways between a client connection and a target
//! connection, for network load balancers.
//!
//! Plain TCP on both sides: small reads (an exchange of messages) are copied
//! through one buffer per thread and sent on at once; once a read fills that
//! buffer the direction is a stream, and its bytes go socket -> pipe ->
//! socket with `splice(2)`, inside the kernel, never copied to user space
//! (HAProxy's `option splice-auto`). Pipes come from a per-thread pool and go
//! back to it empty, so a stream costs no `pipe2`/`close` calls once the pool
//! is warm; a stream's pipe holds 256 KiB (up to a bounded number of them);
//! an idle connection holds neither a buffer nor pipe pages. A TLS client
//! connection is relayed through a small buffer per direction instead, as
//! its bytes must be decrypted in user space.
//!
//! When a copied read finds the peer's FIN already queued behind the bytes
//! (read-closed readiness and a read short of the buffer), the end of stream
//! is known without reading it, and the bytes are sent with `MSG_MORE` so
//! that they and the FIN of the half-close leave in one segment.
//!
//! A relay ends when both directions have seen end of stream (a half-close
//! is passed on as a half-close), on an error, when no byte has moved either
//! way for the idle timeout, or when `stop` resolves (its target drained).
//! Every step awaits readiness and keeps its progress in its pump, so the
//! relay loop can drop a step at any await without losing bytes.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A default pipe's capacity.
const PIPE_SIZE: usize = 64 * 1024;
/// The capacity a stream's pipe is grown to: fewer, larger splices and
/// wake-ups per byte on a long stream (in `make bench`, one stream 1.53 ->
/// 1.92 GB/s, CPU per GB 0.64 -> 0.40 s).
const STREAM_PIPE_SIZE: usize = 256 * 1024;
/// Grown pipes a proxy holds at most (16 MiB of pipe capacity): the kernel
/// counts pipe capacity against the user's `pipe-user-pages-soft` (64 MiB
/// by default) and, past it, gives every new pipe of the user two pages.
/// Further streams use default-sized pipes.
const MAX_GROWN_PIPES: usize = 64;
/// Grown pipes alive in this process.
static GROWN_PIPES: AtomicUsize = AtomicUsize::new(0);
/// Empty pipes kept per thread for the next connections.
const POOLED_PIPES: usize = 128;
/// The buffer of each direction of a TLS relay (one TLS record), and the
/// thread's copy buffer of plain relays: a read that fills it starts splicing.
const COPY_BUFFER_SIZE: usize = 16 * 1024;

/// Why a relay ended, for the caller's log and counters.
#[derive(Debug)]
pub enum Ended {
    /// Both directions finished.
    Closed,
    /// No byte moved either way for the idle timeout.
    Idle,
    /// `stop` resolved.
    Stopped,
    /// A socket failed (a reset, typically: nothing to report).
    Failed,
}

/// One direction of a relay.
pub trait Pump {
    /// Moves the next bytes (or passes on the end of stream).
    fn step(&mut self) -> impl Future<Output = io::Result<()>> + Send;
    /// Whether the end of stream has been passed on.
    fn finished(&self) -> bool;
    /// Bytes read from its source so far.
    fn moved(&self) -> u64;
}

/// Relays with `up` (client to target) and `down` (target to client) until
/// both finish, one fails, the connection is idle for `idle`, or `stop`
/// resolves.
pub async fn relay(up: &mut impl Pump, down: &mut impl Pump, idle: Duration, stop: impl Future<Output = ()>) -> Ended {
    let mut last_moved = Instant::now();
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer, stop);
    loop {
        if up.finished() && down.finished() {
            return Ended::Closed;
        }
        // Unbiased: the branches are polled in a random order each time, so
        // a direction that is always ready does not starve the other.
        tokio::select! {
            () = &mut stop => return Ended::Stopped,
            result = up.step(), if !up.finished() => match result {
                Ok(()) => last_moved = Instant::now(),
                Err(_) => return Ended::Failed,
            },
            result = down.step(), if !down.finished() => match result {
                Ok(()) => last_moved = Instant::now(),
                Err(_) => return Ended::Failed,
            },
            // The timer is re-armed from the last move instead of on every
            // move: one timer update per idle period, not per chunk.
            () = &mut idle_timer => {
                let deadline = last_moved + idle;
                if deadline <= Instant::now() {
                    return Ended::Idle;
                }
                idle_timer.as_mut().reset(deadline);
            }
        }
    }
}

/// A pipe: the kernel buffer `splice` moves pages through.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes it holds at most.
    size: usize,
}

impl Drop for Pipe {
    fn drop(&mut self) {
        if self.size != PIPE_SIZE {
            GROWN_PIPES.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

thread_local! {
    static PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

impl Pipe {
    /// An empty pipe, from the pool when it has one.
    fn take() -> io::Result<Pipe> {
        if let Some(pipe) = PIPES.with_borrow_mut(Vec::pop) {
            return Ok(pipe);
        }
        let mut fds: [RawFd; 2] = [-1; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are new and ours alone.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut pipe = Pipe { read, write, size: PIPE_SIZE };
        if GROWN_PIPES.fetch_add(1, Ordering::Relaxed) < MAX_GROWN_PIPES {
            // SAFETY: F_SETPIPE_SZ on our own pipe; a refusal (the user's
            // pipe pages at their limit) leaves it at the default size.
            let size =
                unsafe { libc::fcntl(pipe.write.as_raw_fd(), libc::F_SETPIPE_SZ, STREAM_PIPE_SIZE as libc::c_int) };
            if size > 0 {
                pipe.size = size as usize;
            }
        }
        if pipe.size == PIPE_SIZE {
            GROWN_PIPES.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(pipe)
    }

    /// Returns an empty pipe to the pool (or closes it when the pool is full).
    fn give_back(self) {
        PIPES.with_borrow_mut(|pool| {
            if pool.len() < POOLED_PIPES {
                pool.push(self);
            }
        });
    }
}

/// `splice(2)` of up to `len` bytes from `from` to `to`, without blocking.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain descriptors and no offsets (sockets and pipes have none).
    let moved = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if moved < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(moved as usize)
    }
}

/// Closes the write side of a socket: the peer reads end of stream.
fn shutdown_write(socket: &TcpStream) {
    // SAFETY: a live socket descriptor; a failure (already closed) is harmless.
    unsafe { libc::shutdown(socket.as_raw_fd(), libc::SHUT_WR) };
}

/// One direction between two plain TCP sockets: small reads are copied
/// through the thread's buffer, and once a read fills it (a stream, not an
/// exchange of messages) the bytes go through a pipe with `splice`.
pub struct SplicePump<'a> {
    from: &'a TcpStream,
    to: &'a TcpStream,
    /// Taken on the first streaming read, given back empty.
    pipe: Option<Pipe>,
    /// Bytes in the pipe not yet written to `to`.
    pending: usize,
    /// Copied bytes `to` had no room for yet (rare: its buffer was full).
    held: Vec<u8>,
    /// A read filled the copy buffer: splice from now on.
    streaming: bool,
    /// The end of `from`'s stream was read: passed on once `held` is out.
    read_end: bool,
    finished: bool,
    /// Bytes read from `from`.
    moved: u64,
    /// Shared by the two directions: whether one has ended already.
    one_ended: &'a AtomicBool,
}

thread_local! {
    /// What small reads are copied through, shared by the thread's relays.
    static COPY_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0; COPY_BUFFER_SIZE].into_boxed_slice());
}

/// `recv(2)` without blocking.
fn recv(from: RawFd, buffer: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buffer` is valid for writes of its length.
    let read = unsafe { libc::recv(from, buffer.as_mut_ptr().cast(), buffer.len(), 0) };
    if read < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(read as usize)
    }
}

/// `send(2)` without blocking; 0 when the socket has no room (EAGAIN).
/// `more`: the write side is shut down next, so the bytes may wait for the
/// FIN and leave in one segment with it (`MSG_MORE`).
fn send(to: RawFd, bytes: &[u8], more: bool) -> io::Result<usize> {
    let flags = libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    // SAFETY: `bytes` is valid for reads of its length.
    let sent = unsafe { libc::send(to, bytes.as_ptr().cast(), bytes.len(), flags) };
    if sent >= 0 {
        return Ok(sent as usize);
    }
    let err = io::Error::last_os_error();
    if err.kind() == io::ErrorKind::WouldBlock {
        Ok(0)
    } else {
        Err(err)
    }
}

impl<'a> SplicePump<'a> {
    /// Both directions between `a` and `b` (`a` to `b` first); `ended`
    /// is theirs to share, false.
    pub fn pair(a: &'a TcpStream, b: &'a TcpStream, ended: &'a AtomicBool) -> (SplicePump<'a>, SplicePump<'a>) {
        let pump = |from, to| SplicePump {
            from,
            to,
            pipe: None,
            pending: 0,
            held: Vec::new(),
            streaming: false,
            read_end: false,
            finished: false,
            moved: 0,
            one_ended: ended,
        };
        (pump(a, b), pump(b, a))
    }

    /// The end of stream: passed on as a half-close, unless the other
    /// direction has ended too (the relay is over, and closing the sockets
    /// sends both FINs).
    fn end(&mut self) {
        if !self.one_ended.swap(true, Ordering::Relaxed) {
            shutdown_write(self.to);
        }
        self.finished = true;
    }

    /// Reads what `from` has into the copy buffer and sends it on at once,
    /// holding what `to` has no room for; the bytes read (0: end of stream).
    /// Sets `read_end` when the stream ended, even with bytes read.
    async fn copy(&mut self) -> io::Result<usize> {
        let (from, to) = (self.from.as_raw_fd(), self.to.as_raw_fd());
        // Whether the write side of `to` is shut down when this direction
        // ends (the other has not ended yet).
        let shuts_down = !self.one_ended.load(Ordering::Relaxed);
        let (held, read_end) = (&mut self.held, &mut self.read_end);
        loop {
            let ready = self.from.ready(Interest::READABLE).await?;
            // The peer's FIN (or reset) came before this readiness, so every
            // byte it sent is queued before it: a read short of the buffer
            // takes them all, and the end of stream is known without one
            // more `recv` (which returns 0, or the reset: either way the
            // peer sends nothing more, and the FIN passed on is what closing
            // the socket after a failure sends too).
            let fin_queued = ready.is_read_closed();
            let mut copied = None;
            let result = self.from.try_io(Interest::READABLE, || {
                COPY_BUFFER.with_borrow_mut(|buffer| {
                    let read = recv(from, buffer)?;
                    *read_end = read == 0 || (fin_queued && read < buffer.len());
                    if read > 0 {
                        // Written without waiting for `to`'s readiness: a
                        // fresh socket's is not known yet. Before a shutdown
                        // the last bytes and the FIN go as one segment.
                        let sent = send(to, &buffer[..read], *read_end && shuts_down)?;
                        held.extend_from_slice(&buffer[sent..read]);
                    }
                    copied = Some(read);
                    // A TCP `recv` short of the buffer emptied the receive
                    // queue: saying "would block" clears the readiness now,
                    // instead of with one more `recv` that finds nothing.
                    // (Bytes that arrived since are a new readiness event,
                    // which tokio does not clear.)
                    if read > 0 && read < buffer.len() {
                        Err(io::ErrorKind::WouldBlock.into())
                    } else {
                        Ok(read)
                    }
                })
            });
            match (result, copied) {
                (Ok(read), _) => return Ok(read),
                (Err(err), Some(read)) if err.kind() == io::ErrorKind::WouldBlock => return Ok(read),
                (Err(err), _) if err.kind() == io::ErrorKind::WouldBlock => continue,
                (Err(err), _) => return Err(err),
            }
        }
    }

    /// Writes the held bytes out, then passes on an end of stream read.
    async fn flush_held(&mut self) -> io::Result<()> {
        let to = self.to.as_raw_fd();
        while !self.held.is_empty() {
            self.to.writable().await?;
            let held = &self.held;
            match self.to.try_io(Interest::WRITABLE, || match send(to, held, false)? {
                0 => Err(io::ErrorKind::WouldBlock.into()),
                sent => Ok(sent),
            }) {
                Ok(sent) => drop(self.held.drain(..sent)),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Err(err),
            }
        }
        // Back to holding nothing.
        self.held = Vec::new();
        if self.read_end {
            self.end();
        }
        Ok(())
    }

    /// Splices what `from` has into the pipe; the bytes moved (0: end of stream).
    async fn splice_in(&mut self) -> io::Result<usize> {
        if self.pipe.is_none() {
            self.pipe = Some(Pipe::take()?);
        }
        let (into, size) = self.pipe.as_ref().map(|it| (it.write.as_raw_fd(), it.size)).expect("taken above");
        let from = self.from.as_raw_fd();
        loop {
            self.from.readable().await?;
            match self.from.try_io(Interest::READABLE, || splice(from, into, size)) {
                Ok(moved) => return Ok(moved),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Err(err),
            }
        }
    }

    /// Writes the pipe's bytes out.
    async fn flush_pipe(&mut self) -> io::Result<()> {
        let out = self.pipe.as_ref().map(|it| it.read.as_raw_fd()).expect("holds the pending bytes");
        let to = self.to.as_raw_fd();
        while self.pending > 0 {
            self.to.writable().await?;
            let pending = self.pending;
            match self.to.try_io(Interest::WRITABLE, || splice(out, to, pending)) {
                Ok(moved) => self.pending -= moved,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}

impl Pump for SplicePump<'_> {
    async fn step(&mut self) -> io::Result<()> {
        if !self.held.is_empty() {
            return self.flush_held().await;
        }
        if self.pending > 0 {
            return self.flush_pipe().await;
        }
        if !self.streaming {
            let read = self.copy().await?;
            self.moved += read as u64;
            if read == COPY_BUFFER_SIZE {
                self.streaming = true;
            }
            return self.flush_held().await;
        }
        match self.splice_in().await? {
            0 => self.end(),
            moved => {
                self.pending = moved;
                self.moved += moved as u64;
            }
        }
        self.flush_pipe().await
    }

    fn finished(&self) -> bool {
        self.finished
    }

    fn moved(&self) -> u64 {
        self.moved
    }
}

impl Drop for SplicePump<'_> {
    fn drop(&mut self) {
        // A pipe still holding bytes of a broken connection is closed instead.
        if let Some(pipe) = self.pipe.take().filter(|_| self.pending == 0) {
            pipe.give_back();
        }
    }
}

/// One direction through a buffer, for streams `splice` cannot reach into
/// (TLS).
pub struct CopyPump<R, W> {
    from: R,
    to: W,
    buffer: Box<[u8]>,
    start: usize,
    end: usize,
    /// Written bytes `to` may still buffer (TLS records not sent yet):
    /// flushed before anything else, even after a step was dropped.
    unflushed: bool,
    /// The end of stream was read; `to` is being shut down.
    ending: bool,
    finished: bool,
    moved: u64,
}

impl<R, W> CopyPump<R, W> {
    /// Bytes from `from` to `to`.
    pub fn new(from: R, to: W) -> CopyPump<R, W> {
        CopyPump {
            from,
            to,
            buffer: vec![0; COPY_BUFFER_SIZE].into_boxed_slice(),
            start: 0,
            end: 0,
            unflushed: false,
            ending: false,
            finished: false,
            moved: 0,
        }
    }
}

impl<R, W> Pump for CopyPump<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    // Every await below may be dropped by the relay's `select!`: progress is
    // kept in the fields (bytes written, flush owed, shutdown begun), and
    // the next step resumes from them.
    async fn step(&mut self) -> io::Result<()> {
        if self.ending {
            self.to.shutdown().await?;
            self.finished = true;
            return Ok(());
        }
        if self.start == self.end && !self.unflushed {
            let read = self.from.read(&mut self.buffer).await?;
            self.moved += read as u64;
            if read == 0 {
                self.ending = true;
                self.to.shutdown().await?;
                self.finished = true;
                return Ok(());
            }
            (self.start, self.end) = (0, read);
        }
        while self.start < self.end {
            let written = self.to.write(&self.buffer[self.start..self.end]).await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.start += written;
            self.unflushed = true;
        }
        self.to.flush().await?;
        self.unflushed = false;
        Ok(())
    }

    fn finished(&self) -> bool {
        self.finished
    }

    fn moved(&self) -> u64 {
        self.moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A connected pair of loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[test]
    fn a_stream_pipe_is_grown_and_says_its_size() {
        let pipe = Pipe::take().unwrap();
        // SAFETY: F_GETPIPE_SZ on a pipe this test owns.
        let actual = unsafe { libc::fcntl(pipe.write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        assert_eq!(actual as usize, pipe.size);
        assert!(
            pipe.size == STREAM_PIPE_SIZE || GROWN_PIPES.load(Ordering::Relaxed) >= MAX_GROWN_PIPES,
            "{}",
            pipe.size
        );
    }

    /// client <-> (a | relay | b) <-> target: bytes both ways, then
    /// half-closes passed on, and the relay ends `Closed`.
    #[tokio::test]
    async fn splice_relay_moves_bytes_and_half_closes() {
        let (mut client, a) = pair().await;
        let (b, mut target) = pair().await;
        let relay = tokio::spawn(async move {
            let ended = AtomicBool::new(false);
            let (mut up, mut down) = SplicePump::pair(&a, &b, &ended);
            let ended = relay(&mut up, &mut down, Duration::from_secs(5), std::future::pending()).await;
            (ended, up.moved(), down.moved())
        });
        let payload: Vec<u8> = (0..3_000_000u32).map(|it| it as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.unwrap();
            answer
        });
        let mut received = Vec::new();
        target.read_to_end(&mut received).await.unwrap();
        assert!(received == payload, "{} bytes of {} arrived intact", received.len(), payload.len());
        target.write_all(b"bye").await.unwrap();
        target.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"bye");
        let (ended, up, down) = relay.await.unwrap();
        assert!(matches!(ended, Ended::Closed));
        assert_eq!((up, down), (3_000_000, 3), "bytes counted each way");
    }

    /// A target's answer and FIN already queued when the relay first reads
    /// them (the end of stream known from the readiness, without reading
    /// it): the client gets both, then still sends, and the target gets that.
    #[tokio::test]
    async fn an_answer_with_its_fin_queued_is_passed_on_as_a_half_close() {
        let (mut client, a) = pair().await;
        let (b, mut target) = pair().await;
        target.write_all(b"answer").await.unwrap();
        target.shutdown().await.unwrap();
        // The FIN is in `b`'s receive queue once `b` reports it.
        while !b.ready(Interest::READABLE).await.unwrap().is_read_closed() {
            tokio::task::yield_now().await;
        }
        let relay = tokio::spawn(async move {
            let ended = AtomicBool::new(false);
            let (mut up, mut down) = SplicePump::pair(&a, &b, &ended);
            let ended = relay(&mut up, &mut down, Duration::from_secs(5), std::future::pending()).await;
            (ended, up.moved(), down.moved())
        });
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"answer");
        client.write_all(b"after the end").await.unwrap();
        client.shutdown().await.unwrap();
        let mut received = Vec::new();
        target.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, b"after the end");
        let (ended, up, down) = relay.await.unwrap();
        assert!(matches!(ended, Ended::Closed), "{ended:?}");
        assert_eq!((up, down), (13, 6));
    }

    #[tokio::test]
    async fn idle_connections_and_stopped_targets_end_the_relay() {
        let (_client, a) = pair().await;
        let (b, _target) = pair().await;
        let started = Instant::now();
        let flag = AtomicBool::new(false);
        let (mut up, mut down) = SplicePump::pair(&a, &b, &flag);
        let ended = relay(&mut up, &mut down, Duration::from_millis(200), std::future::pending()).await;
        assert!(matches!(ended, Ended::Idle), "{ended:?}");
        assert!(started.elapsed() >= Duration::from_millis(200));

        drop((up, down));
        let (mut up, mut down) = SplicePump::pair(&a, &b, &flag);
        let ended = relay(&mut up, &mut down, Duration::from_secs(60), async {}).await;
        assert!(matches!(ended, Ended::Stopped), "{ended:?}");
    }

    #[tokio::test]
    async fn copy_relay_moves_bytes() {
        let (mut client, a) = pair().await;
        let (b, mut target) = pair().await;
        let relay = tokio::spawn(async move {
            let (a_read, a_write) = a.into_split();
            let (b_read, b_write) = b.into_split();
            let (mut up, mut down) = (CopyPump::new(a_read, b_write), CopyPump::new(b_read, a_write));
            let ended = relay(&mut up, &mut down, Duration::from_secs(5), std::future::pending()).await;
            assert_eq!((up.moved(), down.moved()), (4, 4), "bytes counted each way");
            ended
        });
        client.write_all(b"ping").await.unwrap();
        client.shutdown().await.unwrap();
        let mut received = Vec::new();
        target.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, b"ping");
        target.write_all(b"pong").await.unwrap();
        drop(target);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"pong");
        assert!(matches!(relay.await.unwrap(), Ended::Closed));
    }
}
