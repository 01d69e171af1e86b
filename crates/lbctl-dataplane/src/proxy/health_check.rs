//! Target health checks: the probes and the per-target state machine.
//!
//! A probe is an HTTP GET of the check path (the status must satisfy the
//! matcher) or a TCP connect, within the check's timeout. Its outcomes feed a
//! `Tracker`, which flips a target's state only after enough agreeing
//! results in a row: `healthy_threshold` successes to become healthy,
//! `unhealthy_threshold` failures to become unhealthy, as AWS does.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use lbctl_spec::{HealthCheckPort, HealthCheckProtocol, TargetProtocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::runtime::HealthState;

/// Reason of a target that has not been checked enough yet.
pub const REASON_INITIAL: &str = "Elb.RegistrationInProgress: target registration is in progress";
/// Reason of a deregistered target finishing its requests.
pub const REASON_DRAINING: &str = "Target.DeregistrationInProgress: target deregistration is in progress";

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// GET `path`; success when the status is in one of the ranges.
    Http {
        /// Path (and query) to request.
        path: String,
        /// Inclusive status code ranges counted as success.
        matcher: Vec<(u16, u16)>,
    },
    /// Connect; success when the connection is accepted.
    Tcp,
}

/// A target group's health check settings, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// The probe.
    pub probe: Probe,
    /// A fixed port, or `None` for the target's traffic port.
    pub port: Option<u16>,
    /// Time between probes.
    pub interval: Duration,
    /// Time a probe may take.
    pub timeout: Duration,
    /// Consecutive successes to become healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures to become unhealthy.
    pub unhealthy_threshold: u32,
}

impl HealthCheck {
    /// The health check of a target group. The protocol defaults to HTTP for
    /// HTTP(S) groups and TCP for TCP/UDP ones. HTTPS checks are made as TCP
    /// checks until the proxy speaks TLS to targets.
    pub fn of(group: &lbctl_spec::TargetGroup) -> HealthCheck {
        let settings = &group.health_check;
        let protocol = settings.protocol.unwrap_or(match group.protocol {
            TargetProtocol::Http | TargetProtocol::Https => HealthCheckProtocol::Http,
            TargetProtocol::Tcp | TargetProtocol::Udp => HealthCheckProtocol::Tcp,
        });
        let probe = match protocol {
            HealthCheckProtocol::Http => Probe::Http {
                path: if settings.path.starts_with('/') {
                    settings.path.clone()
                } else {
                    format!("/{}", settings.path)
                },
                // Validation rejects a bad matcher; should one get here, AWS's default applies.
                matcher: lbctl_spec::parse_matcher(&settings.matcher).unwrap_or_else(|_| vec![(200, 200)]),
            },
            HealthCheckProtocol::Https | HealthCheckProtocol::Tcp => Probe::Tcp,
        };
        HealthCheck {
            probe,
            port: match settings.port {
                HealthCheckPort::Number(port) => Some(port),
                HealthCheckPort::Named(_) => None,
            },
            interval: settings.interval.get().max(Duration::from_millis(10)),
            timeout: settings.timeout.get().max(Duration::from_millis(1)),
            healthy_threshold: settings.healthy_threshold.max(1),
            unhealthy_threshold: settings.unhealthy_threshold.max(1),
        }
    }
}

/// The result of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The target passed.
    Pass,
    /// The target failed, with an AWS-style reason.
    Fail(String),
}

/// Probes the target at `ip` (traffic port `port`) once.
pub async fn probe(check: &HealthCheck, ip: Ipv4Addr, port: u16) -> Outcome {
    let addr = SocketAddr::from((ip, check.port.unwrap_or(port)));
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|err| failed(&err))?;
        match &check.probe {
            Probe::Tcp => Ok(()),
            Probe::Http { path, matcher } => {
                let status = http_status(&mut stream, addr, path).await?;
                if matcher.iter().any(|(low, high)| (*low..=*high).contains(&status)) {
                    Ok(())
                } else {
                    Err(format!("Target.ResponseCodeMismatch: health check returned {status}"))
                }
            }
        }
    };
    match tokio::time::timeout(check.timeout, attempt).await {
        Ok(Ok(())) => Outcome::Pass,
        Ok(Err(reason)) => Outcome::Fail(reason),
        Err(_) => Outcome::Fail(format!(
            "Target.Timeout: health check timed out after {}",
            lbctl_spec::Duration(check.timeout)
        )),
    }
}

