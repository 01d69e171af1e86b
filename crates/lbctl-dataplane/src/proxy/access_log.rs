//! Access logs in AWS's formats, so that the tools that read ELB access
//! logs read lbctl's: one line per request for application load balancers
//! (the ALB access-log entry, fields in AWS's order), one per connection or
//! UDP flow for network ones (the NLB entry, the target appended).
//!
//! Lines are formatted on the request's task straight into the log's
//! buffer (no string per field, no copy per line), under a lock held that
//! long. Whoever fills the buffer past `WRITE_AT` queues it for the log's
//! writer thread, and wakes it once `WAKE_AT` wait; the writer writes
//! queued buffers to the file in order, in one call each, and ten times a
//! second what is queued and what a quiet load balancer left in the buffer.
//! So a request does not wait for the disk: the kernel's work of appending
//! to the file (as much as the rest of a line's cost, or more, as the
//! machine's state has it) runs on the writer's thread, wherever the
//! scheduler puts it (on a core the workers leave free, when there is
//! one), and a slow or stalled disk holds up the log, not the traffic, as
//! long as no more than `MAX_QUEUED` buffers wait. Past that (the disk has
//! fallen behind by 4 MiB) a filler writes the oldest itself, in order,
//! until the queue is back within bounds: memory stays bounded and no line
//! is lost. Closing a log (a reload that turns it off, the proxy's exit)
//! waits for everything queued to be written.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};

/// The buffer is queued for writing once it holds this much.
const WRITE_AT: usize = 64 * 1024;
/// How many full buffers wait for the writer thread before it is woken
/// (256 KiB): a wake-up per buffer cost it about as much as the writes.
const WAKE_AT: usize = 4;
/// How many full buffers may wait for the writer thread (4 MiB): past that,
/// whoever fills one writes the oldest until no more wait.
const MAX_QUEUED: usize = 64;
/// How often the writer thread writes what is left.
const WRITE_EVERY: Duration = Duration::from_millis(100);
/// How far ahead of the log's end the writer thread reserves disk blocks
/// (`fallocate`, the size kept): appending into reserved blocks costs the
/// kernel about half what appending to a growing file does, where it finds
/// a block for each page on the way (measured on ext4: 0.22 s against
/// 0.31 to 0.48 s of system time per GB). What is left reserved when the
/// log closes, or was left by a proxy that was killed, is given back by
/// the log that closes or opens while no other has the file open: each
/// holds a shared `flock` on it, and only an exclusive one may shorten it,
/// so no line another log appends is ever cut.
const RESERVE_AHEAD: u64 = 16 * 1024 * 1024;

struct Shared {
    pending: Mutex<Vec<u8>>,
    /// Full buffers, oldest first, queued while `pending` was locked: the
    /// order of the queue is the order of the lines.
    queue: Mutex<VecDeque<Vec<u8>>>,
    /// Held while a buffer is taken from the queue and written, so that
    /// writes reach the file in the queue's order whoever makes them.
    order: Mutex<()>,
    /// `MAX_QUEUED`, but in tests.
    max_queued: usize,
    /// Written buffers, emptied, for the next full ones to be swapped for
    /// (as many as are written in one wake-up, and one more): a fresh
    /// allocation of this size would have its pages faulted in by the
    /// kernel again.
    spare: Mutex<Vec<Vec<u8>>>,
    file: File,
    closed: AtomicBool,
}

/// Locks `mutex`, whether or not a thread panicked holding it (what it
/// guards is bytes and buffers, whole after every step).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|it| it.into_inner())
}

impl Shared {
    /// Takes the lines `pending` holds, leaving it a spare buffer (a new
    /// one when none is spare).
    fn take(&self, pending: &mut Vec<u8>) -> Vec<u8> {
        let spare = lock(&self.spare).pop();
        let empty = spare.unwrap_or_else(|| Vec::with_capacity(WRITE_AT * 2));
        std::mem::replace(pending, empty)
    }

    /// Queues what `pending` holds (`pending` is its lock's guard, so no
    /// other buffer is queued between its taking and its queueing); the
    /// number of buffers queued.
    fn queue(&self, pending: &mut Vec<u8>) -> usize {
        let full = self.take(pending);
        let mut queue = lock(&self.queue);
        queue.push_back(full);
        queue.len()
    }

    /// Writes the queued buffers, oldest first, until no more than `left`
    /// wait. Each is taken and written under `order`, taken again per
    /// buffer: a filler past `MAX_QUEUED` gets its turn between two of the
    /// writer thread's writes, and stops as soon as the queue is back
    /// within bounds, rather than writing what others queue meanwhile.
    fn drain(&self, left: usize) {
        loop {
            let _order = lock(&self.order);
            let next = {
                let mut queue = lock(&self.queue);
                if queue.len() > left {
                    queue.pop_front()
                } else {
                    None
                }
            };
            let Some(bytes) = next else { return };
            self.write(bytes);
        }
    }

    /// Writes `bytes` at the end of the file (`O_APPEND`), then keeps the
    /// buffer as a spare.
    fn write(&self, mut bytes: Vec<u8>) {
        let _ = (&self.file).write_all(&bytes);
        bytes.clear();
        let mut spare = lock(&self.spare);
        if spare.len() <= WAKE_AT {
            spare.push(bytes);
        }
    }

    /// The file's length and the bytes its blocks take, reserved ones
    /// included; `None` when they cannot be read.
    fn sizes(&self) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().ok().map(|it| (it.len(), it.blocks() * 512))
    }

    /// Reserves disk blocks from `from` for `RESERVE_AHEAD` bytes, the
    /// file's length unchanged; false where the file system cannot.
    fn reserve(&self, from: u64) -> bool {
        use std::os::fd::AsRawFd;
        // SAFETY: plain system call on a descriptor this log owns.
        let done = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_KEEP_SIZE,
                from as libc::off_t,
                RESERVE_AHEAD as libc::off_t,
            )
        };
        done == 0
    }

    /// Gives back the blocks reserved past the end (a truncation to the
    /// length the file has) when no other log has the file open, then
    /// holds the shared lock again.
    fn release_reserved(&self) {
        if self.file.try_lock().is_ok() {
            if let Some((len, _)) = self.sizes() {
                let _ = self.file.set_len(len);
            }
        }
        let _ = self.file.lock_shared();
    }
}

