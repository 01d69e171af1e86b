//! WebSockets (any HTTP/1.1 `Upgrade`) through an application load
//! balancer, as AWS's ALB passes them: the request goes to its target with
//! its `Upgrade` and `Connection: upgrade` kept, on a connection of its
//! own; a `101 Switching Protocols` answer goes back to the client, and
//! then bytes move both ways (`relay`) until either side closes or none
//! moves for the load balancer's idle timeout.
//!
//! Knows requests, upgraded connections and the target they count
//! against; choosing the target and logging the request are `forward`'s.

use std::time::Duration;

use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::upgrade::OnUpgrade;
use hyper::{HeaderMap, Request, Version};
use hyper_util::rt::TokioIo;

use super::relay::{self, CopyPump};
use super::selection::InFlight;

/// Whether `request` asks to switch protocols: HTTP/1.1 with `Upgrade`.
/// Requests read by `h1_server` never do (it hands them to hyper's
/// server): its bodiless requests are not even looked at.
pub(super) fn asks(request: &Request<super::client_body::UpstreamBody>) -> bool {
    matches!(request.body(), super::client_body::UpstreamBody::Client(_))
        && request.version() == Version::HTTP_11
        && request.headers().contains_key(UPGRADE)
}

/// Puts back the `Upgrade` (the client's) and `Connection: upgrade` that
/// removing the hop-by-hop headers took out: this hop is the one that
/// upgrades.
pub(super) fn keep_upgrade(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(UPGRADE, upgrade);
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
}

/// Once both connections are upgraded (the client's when hyper's server has
/// sent it the 101), moves bytes between them on a task of its own until
/// either closes, none moves for `idle`, or the target is deregistered
/// (drained, as a network load balancer's flows are). The tunnel counts as
/// a request in flight to its target while it lasts (`in_flight`), for
/// draining and `least_outstanding_requests` alike.
pub(super) fn spawn(client: OnUpgrade, target: OnUpgrade, idle: Duration, in_flight: InFlight) {
    tokio::spawn(async move {
        let (Ok(client), Ok(target)) = tokio::join!(client, target) else { return };
        let (client_read, client_write) = tokio::io::split(TokioIo::new(client));
        let (target_read, target_write) = tokio::io::split(TokioIo::new(target));
        let (mut up, mut down) = (CopyPump::new(client_read, target_write), CopyPump::new(target_read, client_write));
        let backend = in_flight.backend();
        relay::relay(&mut up, &mut down, idle, backend.retired()).await;
        drop(in_flight);
    });
}