/// The reason of a probe that failed with an I/O error.
fn failed(err: &std::io::Error) -> String {
    let what = match err.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
        std::io::ErrorKind::ConnectionReset => "connection reset".to_string(),
        _ => err.to_string(),
    };
    format!("Target.FailedHealthChecks: {what}")
}

/// Sends the check request and reads the status code of the answer.
async fn http_status(stream: &mut TcpStream, addr: SocketAddr, path: &str) -> Result<u16, String> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: ELB-HealthChecker/2.0\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(|err| failed(&err))?;
    let mut head = [0u8; 64];
    let mut len = 0;
    // `HTTP/1.1 200` is 12 bytes; read until the status code is in.
    while len < 12 {
        match stream.read(&mut head[len..]).await {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(err) => return Err(failed(&err)),
        }
    }
    parse_status(&head[..len])
        .ok_or_else(|| "Target.FailedHealthChecks: the target did not answer with HTTP".to_string())
}

/// The status code of an HTTP/1 status line.
fn parse_status(head: &[u8]) -> Option<u16> {
    let rest = head.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// One target's health: its state, the reason, and the current run of
/// agreeing results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    state: HealthState,
    reason: String,
    successes: u32,
    failures: u32,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker { state: HealthState::Initial, reason: REASON_INITIAL.to_string(), successes: 0, failures: 0 }
    }
}

/// What recording a probe outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing visible.
    None,
    /// The reason changed, not the state.
    Reason,
    /// The state flipped.
    State,
}

impl Tracker {
    /// The current state.
    pub fn state(&self) -> HealthState {
        self.state
    }

    /// The current reason (empty while healthy).
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Records a probe outcome and applies the thresholds.
    pub fn record(&mut self, outcome: &Outcome, check: &HealthCheck) -> Change {
        match outcome {
            Outcome::Pass => {
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                if self.state != HealthState::Healthy && self.successes >= check.healthy_threshold {
                    self.state = HealthState::Healthy;
                    self.reason.clear();
                    return Change::State;
                }
                Change::None
            }
            Outcome::Fail(reason) => {
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                match self.state {
                    HealthState::Unhealthy if self.reason != *reason => {
                        self.reason.clone_from(reason);
                        Change::Reason
                    }
                    HealthState::Initial | HealthState::Healthy if self.failures >= check.unhealthy_threshold => {
                        self.state = HealthState::Unhealthy;
                        self.reason.clone_from(reason);
                        Change::State
                    }
                    _ => Change::None,
                }
            }
        }
    }

