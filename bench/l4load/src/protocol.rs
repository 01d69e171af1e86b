//! The wire conventions between the load generators and the sink. What a
//! connection is for is told by its first 4 bytes:
//!
//! - `GET `: a short connection. The client sends exactly [`REQUEST`]
//!   (64 bytes); the sink answers exactly [`RESPONSE`] (64 bytes) and closes.
//!   The client then reads EOF and closes in turn.
//! - `STAT`: the sink answers one JSON line with its counters
//!   (`{"stream_bytes":N,"answered":M}`) and closes. The benchmark asks the
//!   sink directly, before and after a run, to check what a load balancer
//!   really delivered.
//! - anything else: a stream. The sink counts and discards every byte until
//!   EOF, then closes. Stream clients send zeros, so they never look like the
//!   two commands above.

/// The request of a short connection: 64 bytes, starting with `GET `.
pub const REQUEST: &[u8; 64] = b"GET /l4load HTTP/1.0\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";

/// The answer of the sink to [`REQUEST`]: 64 bytes.
pub const RESPONSE: &[u8; 64] = b"HTTP/1.0 200 OK\r\nX-Pad: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n\r\n";

/// The first bytes of a connection asking for the sink's counters.
pub const STAT: &[u8; 4] = b"STAT";

/// How many bytes decide what a connection is for.
pub const HEAD_LEN: usize = 4;
