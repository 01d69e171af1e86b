//! Access logs in AWS's formats, so that the tools that read ELB access
//! logs read lbctl's: one line per request for application load balancers
//! (the ALB access-log entry, fields in AWS's order), one per connection or
//! UDP flow for network ones (the NLB entry, the target appended).
//!
//! Lines are formatted on the request's task and handed to one writer
//! thread per proxy through a bounded queue: a request never waits on the
//! disk. Should the disk fall behind by a whole queue, lines are dropped
//! and counted (`lbctl_access_log_dropped_lines_total`), never blocking
//! traffic.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};

/// Lines waiting for the writer at most.
const QUEUE: usize = 16 * 1024;

/// A load balancer's access log.
pub struct AccessLog {
    lines: SyncSender<String>,
}

impl AccessLog {
    /// Opens (creating, private) the log at `path` for appending, with its
    /// writer thread.
    pub fn open(path: &Path) -> Result<AccessLog> {
        if let Some(dir) = path.parent() {
            lbctl_files::create_private_dir(dir)?;
        }
        let file = lbctl_files::open_private_append(path).with_context(|| format!("opening {}", path.display()))?;
        let (lines, queue) = mpsc::sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name("access-log".to_string())
            .spawn(move || {
                let mut out = std::io::BufWriter::with_capacity(64 * 1024, file);
                loop {
                    match queue.recv_timeout(Duration::from_millis(200)) {
                        Ok(line) => {
                            let _ = out.write_all(line.as_bytes());
                            // Whatever else is queued goes in the same write.
                            while let Ok(line) = queue.try_recv() {
                                let _ = out.write_all(line.as_bytes());
                            }
                            let _ = out.flush();
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => {
                            let _ = out.flush();
                            return;
                        }
                    }
                }
            })
            .context("starting the access log writer")?;
        Ok(AccessLog { lines })
    }

    /// Queues one line (ending in a newline); false when it was dropped
    /// because the writer fell a whole queue behind.
    pub fn write(&self, line: String) -> bool {
        !matches!(self.lines.try_send(line), Err(TrySendError::Full(_) | TrySendError::Disconnected(_)))
    }
}

/// `2026-12-02T10:00:00.123456Z`.
pub fn iso_time(time: SystemTime) -> String {
    humantime::format_rfc3339_micros(time).to_string()
}

/// Seconds with AWS's precision, or `-1` when the step did not happen.
fn seconds(value: Option<Duration>) -> String {
    match value {
        Some(it) => format!("{:.6}", it.as_secs_f64()),
        None => "-1".to_string(),
    }
}

/// A quoted field: `"text"`, `"-"` when empty, quotes and control
/// characters escaped.
fn quoted(text: &str) -> String {
    if text.is_empty() {
        return "\"-\"".to_string();
    }
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn or_dash(value: Option<impl ToString>) -> String {
    value.map(|it| it.to_string()).unwrap_or_else(|| "-".to_string())
}

/// One request of an application load balancer, as AWS logs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// `http`, `https`, `h2` (HTTP/2 over TLS), `grpcs`.
    pub kind: &'static str,
    /// When the response was sent.
    pub time: SystemTime,
    /// `app/<name>/<id>`.
    pub elb: String,
    /// The client.
    pub client: SocketAddr,
    /// The target that answered, if one did.
    pub target: Option<SocketAddr>,
    /// From the request's arrival to its sending to the target.
    pub request_processing: Option<Duration>,
    /// From the sending to the target's response head.
    pub target_processing: Option<Duration>,
    /// From the target's response head to the response's start.
    pub response_processing: Option<Duration>,
    /// The load balancer's status code.
    pub elb_status: u16,
    /// The target's, if it answered.
    pub target_status: Option<u16>,
    /// Bytes received from the client.
    pub received_bytes: u64,
    /// Bytes sent to the client.
    pub sent_bytes: u64,
    /// `GET http://host:80/path?query HTTP/1.1`.
    pub request: String,
    /// The client's User-Agent.
    pub user_agent: String,
    /// TLS cipher (OpenSSL's name), HTTPS only.
    pub ssl_cipher: Option<String>,
    /// TLS protocol (`TLSv1.3`), HTTPS only.
    pub ssl_protocol: Option<&'static str>,
    /// The target group's ARN.
    pub target_group_arn: Option<String>,
    /// `X-Amzn-Trace-Id`'s value.
    pub trace_id: String,
    /// The SNI name, HTTPS only.
    pub domain: Option<String>,
    /// The certificate presented, HTTPS only.
    pub chosen_cert: Option<String>,
    /// The rule that matched (0: the default action); `None` when no
    /// routing happened.
    pub matched_rule_priority: Option<u32>,
    /// When the request arrived.
    pub request_creation_time: SystemTime,
    /// `forward`, `redirect`, `fixed-response`.
    pub actions: &'static str,
    /// A redirect's `Location`.
    pub redirect_url: Option<String>,
    /// Why the request failed, AWS's code where it has one.
    pub error_reason: Option<&'static str>,
    /// The connection's trace id.
    pub conn_trace_id: String,
}

impl Entry {
    /// The log line, newline included.
    pub fn line(&self) -> String {
        let target = or_dash(self.target);
        let target_status = or_dash(self.target_status);
        let fields = [
            self.kind.to_string(),
            iso_time(self.time),
            self.elb.clone(),
            self.client.to_string(),
            target.clone(),
            seconds(self.request_processing),
            seconds(self.target_processing),
            seconds(self.response_processing),
            self.elb_status.to_string(),
            target_status.clone(),
            self.received_bytes.to_string(),
            self.sent_bytes.to_string(),
            quoted(&self.request),
            quoted(&self.user_agent),
            or_dash(self.ssl_cipher.as_ref()),
            or_dash(self.ssl_protocol),
            or_dash(self.target_group_arn.as_ref()),
            quoted(&self.trace_id),
            quoted(self.domain.as_deref().unwrap_or("")),
            quoted(self.chosen_cert.as_deref().unwrap_or("")),
            or_dash(self.matched_rule_priority),
            iso_time(self.request_creation_time),
            quoted(self.actions),
            quoted(self.redirect_url.as_deref().unwrap_or("")),
            quoted(self.error_reason.unwrap_or("")),
            quoted(if self.target.is_some() { &target } else { "" }),
            quoted(if self.target_status.is_some() { &target_status } else { "" }),
            quoted(""),
            quoted(""),
            self.conn_trace_id.clone(),
        ];
        let mut line = fields.join(" ");
        line.push('\n');
        line
    }
}

/// One connection or UDP flow of a network load balancer, in AWS's NLB
/// access-log format, with the target appended.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionEntry {
    /// `tcp`, `tls`, `udp`.
    pub kind: &'static str,
    /// When it ended.
    pub time: SystemTime,
    /// `net/<name>/<id>`.
    pub elb: String,
    /// `listener/net/<name>/<id>/<port>`.
    pub listener: String,
    /// The client.
    pub client: SocketAddr,
    /// The listener it came in on.
    pub destination: SocketAddr,
    /// How long it lasted.
    pub duration: Duration,
    /// The TLS handshake's duration, TLS only.
    pub tls_handshake: Option<Duration>,
    /// Bytes from the client.
    pub received_bytes: u64,
    /// Bytes to the client.
    pub sent_bytes: u64,
    /// TLS cipher, TLS only.
    pub tls_cipher: Option<String>,
    /// TLS protocol, TLS only.
    pub tls_protocol: Option<&'static str>,
    /// The SNI name, TLS only.
    pub domain: Option<String>,
    /// When it began.
    pub started: SystemTime,
    /// The target it went to.
    pub target: Option<SocketAddr>,
}

