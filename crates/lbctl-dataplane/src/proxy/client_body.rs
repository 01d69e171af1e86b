//! A client's request body on its way to a target, watched, so that the
//! wait for the target's answer follows AWS's idle timeout: the time
//! without data, not the time since the request was sent. An upload that
//! keeps sending takes as long as it takes; one that stops for the idle
//! timeout gets 408 (the client sent nothing), and a target that has the
//! whole body and stays silent for it gets 504.
//!
//! Knows bodies and clocks; what a timeout answers is `forward`'s.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Instant;

/// The body of a request forwarded to a target: the client's, as hyper's
/// server reads it; the client's, watched (`watch`); or none (a bodiless
/// request of `h1_server`'s, or one sent again to another target by
/// `retry`). A watched body is boxed, so that every request's body stays
/// the size of hyper's: requests are moved whole, and a few bytes more on
/// each cost more copying on every request.
pub enum UpstreamBody {
    Client(Incoming),
    Watched(Box<Watched>),
    Empty,
}

/// A client's body, with what `Progress` tells of it.
pub struct Watched {
    body: Incoming,
    progress: Arc<Progress>,
}

/// Watches a request's body from now on, when it is the client's with
/// more to come (a bodiless request costs nothing more).
pub fn watch(body: &mut UpstreamBody) -> Option<Arc<Progress>> {
    match std::mem::replace(body, UpstreamBody::Empty) {
        UpstreamBody::Client(client) if !client.is_end_stream() => {
            let progress =
                Arc::new(Progress { since: Instant::now(), last_ms: AtomicU64::new(0), state: AtomicU8::new(0) });
            *body = UpstreamBody::Watched(Box::new(Watched { body: client, progress: progress.clone() }));
            Some(progress)
        }
        other => {
            *body = other;
            None
        }
    }
}

/// Where a watched body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    /// Its last data went on, and nothing more was asked of it yet: the
    /// target is not reading.
    Flowing,
    /// More was asked of the client, which has not sent it.
    WaitingOnClient,
    /// All of it went on.
    Ended,
}

/// How a watched body fares: when it last gave data or began to wait for
/// the client, and where it is.
pub struct Progress {
    since: Instant,
    /// Milliseconds from `since` to the last data (or the end), or to when
    /// the client began to be waited on, whichever came last.
    last_ms: AtomicU64,
    /// `BodyState` as a number.
    state: AtomicU8,
}

impl Progress {
    /// When the client last gave data or began to be waited on (or the
    /// watch started): a body the target stopped reading for a while is
    /// the client's to send only from when it is asked for more.
    fn last_data(&self) -> Instant {
        self.since + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    fn state(&self) -> BodyState {
        match self.state.load(Ordering::Relaxed) {
            1 => BodyState::WaitingOnClient,
            2 => BodyState::Ended,
            _ => BodyState::Flowing,
        }
    }

    /// The body is in `state` now: its time is noted when data came, and
    /// when waiting on the client began.
    fn note(&self, state: BodyState) {
        let began_waiting = state == BodyState::WaitingOnClient && self.state() != BodyState::WaitingOnClient;
        if state != BodyState::WaitingOnClient || began_waiting {
            let ms = Instant::now().saturating_duration_since(self.since).as_millis() as u64;
            self.last_ms.store(ms, Ordering::Relaxed);
        }
        self.state.store(state as u8, Ordering::Relaxed);
    }
}

impl Body for Watched {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Pending => self.progress.note(BodyState::WaitingOnClient),
            Poll::Ready(Some(Ok(_))) if !self.body.is_end_stream() => self.progress.note(BodyState::Flowing),
            Poll::Ready(_) => self.progress.note(BodyState::Ended),
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.get_mut() {
            UpstreamBody::Client(body) => Pin::new(body).poll_frame(cx),
            UpstreamBody::Watched(body) => Pin::new(&mut **body).poll_frame(cx),
            UpstreamBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Client(body) => body.is_end_stream(),
            UpstreamBody::Watched(body) => body.is_end_stream(),
            UpstreamBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Client(body) => body.size_hint(),
            UpstreamBody::Watched(body) => body.size_hint(),
            UpstreamBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// Why no answer came in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silent {
    /// The target had what it needed and sent nothing for the idle timeout.
    Target,
    /// The client's body stopped for the idle timeout, with more to come.
    Client,
}

/// `answer` (the target's), given until the idle timeout passes without
/// data: from `sent`, or from the body's last data while it is watched.
pub async fn within_idle<F: std::future::Future>(
    answer: F,
    sent: Instant,
    idle_timeout: Duration,
    progress: Option<&Progress>,
) -> Result<F::Output, Silent> {
    tokio::select! {
        biased;
        answered = answer => Ok(answered),
        silent = quiet(progress, sent, idle_timeout) => Err(silent),
    }
}

/// `work` (which reads the body `progress` watches, if any), unless the
/// client stops sending that body for `idle_timeout` first. How long the
/// work itself may take is its own (a function's timeout).
pub async fn unless_stalled<F: std::future::Future>(
    work: F,
    progress: Option<Arc<Progress>>,
    idle_timeout: Duration,
) -> Result<F::Output, Silent> {
    let Some(progress) = progress else { return Ok(work.await) };
    let stalled = async {
        loop {
            if quiet(Some(&progress), progress.since, idle_timeout).await == Silent::Client {
                return;
            }
            match progress.state() {
                BodyState::Ended => std::future::pending::<()>().await,
                // Not asked for more since its last data: look again soon.
                _ => tokio::time::sleep(idle_timeout / 4).await,
            }
        }
    };
    tokio::select! {
        done = work => Ok(done),
        () = stalled => Err(Silent::Client),
    }
}

/// Completes once `idle_timeout` has passed without data since `from` and
/// since the watched body's last data (or its wait on the client began),
/// telling who was silent: the client when its body was waited on, else
/// the target.
async fn quiet(progress: Option<&Progress>, from: Instant, idle_timeout: Duration) -> Silent {
    loop {
        let due = progress.map_or(from, |it| it.last_data().max(from)) + idle_timeout;
        if due <= Instant::now() {
            break;
        }
        tokio::time::sleep_until(due).await;
    }
    match progress.map(Progress::state) {
        Some(BodyState::WaitingOnClient) => Silent::Client,
        _ => Silent::Target,
    }
}

#[cfg(test)]
mod tests {
    /// Every request's body is moved with it: watching must not make it
    /// larger than hyper's own body.
    #[test]
    fn a_body_is_the_size_of_hypers() {
        assert_eq!(std::mem::size_of::<super::UpstreamBody>(), std::mem::size_of::<hyper::body::Incoming>());
    }
}