/// A load balancer's access log.
pub struct AccessLog {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl AccessLog {
    /// Opens (creating, private) the log at `path` for appending, with its
    /// writer thread.
    pub fn open(path: &Path) -> Result<AccessLog> {
        AccessLog::open_with(path, MAX_QUEUED)
    }

    /// `open`, with up to `max_queued` full buffers left to the writer.
    fn open_with(path: &Path, max_queued: usize) -> Result<AccessLog> {
        if let Some(dir) = path.parent() {
            lbctl_files::create_private_dir(dir)?;
        }
        let file = lbctl_files::open_private_append(path).with_context(|| format!("opening {}", path.display()))?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::with_capacity(WRITE_AT * 2)),
            queue: Mutex::new(VecDeque::new()),
            order: Mutex::new(()),
            max_queued,
            spare: Mutex::new(Vec::new()),
            file,
            closed: AtomicBool::new(false),
        });
        // Blocks a killed proxy left reserved are given back first.
        shared.release_reserved();
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("access-log".to_string())
            .spawn(move || {
                let shared = writer_shared;
                let mut can_reserve = true;
                let mut last_leftover = Instant::now();
                loop {
                    let closed = shared.closed.load(Ordering::Acquire);
                    if !closed {
                        // Woken early by whoever queues the `WAKE_AT`th full buffer.
                        std::thread::park_timeout(WRITE_EVERY.saturating_sub(last_leftover.elapsed()));
                    }
                    if closed || last_leftover.elapsed() >= WRITE_EVERY {
                        last_leftover = Instant::now();
                        let mut pending = lock(&shared.pending);
                        if !pending.is_empty() {
                            shared.queue(&mut pending);
                        }
                    }
                    shared.drain(0);
                    if closed {
                        shared.release_reserved();
                        return;
                    }
                    if let Some((len, allocated)) = shared.sizes().filter(|_| can_reserve) {
                        if allocated < len + RESERVE_AHEAD / 2 {
                            can_reserve = shared.reserve(len);
                        }
                    }
                }
            })
            .context("starting the access log writer")?;
        Ok(AccessLog { shared, writer: Some(writer) })
    }

    /// Appends what `format` writes (whole lines).
    pub fn append_with(&self, format: impl FnOnce(&mut Vec<u8>)) {
        let queued = {
            let mut pending = lock(&self.shared.pending);
            format(&mut pending);
            if pending.len() < WRITE_AT {
                return;
            }
            self.shared.queue(&mut pending)
        };
        if queued > self.shared.max_queued {
            self.shared.drain(self.shared.max_queued);
        } else if queued >= WAKE_AT {
            if let Some(writer) = &self.writer {
                writer.thread().unpark();
            }
        }
    }
}

impl Drop for AccessLog {
    /// Everything appended is written before the log closes.
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        if let Some(writer) = self.writer.take() {
            writer.thread().unpark();
            let _ = writer.join();
        }
    }
}

thread_local! {
    /// The second last written and its `2026-12-02T10:00:00` text: lines of
    /// the same second share the date arithmetic.
    static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

/// The time `since` the Unix epoch as `2026-12-02T10:00:00.123456Z`.
fn time_text(since: Duration) -> [u8; 27] {
    let mut text = *b"0000-00-00T00:00:00.000000Z";
    let (second, date) = SECOND.get();
    if second == since.as_secs() {
        text[..19].copy_from_slice(&date);
    } else {
        let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs());
        text[..19].copy_from_slice(&humantime::format_rfc3339_seconds(whole).to_string().as_bytes()[..19]);
        SECOND.set((since.as_secs(), text[..19].try_into().expect("19 bytes")));
    }
    text[20..26].copy_from_slice(&micros6(since.subsec_micros()));
    text
}

/// Writes `time` as AWS's NLB entries have it, to the second and without
/// a zone: `2026-12-02T10:00:00`.
fn write_nlb_time(out: &mut Vec<u8>, time: SystemTime) {
    out.extend_from_slice(&time_text(time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default())[..19]);
}

/// The last `N` decimal digits of `value`, zero-padded: a fixed-size
/// array, which the compiler writes without a loop or a call.
fn decimal<const N: usize>(mut value: u64) -> [u8; N] {
    let mut text = [b'0'; N];
    for slot in text.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
    text
}

/// `value` (under 10^8) in 8 decimal digits, zero-padded, computed in one
/// register: two 4-digit halves, then two 2-digit quarters each, then
/// digits, each step a multiplication in place of a division. Times and
/// processing times take five of these per line.
fn decimal8(value: u32) -> [u8; 8] {
    let value = u64::from(value);
    // High 4 digits in the low 32 bits: little-endian bytes read in order.
    let halves = (value / 10_000) | ((value % 10_000) << 32);
    let hundreds = ((halves * 10_486) >> 20) & 0x0000_007f_0000_007f;
    let quarters = ((halves - hundreds * 100) << 16) | hundreds;
    let tens = ((quarters * 103) >> 10) & 0x000f_000f_000f_000f;
    let digits = ((quarters - tens * 10) << 8) | tens;
    (digits + 0x3030_3030_3030_3030).to_le_bytes()
}

/// Microseconds (under a million) in 6 digits.
fn micros6(micros: u32) -> [u8; 6] {
    let text = decimal8(micros);
    [text[2], text[3], text[4], text[5], text[6], text[7]]
}