impl ConnectionEntry {
    /// The log line, newline included.
    pub fn line(&self) -> String {
        let millis = |it: Duration| it.as_millis().to_string();
        let fields = [
            self.kind.to_string(),
            "2.0".to_string(),
            iso_time(self.time),
            self.elb.clone(),
            self.listener.clone(),
            self.client.to_string(),
            self.destination.to_string(),
            millis(self.duration),
            self.tls_handshake.map(millis).unwrap_or_else(|| "-".to_string()),
            self.received_bytes.to_string(),
            self.sent_bytes.to_string(),
            "-".to_string(),
            or_dash(self.tls_cipher.as_ref().map(|_| "-")),
            "-".to_string(),
            or_dash(self.tls_cipher.as_ref()),
            or_dash(self.tls_protocol),
            "-".to_string(),
            or_dash(self.domain.as_ref()),
            "-".to_string(),
            "-".to_string(),
            "-".to_string(),
            iso_time(self.started),
            or_dash(self.target),
        ];
        let mut line = fields.join(" ");
        line.push('\n');
        line
    }
}

/// A stable resource id for a load balancer's log lines: 16 hex digits of
/// its stack and name.
pub fn resource_id(stack: &str, name: &str) -> String {
    let hash = format!("{stack}/{name}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3));
    format!("{hash:016x}")
}

/// `Root=1-<epoch hex>-<24 hex>`, as AWS's `X-Amzn-Trace-Id`.
pub fn trace_id(now: SystemTime) -> String {
    let epoch = now.duration_since(SystemTime::UNIX_EPOCH).map(|it| it.as_secs()).unwrap_or_default();
    format!("Root=1-{epoch:08x}-{:024x}", rand::random::<u128>() & ((1u128 << 96) - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64, micros: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds) + Duration::from_micros(micros)
    }

    #[test]
    fn an_alb_line_has_aws_fields_in_aws_order() {
        let entry = Entry {
            kind: "http",
            time: at(1_764_633_600, 250),
            elb: "app/public/0123456789abcdef".to_string(),
            client: "127.0.0.1:50000".parse().unwrap(),
            target: Some("127.16.0.2:8080".parse().unwrap()),
            request_processing: Some(Duration::from_micros(120)),
            target_processing: Some(Duration::from_millis(3)),
            response_processing: Some(Duration::from_micros(40)),
            elb_status: 200,
            target_status: Some(200),
            received_bytes: 80,
            sent_bytes: 160,
            request: "GET http://public.shop.elb.localhost:8080/a?b=c HTTP/1.1".to_string(),
            user_agent: "curl/8.0 \"quoted\"".to_string(),
            ssl_cipher: None,
            ssl_protocol: None,
            target_group_arn: Some("arn:aws:elasticloadbalancing:local:000000000000:targetgroup/web/00".to_string()),
            trace_id: "Root=1-692e0000-000000000000000000000001".to_string(),
            domain: None,
            chosen_cert: None,
            matched_rule_priority: Some(10),
            request_creation_time: at(1_764_633_600, 0),
            actions: "forward",
            redirect_url: None,
            error_reason: None,
            conn_trace_id: "TID_0000000000000001".to_string(),
        };
        assert_eq!(
            entry.line(),
            "http 2025-12-02T00:00:00.000250Z app/public/0123456789abcdef 127.0.0.1:50000 127.16.0.2:8080 0.000120 0.003000 0.000040 200 200 80 160 \"GET http://public.shop.elb.localhost:8080/a?b=c HTTP/1.1\" \"curl/8.0 \\\"quoted\\\"\" - - arn:aws:elasticloadbalancing:local:000000000000:targetgroup/web/00 \"Root=1-692e0000-000000000000000000000001\" \"-\" \"-\" 10 2025-12-02T00:00:00.000000Z \"forward\" \"-\" \"-\" \"127.16.0.2:8080\" \"200\" \"-\" \"-\" TID_0000000000000001\n"
        );
        let fixed =
            Entry { target: None, target_status: None, target_processing: None, actions: "fixed-response", ..entry };
        let line = fixed.line();
        assert!(line.contains(" 127.0.0.1:50000 - 0.000120 -1 0.000040 200 - "), "{line}");
        assert!(line.contains("\"fixed-response\" \"-\" \"-\" \"-\" \"-\""), "{line}");
    }

    #[test]
    fn an_nlb_line_is_aws_nlb_format_with_the_target() {
        let entry = ConnectionEntry {
            kind: "tcp",
            time: at(1_764_633_601, 0),
            elb: "net/edge/0123456789abcdef".to_string(),
            listener: "listener/net/edge/0123456789abcdef/9000".to_string(),
            client: "127.0.0.1:40000".parse().unwrap(),
            destination: "127.251.0.1:9000".parse().unwrap(),
            duration: Duration::from_millis(1500),
            tls_handshake: None,
            received_bytes: 7,
            sent_bytes: 30,
            tls_cipher: None,
            tls_protocol: None,
            domain: None,
            started: at(1_764_633_599, 500_000),
            target: Some("127.16.0.9:7000".parse().unwrap()),
        };
        let line = entry.line();
        let fields: Vec<&str> = line.trim_end().split(' ').collect();
        assert_eq!(fields.len(), 23, "{line}");
        assert_eq!(&fields[..4], ["tcp", "2.0", "2025-12-02T00:00:01.000000Z", "net/edge/0123456789abcdef"]);
        assert_eq!((fields[7], fields[9], fields[10]), ("1500", "7", "30"));
        assert_eq!(fields[22], "127.16.0.9:7000");
    }

    #[test]
    fn trace_ids_look_like_aws_ones() {
        let id = trace_id(at(1_764_633_600, 0));
        assert!(id.starts_with("Root=1-692e2c00-") && id.len() == "Root=1-692e2c00-".len() + 24, "{id}");
        assert_eq!(resource_id("shop", "public").len(), 16);
    }

    #[test]
    fn lines_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/public/access.log");
        let log = AccessLog::open(&path).unwrap();
        log.write("one\n".to_string());
        log.write("two\n".to_string());
        drop(log);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&path).unwrap_or_default() != "one\ntwo\n" {
            assert!(std::time::Instant::now() < deadline, "{:?}", std::fs::read_to_string(&path));
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