    /// Marks the target deregistered.
    pub fn drain(&mut self) {
        self.state = HealthState::Draining;
        self.reason = REASON_DRAINING.to_string();
        self.successes = 0;
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_settings(healthy: u32, unhealthy: u32) -> HealthCheck {
        HealthCheck {
            probe: Probe::Tcp,
            port: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            healthy_threshold: healthy,
            unhealthy_threshold: unhealthy,
        }
    }

    /// Feeds outcomes (`+` pass, `-` fail with a 500, `t` timeout) and
    /// compares the state after each one (`i`, `h`, `u`).
    #[test]
    fn state_transitions() {
        fn check(thresholds: (u32, u32), outcomes: &str, expect: &str) {
            let settings = check_settings(thresholds.0, thresholds.1);
            let mut tracker = Tracker::default();
            let states: String = outcomes
                .chars()
                .map(|it| {
                    let outcome = match it {
                        '+' => Outcome::Pass,
                        '-' => Outcome::Fail("Target.ResponseCodeMismatch: health check returned 500".into()),
                        _ => Outcome::Fail("Target.Timeout: health check timed out after 500ms".into()),
                    };
                    tracker.record(&outcome, &settings);
                    match tracker.state() {
                        HealthState::Initial => 'i',
                        HealthState::Healthy => 'h',
                        HealthState::Unhealthy => 'u',
                        _ => '?',
                    }
                })
                .collect();
            assert_eq!(states, expect, "thresholds {thresholds:?}, outcomes {outcomes}");
        }
        check((2, 2), "++", "ih");
        check((2, 2), "+-+-+-", "iiiiii");
        check((2, 2), "--", "iu");
        check((1, 1), "+-+", "huh");
        check((2, 3), "++--+---", "ihhhhhhu");
        check((3, 2), "--+++", "iuuuh");
        check((3, 2), "--++-+++", "iuuuuuuh");
        check((2, 2), "++-t-", "ihhuu");
    }

    #[test]
    fn reasons_follow_the_state() {
        let settings = check_settings(2, 2);
        let mut tracker = Tracker::default();
        assert_eq!(tracker.reason(), REASON_INITIAL);
        let refused = Outcome::Fail("Target.FailedHealthChecks: connection refused".into());
        let timeout = Outcome::Fail("Target.Timeout: health check timed out after 500ms".into());
        assert_eq!(tracker.record(&refused, &settings), Change::None);
        assert_eq!(tracker.reason(), REASON_INITIAL);
        assert_eq!(tracker.record(&refused, &settings), Change::State);
        assert_eq!(tracker.reason(), "Target.FailedHealthChecks: connection refused");
        assert_eq!(tracker.record(&refused, &settings), Change::None);
        assert_eq!(tracker.record(&timeout, &settings), Change::Reason);
        assert_eq!(tracker.reason(), "Target.Timeout: health check timed out after 500ms");
        tracker.record(&Outcome::Pass, &settings);
        assert_eq!(tracker.record(&Outcome::Pass, &settings), Change::State);
        assert_eq!((tracker.state(), tracker.reason()), (HealthState::Healthy, ""));
        tracker.drain();
        assert_eq!((tracker.state(), tracker.reason()), (HealthState::Draining, REASON_DRAINING));
    }

    #[test]
    fn status_lines() {
        fn check(head: &str, expect: Option<u16>) {
            assert_eq!(parse_status(head.as_bytes()), expect, "{head}");
        }
        check("HTTP/1.1 200 OK\r\n", Some(200));
        check("HTTP/1.0 503", Some(503));
        check("HTTP/1.1 20", None);
        check("SSH-2.0-OpenSSH", None);
        check("", None);
    }

    #[test]
    fn settings_from_the_spec() {
        fn check(yaml: &str, expect: (&str, Option<u16>, Vec<(u16, u16)>)) {
            let group: lbctl_spec::TargetGroup = serde_yaml::from_str(yaml).unwrap();
            let check = HealthCheck::of(&group);
            let (kind, matcher) = match check.probe {
                Probe::Http { path, matcher } => (format!("GET {path}"), matcher),
                Probe::Tcp => ("TCP".to_string(), vec![]),
            };
            assert_eq!((kind.as_str(), check.port, matcher), expect, "{yaml}");
        }
        check("{ port: 80 }", ("GET /", None, vec![(200, 200)]));
        check("{ health_check: { path: /health, matcher: '200-399' } }", ("GET /health", None, vec![(200, 399)]));
        check("{ protocol: TCP }", ("TCP", None, vec![]));
        check(
            "{ protocol: TCP, health_check: { protocol: HTTP, port: 9000 } }",
            ("GET /", Some(9000), vec![(200, 200)]),
        );
    }

    #[test]
    fn probes_report_aws_reasons() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            // A port nobody listens on: bind one, then free it.
            let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut settings = check_settings(1, 1);
            assert_eq!(
                probe(&settings, Ipv4Addr::LOCALHOST, closed).await,
                Outcome::Fail("Target.FailedHealthChecks: connection refused".into())
            );
            // A server that accepts and never answers.
            let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = silent.local_addr().unwrap().port();
            settings.probe = Probe::Http { path: "/".into(), matcher: vec![(200, 200)] };
            settings.timeout = Duration::from_millis(50);
            assert_eq!(
                probe(&settings, Ipv4Addr::LOCALHOST, port).await,
                Outcome::Fail("Target.Timeout: health check timed out after 50ms".into())
            );
            settings.probe = Probe::Tcp;
            assert_eq!(probe(&settings, Ipv4Addr::LOCALHOST, port).await, Outcome::Pass);
        });
    }
}