/// `value` in 8 hex digits, computed in one register: a digit per byte.
fn hex8(value: u32) -> [u8; 8] {
    let mut nibbles = u64::from(value);
    nibbles = (nibbles | nibbles << 16) & 0x0000_ffff_0000_ffff;
    nibbles = (nibbles | nibbles << 8) & 0x00ff_00ff_00ff_00ff;
    nibbles = (nibbles | nibbles << 4) & 0x0f0f_0f0f_0f0f_0f0f;
    // 1 in each byte whose nibble is past 9: `a` is 39 after `9` + 1.
    let letters = ((nibbles + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (nibbles + 0x3030_3030_3030_3030 + letters * 39).to_be_bytes()
}

/// Writes a number in decimal.
fn number(out: &mut Vec<u8>, value: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// Writes an HTTP status code (three digits, as every valid one has).
fn status(out: &mut Vec<u8>, code: u16) {
    match status_text(code) {
        Some(text) => out.extend_from_slice(&text),
        None => number(out, code),
    }
}

/// An HTTP status code's three digits; `None` for one that has not three.
fn status_text(code: u16) -> Option<[u8; 3]> {
    (100..1000).contains(&code).then(|| decimal::<3>(code.into()))
}

/// Writes a number in decimal, or `-`.
fn number_or_dash(out: &mut Vec<u8>, value: Option<impl itoa::Integer>) {
    match value {
        Some(it) => number(out, it),
        None => out.push(b'-'),
    }
}

/// Writes an address as `address` does, or `-`.
fn address_or_dash(out: &mut Vec<u8>, value: Option<SocketAddr>) {
    match value {
        Some(it) => address(out, it),
        None => out.push(b'-'),
    }
}

/// Writes `ip:port` (`[ip]:port` for IPv6), as `SocketAddr`'s `Display`
/// does, without the formatting machinery for the common IPv4 case.
fn address(out: &mut Vec<u8>, address: SocketAddr) {
    match address {
        SocketAddr::V4(v4) => {
            ip(out, IpAddr::V4(*v4.ip()));
            out.push(b':');
            number(out, v4.port());
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{address}");
        }
    }
}

/// Writes an address as `IpAddr`'s `Display` does, by hand for IPv4
/// (also used for `X-Forwarded-For` on every request).
pub(super) fn ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // Into a buffer on the stack, then one copy: this runs for two
            // or three addresses per logged request.
            let mut text = [0u8; 15];
            let mut len = 0;
            for (idx, octet) in v4.octets().into_iter().enumerate() {
                if idx > 0 {
                    text[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    text[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    text[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                text[len] = b'0' + octet % 10;
                len += 1;
            }
            out.extend_from_slice(&text[..len]);
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Writes seconds with AWS's precision, or `-1` when the step did not happen.
fn seconds(out: &mut Vec<u8>, value: Option<Duration>) {
    match value {
        // Under ten seconds, as nearly every step is: one fixed-size write.
        Some(it) if it.as_secs() < 10 => out.extend_from_slice(&short_seconds(it)),
        Some(it) => {
            number(out, it.as_secs());
            out.push(b'.');
            out.extend_from_slice(&micros6(it.subsec_micros()));
        }
        None => out.extend_from_slice(b"-1"),
    }
}

/// `value` (under ten seconds) as `0.000120`.
fn short_seconds(value: Duration) -> [u8; 8] {
    let mut text = *b"0.000000";
    text[0] += value.as_secs() as u8;
    text[2..].copy_from_slice(&micros6(value.subsec_micros()));
    text
}

/// Writes a quoted field: `"text"`, `"-"` when empty, escaped as
/// `escaped` does.
fn quoted(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    if text.is_empty() {
        out.push(b'-');
    }
    escaped(out, text.as_bytes());
    out.push(b'"');
}

/// Writes text with nothing left to escape (lbctl's own, or escaped
/// already) quoted, `"-"` when empty.
fn quoted_as_is(out: &mut Vec<u8>, text: &[u8]) {
    out.push(b'"');
    out.extend_from_slice(dash_if_empty(text));
    out.push(b'"');
}

/// `text`, or `-` when it is empty.
fn dash_if_empty(text: &[u8]) -> &[u8] {
    if text.is_empty() {
        b"-"
    } else {
        text
    }
}

/// The bytes `escaped` escapes: quotes, backslashes, control characters
/// and bytes past ASCII (a client's field is not always UTF-8).
const ESCAPED: [bool; 256] = {
    let mut table = [true; 256];
    let mut byte = 0x20;
    while byte < 0x7f {
        table[byte] = false;
        byte += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table[0x7f] = true;
    table
};

/// Writes `text` with quotes, backslashes, control characters and bytes
/// past ASCII escaped (`\"`, `\\`, `\x7f`).
pub fn escaped(out: &mut Vec<u8>, text: &[u8]) {
    if nothing_to_escape(text) {
        out.extend_from_slice(text);
        return;
    }
    let mut rest = text;
    while let Some(at) = rest.iter().position(|&byte| ESCAPED[usize::from(byte)]) {
        out.extend_from_slice(&rest[..at]);
        match rest[at] {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            byte => {
                let hex = hex8(byte.into());
                out.extend_from_slice(&[b'\\', b'x', hex[6], hex[7]]);
            }
        }
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
}

/// Whether `escaped` would write `text` as it is: eight bytes at a time,
/// each eight read as one number, rather than a table lookup per byte (the
/// request line and User-Agent of every logged request are checked here).
pub(super) fn nothing_to_escape(text: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Some byte of the result has its high bit set if and only if `word`
    // has a zero byte (the borrow may set it in the bytes above, too).
    let zero_in = |word: u64| word.wrapping_sub(ONES) & !word;
    let check = |word: u64| {
        // Below 0x20, past 0x7e (0x7f, or the high bit), `"` or `\`.
        word.wrapping_sub(ONES * 0x20) & !word
            | word
            | zero_in(word ^ (ONES * 0x7f))
            | zero_in(word ^ (ONES * u64::from(b'"')))
            | zero_in(word ^ (ONES * u64::from(b'\\')))
    };
    if text.len() < 8 {
        return !text.iter().any(|&byte| ESCAPED[usize::from(byte)]);
    }
    let word_at = |at: usize| u64::from_le_bytes(text[at..at + 8].try_into().expect("eight bytes"));
    // The last eight bytes as one more word, overlapping the one before
    // them: no byte at a time for the rest.
    let mut found = check(word_at(text.len() - 8));
    for at in (0..text.len() - 8).step_by(8) {
        found |= check(word_at(at));
    }
    found & HIGH == 0
}

/// Writes a value, or `-`.
fn or_dash(out: &mut Vec<u8>, value: Option<impl AsRef<str>>) {
    match value {
        Some(it) => out.extend_from_slice(it.as_ref().as_bytes()),
        None => out.push(b'-'),
    }
}

/// One request of an application load balancer, as AWS logs it; the
/// texts are the caller's, borrowed.
#[derive(Clone, Copy)]
pub struct Entry<'a> {
    /// `http`, `https`, `h2` (HTTP/2 over TLS), `grpcs`.
    pub kind: &'static str,
    /// When the load balancer made the response (AWS: generated it for the
    /// client), since the Unix epoch.
    pub time: Duration,
    /// The load balancer, the client, TLS and the connection's trace id.
    pub connection: &'a ConnectionText,
    /// The target that answered, if one did, `ip:port`.
    pub target: Option<&'a str>,
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
    /// `GET http://host:80/path?query HTTP/1.1`, escaped (`escaped`).
    pub request: &'a [u8],
    /// The client's User-Agent, escaped; empty when it sent none.
    pub user_agent: &'a [u8],
    /// The target group's ARN.
    pub target_group_arn: Option<&'a str>,
    /// The request's trace id: `X-Amzn-Trace-Id`'s value is its `Root`
    /// when the client sent no trace.
    pub trace_id: TraceId,
    /// The `X-Amzn-Trace-Id` sent on, escaped, when the client sent one.
    pub trace_header: Option<&'a [u8]>,
    /// The rule that matched (0: the default action); `None` when no
    /// routing happened.
    pub matched_rule_priority: Option<u32>,
    /// When the request arrived, since the Unix epoch.
    pub request_creation_time: Duration,
    /// `forward`, `redirect`, `fixed-response`.
    pub actions: &'static str,
    /// A redirect's `Location`.
    pub redirect_url: Option<&'a str>,
    /// Why the request failed, AWS's code where it has one.
    pub error_reason: Option<&'static str>,
}

/// What the lines of a connection's requests have of it, written once per
/// connection, each part with the spaces around it: the load balancer and
/// the client (` app/<name>/<id> 127.0.0.1:50000 `), the TLS cipher and
/// protocol (`- - ` without TLS), the SNI name and the certificate chosen
/// (`"-" "-" `), and the line's end (`" "-" "-" TID_<hex>` and the newline:
/// the last fields, classification and its reason, are not given).
#[derive(Debug)]
pub struct ConnectionText {
    between: Box<[u8]>,
    tls: Box<[u8]>,
    names: Box<[u8]>,
    ending: Box<[u8]>,
}

/// A connection's TLS session as a line has it: cipher (OpenSSL's name),
/// protocol (`TLSv1.3`) and SNI name.
pub type Tls<'a> = (&'a str, &'a str, Option<&'a str>);

impl ConnectionText {
    /// `elb` (`app/<name>/<id>`)'s connection from `client`, with its TLS
    /// session (HTTPS) and trace id.
    pub fn new(elb: &str, client: SocketAddr, tls: Option<Tls>, trace_id: &str) -> ConnectionText {
        let mut between = Vec::with_capacity(elb.len() + 24);
        between.push(b' ');
        between.extend_from_slice(elb.as_bytes());
        between.push(b' ');
        address(&mut between, client);
        between.push(b' ');
        let (tls, names) = match tls {
            None => (b"- - ".to_vec(), b"\"-\" \"-\" ".to_vec()),
            Some((cipher, protocol, domain)) => {
                let mut names = Vec::new();
                quoted(&mut names, domain.unwrap_or(""));
                names.extend_from_slice(b" \"");
                certificate_arn(&mut names, elb);
                names.extend_from_slice(b"\" ");
                ([cipher.as_bytes(), b" ", protocol.as_bytes(), b" "].concat(), names)
            }
        };
        let ending = [b"\" \"-\" \"-\" ", trace_id.as_bytes(), b"\n"].concat();
        ConnectionText { between: between.into(), tls: tls.into(), names: names.into(), ending: ending.into() }
    }
}

impl Entry<'_> {
    /// Writes the log line, newline included, to `out`: what most lines
    /// have alike in a few fixed-size pieces, each one copy, and the
    /// connection's texts written once for all its lines (a line is about
    /// 25 copies, where a field at a time took 70).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.kind.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&time_text(self.time));
        out.extend_from_slice(&self.connection.between);
        let target = out.len();
        or_dash(out, self.target);
        let target = target..out.len();
        let target_status = match self.steps_and_statuses() {
            Some(text) => {
                out.extend_from_slice(&text);
                out.len() - 4..out.len() - 1
            }
            None => {
                for step in [self.request_processing, self.target_processing, self.response_processing] {
                    out.push(b' ');
                    seconds(out, step);
                }
                out.push(b' ');
                status(out, self.elb_status);
                out.push(b' ');
                let target_status = out.len();
                match self.target_status {
                    Some(code) => status(out, code),
                    None => out.push(b'-'),
                }
                let target_status = target_status..out.len();
                out.push(b' ');
                target_status
            }
        };
        number(out, self.received_bytes);
        out.push(b' ');
        number(out, self.sent_bytes);
        out.extend_from_slice(b" \"");
        out.extend_from_slice(dash_if_empty(self.request));
        out.extend_from_slice(b"\" \"");
        out.extend_from_slice(dash_if_empty(self.user_agent));
        out.extend_from_slice(b"\" ");
        out.extend_from_slice(&self.connection.tls);
        or_dash(out, self.target_group_arn);
        match self.trace_header {
            None => out.extend_from_slice(&self.trace_id.field()),
            Some(header) => {
                out.extend_from_slice(b" \"");
                out.extend_from_slice(header);
                out.extend_from_slice(b"\" ");
            }
        }
        out.extend_from_slice(&self.connection.names);
        number_or_dash(out, self.matched_rule_priority);
        let mut created = [b' '; 30];
        created[1..28].copy_from_slice(&time_text(self.request_creation_time));
        created[29] = b'"';
        out.extend_from_slice(&created);
        out.extend_from_slice(self.actions.as_bytes());
        match (self.redirect_url, self.error_reason) {
            (None, None) => out.extend_from_slice(b"\" \"-\" \"-\" \""),
            (redirect_url, error_reason) => {
                out.extend_from_slice(b"\" ");
                quoted(out, redirect_url.unwrap_or(""));
                out.push(b' ');
                quoted_as_is(out, error_reason.unwrap_or("").as_bytes());
                out.extend_from_slice(b" \"");
            }
        }
        // The target list: the one target, as written above.
        out.extend_from_within(target);
        out.extend_from_slice(b"\" \"");
        out.extend_from_within(target_status);
        out.extend_from_slice(&self.connection.ending);
    }

    /// ` 0.000120 0.003000 0.000040 200 200 `, the processing times and
    /// status codes, where every step happened within ten seconds and
    /// both codes have three digits, as nearly always; `None` otherwise.
    fn steps_and_statuses(&self) -> Option<[u8; 36]> {
        let steps = [self.request_processing?, self.target_processing?, self.response_processing?];
        if steps.iter().any(|it| it.as_secs() >= 10) {
            return None;
        }
        let codes = [status_text(self.elb_status)?, status_text(self.target_status?)?];
        let mut text = [b' '; 36];
        for (idx, step) in steps.into_iter().enumerate() {
            text[1 + idx * 9..9 + idx * 9].copy_from_slice(&short_seconds(step));
        }
        text[28..31].copy_from_slice(&codes[0]);
        text[32..35].copy_from_slice(&codes[1]);
        Some(text)
    }

    /// The log line, newline included.
    #[cfg(test)]
    pub fn line(&self) -> String {
        let mut out = Vec::with_capacity(512);
        self.write_to(&mut out);
        String::from_utf8_lossy(&out).into_owned()
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
    /// The listener's resource id: the last part of its ARN, 16 hex digits.
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
    /// TLS protocol (`TLSv1.3`), TLS only; written as AWS's NLB entries
    /// have it (`tlsv13`).
    pub tls_protocol: Option<&'static str>,
    /// The SNI name, TLS only.
    pub domain: Option<String>,
    /// When it began.
    pub started: SystemTime,
    /// The target it went to.
    pub target: Option<SocketAddr>,
}

impl ConnectionEntry {
    /// Writes the log line, newline included, to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.kind.as_bytes());
        out.extend_from_slice(b" 2.0 ");
        write_nlb_time(out, self.time);
        for text in [" ", &self.elb, " ", &self.listener, " "] {
            out.extend_from_slice(text.as_bytes());
        }
        address(out, self.client);
        out.push(b' ');
        address(out, self.destination);
        out.push(b' ');
        number(out, self.duration.as_millis());
        out.push(b' ');
        number_or_dash(out, self.tls_handshake.map(|it| it.as_millis()));
        out.push(b' ');
        number(out, self.received_bytes);
        out.push(b' ');
        number(out, self.sent_bytes);
        // No TLS alert; the certificate of the load balancer (on TLS); no
        // certificate serial.
        out.extend_from_slice(b" - ");
        match &self.tls_cipher {
            Some(_) => certificate_arn(out, &self.elb),
            None => out.push(b'-'),
        }
        out.extend_from_slice(b" - ");
        or_dash(out, self.tls_cipher.as_ref());
        out.push(b' ');
        match self.tls_protocol {
            Some(protocol) => out.extend(protocol.bytes().filter(|it| *it != b'.').map(|it| it.to_ascii_lowercase())),
            None => out.push(b'-'),
        }
        out.extend_from_slice(b" - ");
        or_dash(out, self.domain.as_ref());
        out.extend_from_slice(b" - - - ");
        write_nlb_time(out, self.started);
        out.push(b' ');
        address_or_dash(out, self.target);
        out.push(b'\n');
    }

    /// The log line, newline included.
    #[cfg(test)]
    pub fn line(&self) -> String {
        let mut out = Vec::with_capacity(256);
        self.write_to(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// A stable resource id for a load balancer's log lines: 16 hex digits of
/// its stack and name.
pub fn resource_id(stack: &str, name: &str) -> String {
    format!("{:016x}", resource_hash(stack, name))
}

/// The hash `resource_id` writes.
fn resource_hash(stack: &str, name: &str) -> u64 {
    let fold = |hash: u64, bytes: &[u8]| {
        bytes.iter().fold(hash, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x100_0000_01b3))
    };
    fold(fold(fold(0xcbf2_9ce4_8422_2325, stack.as_bytes()), b"/"), name.as_bytes())
}

/// Writes the ARN of `elb`'s certificate (`app/<name>/<id>` or
/// `net/...`), in ACM's form, as its lines name it.
fn certificate_arn(out: &mut Vec<u8>, elb: &str) {
    out.extend_from_slice(b"arn:aws:acm:local:000000000000:certificate/");
    out.extend(elb.bytes().map(|byte| if byte == b'/' { b'-' } else { byte }));
}

/// A request's id in AWS's `X-Amzn-Trace-Id` (`1-<epoch hex>-<24 hex>`):
/// its `Root` when the client sent no trace, its `Self` when it did.
/// Written out once, for the header sent on and the log line alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId {
    /// `1-<epoch hex>-<24 hex>`.
    text: [u8; 35],
}

impl TraceId {
    /// A new id for a request that arrived `epoch` seconds after the Unix
    /// epoch. The random part identifies, it guards nothing: it comes from
    /// a fast generator of the thread, seeded once from the system.
    pub fn new(epoch: u64) -> TraceId {
        TraceId::of(epoch as u32, (fastrand::u64(..), fastrand::u32(..)))
    }

    /// The id of `epoch` (seconds, AWS's 8 hex digits) and 96 random bits.
    pub(super) fn of(epoch: u32, random: (u64, u32)) -> TraceId {
        let mut text = *b"1-00000000-000000000000000000000000";
        text[2..10].copy_from_slice(&hex8(epoch));
        text[11..19].copy_from_slice(&hex8((random.0 >> 32) as u32));
        text[19..27].copy_from_slice(&hex8(random.0 as u32));
        text[27..35].copy_from_slice(&hex8(random.1));
        TraceId { text }
    }

    /// `Root=1-...` (or `Self=1-...` with `name` `Self`).
    fn text(&self, name: &[u8; 4]) -> [u8; 40] {
        let mut text = *b"Root=1-00000000-000000000000000000000000";
        text[..4].copy_from_slice(name);
        text[5..].copy_from_slice(&self.text);
        text
    }

    /// ` "Root=1-..." `: the id quoted, between spaces, as a line has it
    /// when the client sent no trace.
    fn field(&self) -> [u8; 44] {
        let mut field = *b" \"Root=1-00000000-000000000000000000000000\" ";
        field[7..42].copy_from_slice(&self.text);
        field
    }

    /// Writes the `X-Amzn-Trace-Id` the load balancer sends the target,
    /// as AWS makes it from the client's (`incoming`): none, this id as
    /// its `Root`; one with a `Root` field, this id inserted first as its
    /// `Self` and the client's other fields kept (a `Self` of its own is
    /// replaced). One without a `Root`, which AWS does not describe, gets
    /// this id as its `Root` and keeps its other fields, less a `Self`
    /// (a `Self` with no `Root` traces nothing).
    pub fn header_value(&self, out: &mut Vec<u8>, incoming: Option<&[u8]>) {
        let Some(incoming) = incoming else {
            out.extend_from_slice(&self.text(b"Root"));
            return;
        };
        // `name=value`, the name's case and the spaces around it as they come.
        let named = |field: &[u8], name: &[u8]| {
            let name_of = field.split(|it| *it == b'=').next().unwrap_or_default();
            field.contains(&b'=') && name_of.trim_ascii().eq_ignore_ascii_case(name)
        };
        let fields = incoming.split(|it| *it == b';').filter(|it| !it.trim_ascii().is_empty());
        let has_root = fields.clone().any(|it| named(it, b"root"));
        out.extend_from_slice(&self.text(if has_root { b"Self" } else { b"Root" }));
        for field in fields.filter(|it| !named(it, b"self")) {
            out.push(b';');
            out.extend_from_slice(field.trim_ascii());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn since(seconds: u64, micros: u64) -> Duration {
        Duration::from_secs(seconds) + Duration::from_micros(micros)
    }

    fn at(seconds: u64, micros: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + since(seconds, micros)
    }

    fn escaped_text(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        escaped(&mut out, text.as_bytes());
        out
    }

    #[test]
    fn an_alb_line_has_aws_fields_in_aws_order() {
        let entry = Entry {
            kind: "http",
            time: since(1_764_633_600, 250),
            connection: &ConnectionText::new(
                "app/public/0123456789abcdef",
                "127.0.0.1:50000".parse().unwrap(),
                None,
                "TID_0000000000000001",
            ),
            target: Some("127.16.0.2:8080"),
            request_processing: Some(Duration::from_micros(120)),
            target_processing: Some(Duration::from_millis(3)),
            response_processing: Some(Duration::from_micros(40)),
            elb_status: 200,
            target_status: Some(200),
            received_bytes: 80,
            sent_bytes: 160,
            request: b"GET http://public.shop.elb.localhost:8080/a?b=c HTTP/1.1",
            user_agent: &escaped_text("curl/8.0 \"quoted\""),
            target_group_arn: Some("arn:aws:elasticloadbalancing:local:000000000000:targetgroup/web/00"),
            trace_id: TraceId::of(0x692e_0000, (0, 1)),
            trace_header: None,
            matched_rule_priority: Some(10),
            request_creation_time: since(1_764_633_600, 0),
            actions: "forward",
            redirect_url: None,
            error_reason: None,
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
        // Over HTTPS, a redirect: the connection's TLS fields, no target,
        // the URL escaped, times past ten seconds, a status past three digits.
        let connection = ConnectionText::new(
            "app/public/0123456789abcdef",
            "10.0.0.1:443".parse().unwrap(),
            Some(("TLS13_AES_128_GCM_SHA256", "TLSv1.3", Some("shop.example"))),
            "TID_00000000000000ff",
        );
        let redirect = Entry {
            kind: "https",
            connection: &connection,
            target: None,
            target_status: None,
            target_processing: None,
            request_processing: Some(Duration::from_micros(12_000_034)),
            elb_status: 1000,
            target_group_arn: None,
            actions: "redirect",
            redirect_url: Some("https://shop.example/\"x\""),
            error_reason: Some("Redirect"),
            ..entry
        };
        assert_eq!(
            redirect.line(),
            "https 2025-12-02T00:00:00.000250Z app/public/0123456789abcdef 10.0.0.1:443 - 12.000034 -1 0.000040 1000 - 80 160 \"GET http://public.shop.elb.localhost:8080/a?b=c HTTP/1.1\" \"curl/8.0 \\\"quoted\\\"\" TLS13_AES_128_GCM_SHA256 TLSv1.3 - \"Root=1-692e0000-000000000000000000000001\" \"shop.example\" \"arn:aws:acm:local:000000000000:certificate/app-public-0123456789abcdef\" 10 2025-12-02T00:00:00.000000Z \"redirect\" \"https://shop.example/\\\"x\\\"\" \"Redirect\" \"-\" \"-\" \"-\" \"-\" TID_00000000000000ff\n"
        );
        // The client sent a trace: the line has the header sent on.
        let header = b"Self=1-692e0000-000000000000000000000001;Root=1-67891233-abcdef012345678912345678";
        let traced = Entry { trace_header: Some(header), ..entry };
        let expected = format!("/web/00 \"{}\" \"-\" \"-\" 10 ", std::str::from_utf8(header).unwrap());
        assert!(traced.line().contains(&expected), "{}", traced.line());
    }

    #[test]
    fn ipv4_addresses_are_written_as_display_writes_them() {
        for octet in 0..=255u8 {
            for ip in [std::net::Ipv4Addr::new(octet, 0, 9, 255), std::net::Ipv4Addr::new(10, octet, 100, octet)] {
                let mut out = Vec::new();
                super::ip(&mut out, IpAddr::V4(ip));
                assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
            }
        }
    }

    #[test]
    fn fields_are_escaped_and_ipv6_addresses_bracketed() {
        let mut out = Vec::new();
        quoted(&mut out, "GET /a\\b\u{1}\"c HTTP/1.1");
        quoted(&mut out, "");
        quoted(&mut out, "x\x7f");
        address(&mut out, "[::1]:8080".parse().unwrap());
        address(&mut out, "10.0.0.255:65535".parse().unwrap());
        seconds(&mut out, Some(Duration::from_micros(12_000_034)));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"GET /a\\\\b\\x01\\\"c HTTP/1.1\"\"-\"\"x\\x7f\"[::1]:808010.0.0.255:6553512.000034"
        );
    }

    #[test]
    fn an_nlb_line_is_aws_nlb_format_with_the_target() {
        let entry = ConnectionEntry {
            kind: "tcp",
            time: at(1_764_633_601, 0),
            elb: "net/edge/0123456789abcdef".to_string(),
            listener: "00112233445566ff".to_string(),
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
        assert_eq!(
            &fields[..5],
            ["tcp", "2.0", "2025-12-02T00:00:01", "net/edge/0123456789abcdef", "00112233445566ff"]
        );
        assert_eq!((fields[7], fields[9], fields[10]), ("1500", "7", "30"));
        assert_eq!((fields[12], fields[14], fields[21]), ("-", "-", "2025-12-01T23:59:59"));
        assert_eq!(fields[22], "127.16.0.9:7000");
        // Over TLS: the certificate's ARN, the protocol as AWS writes it.
        let tls = ConnectionEntry {
            kind: "tls",
            tls_handshake: Some(Duration::from_millis(2)),
            tls_cipher: Some("TLS_AES_128_GCM_SHA256".to_string()),
            tls_protocol: Some("TLSv1.3"),
            domain: Some("edge.shop.elb.localhost".to_string()),
            ..entry
        };
        let line = tls.line();
        let fields: Vec<&str> = line.trim_end().split(' ').collect();
        assert_eq!(fields.len(), 23, "{line}");
        assert_eq!(fields[12], "arn:aws:acm:local:000000000000:certificate/net-edge-0123456789abcdef");
        assert_eq!(
            (fields[14], fields[15], fields[17]),
            ("TLS_AES_128_GCM_SHA256", "tlsv13", "edge.shop.elb.localhost")
        );
    }

    /// The id as the field holds it, without its quotes and spaces.
    fn text(id: &TraceId) -> String {
        let field = String::from_utf8(id.field().to_vec()).unwrap();
        assert!(field.starts_with(" \"") && field.ends_with("\" "), "{field}");
        field[2..field.len() - 2].to_string()
    }

    proptest::proptest! {
        #[test]
        fn decimal8_writes_what_format_writes(value in 0u32..100_000_000) {
            let text = decimal8(value);
            proptest::prop_assert_eq!(std::str::from_utf8(&text).unwrap(), format!("{value:08}"));
            proptest::prop_assert_eq!(&micros6(value % 1_000_000)[..], &decimal::<6>(u64::from(value % 1_000_000))[..]);
        }

        #[test]
        fn nothing_to_escape_is_what_the_table_says(
            mut text in proptest::collection::vec(0x20u8..0x7f, 0..40),
            other: Option<(usize, u8)>,
        ) {
            // Printable ASCII, and at times one byte of any value in it.
            if let Some((at, byte)) = other {
                text.insert(at % (text.len() + 1), byte);
            }
            let expected = !text.iter().any(|&byte| ESCAPED[usize::from(byte)]);
            proptest::prop_assert_eq!(nothing_to_escape(&text), expected);
        }

        #[test]
        fn hex8_writes_what_format_writes(value: u32) {
            let text = hex8(value);
            proptest::prop_assert_eq!(std::str::from_utf8(&text).unwrap(), format!("{value:08x}"));
        }
    }

    #[test]
    fn the_trace_header_sent_on_is_the_one_aws_makes() {
        let id = TraceId::of(0x6789_1233, (0x1245_6789_abcd_ef01, 0x2345_678a));
        let sent = |incoming: Option<&str>| {
            let mut out = Vec::new();
            id.header_value(&mut out, incoming.map(str::as_bytes));
            String::from_utf8(out).unwrap()
        };
        let this = "1-67891233-12456789abcdef012345678a";
        let root = "Root=1-67891233-abcdef012345678912345678";
        // AWS's examples: none sent; a Root; a Root and the application's
        // own field; a Self, whose value is replaced.
        assert_eq!(sent(None), format!("Root={this}"));
        assert_eq!(sent(Some(root)), format!("Self={this};{root}"));
        assert_eq!(sent(Some(&format!("{root};CalledFrom=app"))), format!("Self={this};{root};CalledFrom=app"));
        assert_eq!(
            sent(Some(&format!("Self=1-00000000-000000000000000000000000; {root}"))),
            format!("Self={this};{root}")
        );
        // No Root: this id is the Root, the other fields kept.
        assert_eq!(sent(Some("CalledFrom=app;;")), format!("Root={this};CalledFrom=app"));
        assert_eq!(sent(Some("")), format!("Root={this}"));
        // The log's field is the same id, as AWS logs the header.
        assert_eq!(text(&id), sent(None));
    }

    #[test]
    fn trace_ids_look_like_aws_ones() {
        let id = text(&TraceId::new(1_764_633_600));
        assert!(id.starts_with("Root=1-692e2c00-") && id.len() == "Root=1-692e2c00-".len() + 24, "{id}");
        assert_eq!(resource_id("shop", "public").len(), 16);
        let id = TraceId::of(0x692e_2c00, (0xabc0_0000_0000_0000, 0x0f01));
        assert_eq!(text(&id), "Root=1-692e2c00-abc000000000000000000f01");
    }

    #[test]
    fn blocks_reserved_ahead_are_given_back_by_the_last_log_to_close() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let (first, second) = (AccessLog::open(&path).unwrap(), AccessLog::open(&path).unwrap());
        first.append_with(|out| out.extend_from_slice(b"first\n"));
        let allocated = || std::fs::metadata(&path).map(|it| it.blocks() * 512).unwrap();
        // The writer threads reserve within a tick where the file system can.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while allocated() < RESERVE_AHEAD && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let reserved = allocated() >= RESERVE_AHEAD;
        drop(first);
        // The second log still has the file open: nothing is cut.
        assert_eq!(allocated() >= RESERVE_AHEAD, reserved);
        second.append_with(|out| out.extend_from_slice(b"second\n"));
        drop(second);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "first\nsecond\n");
        assert!(allocated() <= 4096, "{} bytes still allocated", allocated());
    }

    #[test]
    fn lines_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/public/access.log");
        let log = AccessLog::open(&path).unwrap();
        log.append_with(|out| out.extend_from_slice(b"one\n"));
        log.append_with(|out| out.extend_from_slice(b"two\n"));
        drop(log);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&path).unwrap_or_default() != "one\ntwo\n" {
            assert!(std::time::Instant::now() < deadline, "{:?}", std::fs::read_to_string(&path));
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Lines appended from several threads at once reach the file whole,
    /// each thread's in the order it appended them, whether the writer
    /// thread writes the full buffers or (none left to it) their fillers do.
    #[test]
    fn lines_from_several_threads_reach_the_file_whole_and_in_order() {
        for max_queued in [MAX_QUEUED, 0] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("access.log");
            let log = Arc::new(AccessLog::open_with(&path, max_queued).unwrap());
            let (threads, lines) = (3, 20_000);
            let appenders: Vec<_> = (0..threads)
                .map(|thread| {
                    let log = log.clone();
                    std::thread::spawn(move || {
                        for line in 0..lines {
                            log.append_with(|out| {
                                let _ = writeln!(out, "{thread} {line:08} {}", "x".repeat(60));
                            });
                        }
                    })
                })
                .collect();
            for appender in appenders {
                appender.join().unwrap();
            }
            drop(Arc::into_inner(log).expect("the one log left"));
            let text = std::fs::read_to_string(&path).unwrap();
            let mut next = vec![0; threads];
            for line in text.lines() {
                let mut parts = line.split(' ');
                let thread: usize = parts.next().unwrap().parse().unwrap();
                let number: usize = parts.next().unwrap().parse().unwrap();
                assert_eq!(number, next[thread], "thread {thread}'s lines out of order (max_queued {max_queued})");
                assert_eq!(parts.next().map(str::len), Some(60), "a line cut: {line:?}");
                next[thread] += 1;
            }
            assert_eq!(next, vec![lines; threads], "lines lost (max_queued {max_queued})");
        }
    }

    /// A file that takes no more (a disk that stalls: here a FIFO nobody
    /// reads, which holds 64 KiB) holds up the writer thread, not whoever
    /// appends: 2 MiB of lines go into the queue while nothing is read, and
    /// reach the file whole and in order once it takes them again.
    #[test]
    fn a_stalled_file_holds_up_the_writer_thread_not_the_appender() {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let fifo = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a plain system call on a path this test owns.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        // Opened before the log, so that its opening does not wait for a reader.
        let mut reader = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&path).unwrap();
        let log = Arc::new(AccessLog::open(&path).unwrap());
        let lines = 30_000;
        let (appender, finished) = {
            let log = log.clone();
            let (done, finished) = std::sync::mpsc::channel();
            let appender = std::thread::spawn(move || {
                for line in 0..lines {
                    log.append_with(|out| {
                        let _ = writeln!(out, "{line:08} {}", "x".repeat(60));
                    });
                }
                let _ = done.send(());
            });
            (appender, finished)
        };
        finished.recv_timeout(Duration::from_secs(30)).expect("the appends waited for the stalled file");
        appender.join().unwrap();
        // The file takes lines again: everything arrives, in order.
        use std::os::fd::AsRawFd;
        // SAFETY: plain system calls on a descriptor this test owns.
        unsafe {
            let flags = libc::fcntl(reader.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(reader.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
        let read = std::thread::spawn(move || {
            let mut text = String::new();
            reader.read_to_string(&mut text).unwrap();
            text
        });
        drop(Arc::into_inner(log).expect("the one log left"));
        let text = read.join().unwrap();
        let numbers: Vec<usize> = text.lines().map(|line| line[..8].parse().unwrap()).collect();
        assert_eq!(numbers, (0..lines).collect::<Vec<_>>());
    }
}
