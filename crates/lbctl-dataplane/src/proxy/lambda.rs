//! Lambda targets: a function's command run once per request, as an
//! application load balancer invokes AWS Lambda.
//!
//! The request becomes AWS's ALB event document (`requestContext.elb`,
//! `httpMethod`, `path`, `queryStringParameters`, `headers` with lowercase
//! names, `body`, `isBase64Encoded`) written to the command's stdin; the
//! command's stdout is the response document (`statusCode`, optional
//! `statusDescription`, `headers`, `multiValueHeaders`, `body`,
//! `isBase64Encoded`), which becomes the answer. As in AWS:
//!
//! - the body is passed as text for `text/*`, `application/json`,
//!   `application/javascript` and `application/xml`, base64-encoded otherwise;
//! - query parameters are passed as sent (not URL-decoded), the last value of
//!   a repeated parameter or header wins;
//! - request bodies and response documents are limited to 1 MB (413 / 502);
//! - the function's `timeout` passing gives 504 (its whole process group is
//!   killed), a crash, a non-zero exit or a response that is not a valid
//!   document gives 502.
//!
//! The function's file (`fn/<name>/function.json`) is read on every
//! invocation, which costs little beside starting a process, so a changed
//! function applies to the next request. The command runs in the spec's
//! directory, with the proxy's environment plus the function's `env` and
//! `AWS_LAMBDA_FUNCTION_NAME`; its stderr goes to the proxy's log.

use std::path::PathBuf;
use std::process::Stdio;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Body;
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::runtime::FunctionConfig;

/// The largest request body a function is sent (AWS: 1 MB).
const MAX_REQUEST_BODY: usize = 1024 * 1024;
/// The largest response document a function may answer with (AWS: 1 MB).
const MAX_RESPONSE_DOCUMENT: usize = 1024 * 1024;
/// How many invocations one proxy runs at once; more are answered 503 at
/// once, so that a flood of requests cannot start processes without bound.
const MAX_CONCURRENT_INVOCATIONS: usize = 256;

/// Permits for running invocations, shared by every function of the proxy.
static INVOCATIONS: Semaphore = Semaphore::const_new(MAX_CONCURRENT_INVOCATIONS);

/// Response headers a function may not set: they concern the connection,
/// and the body's length is the proxy's to tell.
static NOT_FROM_FUNCTIONS: [HeaderName; 8] = [
    HeaderName::from_static("connection"),
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("te"),
    HeaderName::from_static("trailer"),
    HeaderName::from_static("transfer-encoding"),
    HeaderName::from_static("upgrade"),
    CONTENT_LENGTH,
];

/// A function registered in a `lambda` target group, as a proxy knows it.
#[derive(Debug)]
pub struct Function {
    /// Function name (its target id).
    pub name: String,
    /// Its `function.json`, read on every invocation.
    file: PathBuf,
    /// How events name the target group.
    target_group_arn: String,
}

impl Function {
    /// Function `name` described by `file`, registered in the target group
    /// whose ARN is `target_group_arn`.
    pub fn new(name: &str, file: PathBuf, target_group_arn: &str) -> Function {
        Function { name: name.to_string(), file, target_group_arn: target_group_arn.to_string() }
    }
}

/// Why an invocation produced no response: the status the client gets and
/// what the proxy's log says.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    detail: String,
}

impl Failure {
    fn bad_gateway(detail: impl Into<String>) -> Failure {
        Failure { status: StatusCode::BAD_GATEWAY, detail: detail.into() }
    }
}

/// Invokes `function` for a request whose headers the proxy has already
/// prepared (`X-Forwarded-*` added, hop-by-hop headers removed), and answers
/// with the function's response or the load balancer's error, and then why
/// it failed, as AWS's access logs name it (`LambdaTimeout`,
/// `LambdaInvalidResponse`, ...).
pub async fn invoke<B>(function: &Function, parts: Parts, body: B) -> (Response<Bytes>, Option<&'static str>)
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match try_invoke(function, parts, body).await {
        Ok(response) => (response, None),
        Err(failure) => {
            let why = match failure.status {
                StatusCode::GATEWAY_TIMEOUT => "LambdaTimeout",
                StatusCode::PAYLOAD_TOO_LARGE => "LambdaResponseTooLarge",
                _ => "LambdaInvalidResponse",
            };
            if failure.status != StatusCode::PAYLOAD_TOO_LARGE {
                let time = crate::runtime::log_time();
                eprintln!("{time} function {}: {} ({})", function.name, failure.status.as_u16(), failure.detail);
            }
            let reason = failure.status.canonical_reason().unwrap_or("Error");
            let mut response = Response::new(Bytes::from(format!("{} {reason}\n", failure.status.as_u16())));
            *response.status_mut() = failure.status;
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            (response, Some(why))
        }
    }
}

async fn try_invoke<B>(function: &Function, parts: Parts, body: B) -> Result<Response<Bytes>, Failure>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let too_large =
        || Failure { status: StatusCode::PAYLOAD_TOO_LARGE, detail: "request body larger than 1 MB".to_string() };
    let declared = parts.headers.get(CONTENT_LENGTH).and_then(|it| it.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|it| it > MAX_REQUEST_BODY as u64) {
        return Err(too_large());
    }
    let body = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(err) => {
            return Err(Failure { status: StatusCode::BAD_REQUEST, detail: format!("reading the request body: {err}") })
        }
    };
    let Ok(_permit) = INVOCATIONS.try_acquire() else {
        let detail = format!("{MAX_CONCURRENT_INVOCATIONS} invocations are already running");
        return Err(Failure { status: StatusCode::SERVICE_UNAVAILABLE, detail });
    };
    // The file names the command to run: used only when it is trusted
    // (this user's, writable by nobody else).
    let file = function.file.clone();
    let read = tokio::task::spawn_blocking(move || crate::runtime::read_trusted(&file)).await;
    let config = match read {
        Ok(Ok(Some(bytes))) => serde_json::from_slice::<FunctionConfig>(&bytes)
            .map_err(|err| Failure::bad_gateway(format!("{}: {err}", function.file.display())))?,
        Ok(Ok(None)) => return Err(Failure::bad_gateway(format!("{} does not exist", function.file.display()))),
        Ok(Err(err)) => return Err(Failure::bad_gateway(format!("{err:#}"))),
        Err(err) => return Err(Failure::bad_gateway(format!("reading {}: {err}", function.file.display()))),
    };
    let event = event(&function.target_group_arn, &parts, &body);
    let output = run(&config, event).await?;
    response(&output).map_err(Failure::bad_gateway)
}

/// The ALB event document for a request.
fn event(target_group_arn: &str, parts: &Parts, body: &[u8]) -> Vec<u8> {
    let mut headers = Map::new();
    for (name, value) in &parts.headers {
        // Repeated headers: the last value wins, as in AWS without multi-value headers.
        headers.insert(name.as_str().to_string(), Value::String(String::from_utf8_lossy(value.as_bytes()).into()));
    }
    let mut query = Map::new();
    for pair in parts.uri.query().unwrap_or("").split('&').filter(|it| !it.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        query.insert(key.to_string(), Value::String(value.to_string()));
    }
    let content_type = parts.headers.get(CONTENT_TYPE).and_then(|it| it.to_str().ok());
    let (body, is_base64_encoded) = match std::str::from_utf8(body) {
        Ok(text) if body.is_empty() || is_text(content_type) => (text.to_string(), false),
        _ => (base64::engine::general_purpose::STANDARD.encode(body), true),
    };
    let event = json!({
        "requestContext": { "elb": { "targetGroupArn": target_group_arn } },
        "httpMethod": parts.method.as_str(),
        "path": parts.uri.path(),
        "queryStringParameters": query,
        "headers": headers,
        "body": body,
        "isBase64Encoded": is_base64_encoded,
    });
    serde_json::to_vec(&event).expect("a JSON value serializes")
}

/// Whether a body of this content type is passed as text (AWS's list).
fn is_text(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else { return false };
    let media_type = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    media_type.starts_with("text/")
        || matches!(media_type.as_str(), "application/json" | "application/javascript" | "application/xml")
}

/// Runs the function's command with `event` on its stdin, within its
/// timeout; its stdout when it exits successfully.
async fn run(config: &FunctionConfig, event: Vec<u8>) -> Result<Vec<u8>, Failure> {
    let Some((first, rest)) = config.settings.command.split_first() else {
        return Err(Failure::bad_gateway("the function has no command"));
    };
    let program = if first == "lbctl" { config.lbctl_exe.as_os_str().to_owned() } else { first.into() };
    let mut command = tokio::process::Command::new(&program);
    command
        .args(rest)
        .current_dir(&config.working_dir)
        .envs(&config.settings.env)
        .env("AWS_LAMBDA_FUNCTION_NAME", &config.name)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // Its own process group, so that a timeout kills what it started too.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|err| Failure::bad_gateway(format!("cannot start `{}`: {err}", program.to_string_lossy())))?;
    // Declared after `child`, so dropped before it: the group is killed while
    // its leader is not yet reaped, so its id cannot have been reused.
    let mut group = KillGroupOnDrop(child.id());
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let invocation = async {
        let write = async move {
            // A function may answer without reading its event: a closed pipe is no error.
            let _ = stdin.write_all(&event).await;
        };
        let read = async {
            let mut output = Vec::new();
            let limit = MAX_RESPONSE_DOCUMENT as u64 + 1;
            (&mut stdout).take(limit).read_to_end(&mut output).await.map(|_| output)
        };
        let ((), output) = tokio::join!(write, read);
        let output = output.map_err(|err| Failure::bad_gateway(format!("reading its output: {err}")))?;
        if output.len() > MAX_RESPONSE_DOCUMENT {
            return Err(Failure::bad_gateway("its response is larger than 1 MB"));
        }
        let status = child.wait().await.map_err(|err| Failure::bad_gateway(format!("waiting for it: {err}")))?;
        group.0 = None;
        if !status.success() {
            return Err(Failure::bad_gateway(format!("it exited with {status}")));
        }
        Ok(output)
    };
    let timeout = config.settings.timeout.get();
    match tokio::time::timeout(timeout, invocation).await {
        Ok(result) => result,
        Err(_) => Err(Failure {
            status: StatusCode::GATEWAY_TIMEOUT,
            detail: format!("timed out after {}", lbctl_spec::Duration(timeout)),
        }),
    }
}

/// Kills a process group when dropped, unless its leader has been reaped.
struct KillGroupOnDrop(Option<u32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0.filter(|it| *it > 1) {
            // SAFETY: kill(2) has no memory-safety preconditions; a negative
            // pid names the process group that the child leads.
            unsafe {
                libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
            }
        }
    }
}

/// The response a function's response document describes.
fn response(document: &[u8]) -> Result<Response<Bytes>, String> {
    let value: Value =
        serde_json::from_slice(document).map_err(|err| format!("its output is not a JSON document: {err}"))?;
    let Value::Object(document) = value else { return Err("its output is not a JSON object".to_string()) };
    let status = match document.get("statusCode") {
        Some(Value::Number(number)) => number.as_u64(),
        Some(Value::String(text)) => text.trim().parse().ok(),
        _ => None,
    }
    .and_then(|it| u16::try_from(it).ok())
    .filter(|it| (100..=599).contains(it))
    .and_then(|it| StatusCode::from_u16(it).ok())
    .ok_or("its response has no valid statusCode")?;

    let is_base64_encoded = match document.get("isBase64Encoded") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(flag)) => *flag,
        Some(_) => return Err("isBase64Encoded is not a boolean".to_string()),
    };
    let body = match document.get("body") {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(text)) if is_base64_encoded => base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(Bytes::from)
            .map_err(|err| format!("its body is not valid base64: {err}"))?,
        Some(Value::String(text)) => Bytes::from(text.clone()),
        Some(_) => return Err("body is not a string".to_string()),
    };

    let mut response = Response::new(body);
    *response.status_mut() = status;
    // `statusDescription` ("200 OK") gives the HTTP/1 reason phrase.
    if let Some(Value::String(description)) = document.get("statusDescription") {
        let phrase = description.trim().strip_prefix(status.as_str()).unwrap_or(description).trim();
        if let Ok(phrase) = hyper::ext::ReasonPhrase::try_from(phrase.as_bytes().to_vec()) {
            response.extensions_mut().insert(phrase);
        }
    }
    for (field, multi) in [("headers", false), ("multiValueHeaders", true)] {
        let Some(map) = document.get(field).filter(|it| !it.is_null()) else { continue };
        let Value::Object(map) = map else { return Err(format!("{field} is not an object")) };
        for (name, values) in map {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("`{name}` is not a header name"))?;
            let values = match (multi, values) {
                (true, Value::Array(values)) => values.iter().map(header_value).collect::<Result<Vec<_>, _>>()?,
                (false, value) => vec![header_value(value)?],
                (true, _) => return Err(format!("multiValueHeaders.{name} is not a list")),
            };
            if NOT_FROM_FUNCTIONS.contains(&name) {
                continue;
            }
            // multiValueHeaders come second and replace a name's values.
            response.headers_mut().remove(&name);
            for value in values {
                response.headers_mut().append(name.clone(), value);
            }
        }
    }
    Ok(response)
}

/// A header value from a response document: a string, number or boolean.
fn header_value(value: &Value) -> Result<HeaderValue, String> {
    let text = match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        other => return Err(format!("header value {other} is not a string")),
    };
    HeaderValue::try_from(text.as_str()).map_err(|_| format!("`{text}` is not a valid header value"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime;
    use http_body_util::Full;
    use hyper::Request;

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn events_follow_the_alb_format() {
        fn check(parts: Parts, body: &[u8], expect: Value) {
            let event: Value = serde_json::from_slice(&event("arn:tg", &parts, body)).unwrap();
            assert_eq!(event, expect);
        }
        check(
            parts("GET", "/a%20b?x=1&y=%2F&x=2&flag", &[("Host", "shop"), ("X-Many", "1"), ("x-many", "2")]),
            b"",
            json!({
                "requestContext": { "elb": { "targetGroupArn": "arn:tg" } },
                "httpMethod": "GET",
                "path": "/a%20b",
                "queryStringParameters": { "x": "2", "y": "%2F", "flag": "" },
                "headers": { "host": "shop", "x-many": "2" },
                "body": "",
                "isBase64Encoded": false,
            }),
        );
        let text = parts("POST", "/", &[("content-type", "application/json; charset=utf-8")]);
        check(
            text,
            b"{\"a\":1}",
            json!({
                "requestContext": { "elb": { "targetGroupArn": "arn:tg" } },
                "httpMethod": "POST", "path": "/", "queryStringParameters": {},
                "headers": { "content-type": "application/json; charset=utf-8" },
                "body": "{\"a\":1}", "isBase64Encoded": false,
            }),
        );
        let binary = parts("PUT", "/up", &[("content-type", "application/octet-stream")]);
        check(
            binary,
            &[0, 159, 146, 150],
            json!({
                "requestContext": { "elb": { "targetGroupArn": "arn:tg" } },
                "httpMethod": "PUT", "path": "/up", "queryStringParameters": {},
                "headers": { "content-type": "application/octet-stream" },
                "body": "AJ+Slg==", "isBase64Encoded": true,
            }),
        );
    }

    #[test]
    fn response_documents() {
        /// Status, body and sorted headers of a response.
        type Expected<'a> = (u16, &'a str, &'a [(&'a str, &'a str)]);
        fn check(document: &str, expect: Result<Expected<'_>, &str>) {
            let got = response(document.as_bytes());
            match (got, expect) {
                (Ok(response), Ok((status, body, headers))) => {
                    let mut got_headers: Vec<(&str, &str)> =
                        response.headers().iter().map(|(k, v)| (k.as_str(), v.to_str().unwrap())).collect();
                    got_headers.sort();
                    assert_eq!(
                        (response.status().as_u16(), &response.body()[..], got_headers),
                        (status, body.as_bytes(), headers.to_vec()),
                        "{document}"
                    );
                }
                (Err(got), Err(expect)) => assert!(got.contains(expect), "{document}: {got}"),
                (got, expect) => panic!("{document}: got {got:?}, expected {expect:?}"),
            }
        }
        check(
            r#"{"statusCode": 201, "statusDescription": "201 Made", "headers": {"X-A": "1", "Content-Length": "99"}, "body": "hi"}"#,
            Ok((201, "hi", &[("x-a", "1")])),
        );
        check(
            r#"{"statusCode": "404", "multiValueHeaders": {"set-cookie": ["a=1", "b=2"]}, "headers": {"set-cookie": "c=3", "x-n": 7}}"#,
            Ok((404, "", &[("set-cookie", "a=1"), ("set-cookie", "b=2"), ("x-n", "7")])),
        );
        check(r#"{"statusCode": 200, "body": "aGk=", "isBase64Encoded": true}"#, Ok((200, "hi", &[])));
        check("not json", Err("not a JSON document"));
        check("[1]", Err("not a JSON object"));
        check(r#"{"body": "x"}"#, Err("no valid statusCode"));
        check(r#"{"statusCode": 42}"#, Err("no valid statusCode"));
        check(r#"{"statusCode": 200, "body": "%%", "isBase64Encoded": true}"#, Err("not valid base64"));
        check(r#"{"statusCode": 200, "headers": {"bad name": "x"}}"#, Err("is not a header name"));
        check(r#"{"statusCode": 200, "headers": {"x": "a\nb"}}"#, Err("is not a valid header value"));
        check(r#"{"statusCode": 200, "body": 5}"#, Err("body is not a string"));
    }

    #[test]
    fn reason_phrases_come_from_status_descriptions() {
        let response = response(br#"{"statusCode": 200, "statusDescription": "200 Fine"}"#).unwrap();
        let phrase = response.extensions().get::<hyper::ext::ReasonPhrase>().unwrap();
        assert_eq!(phrase.as_bytes(), b"Fine");
    }

    /// A function in `dir` running `script` with `sh -c`.
    fn function(dir: &std::path::Path, script: &str, timeout: &str) -> Function {
        let file = dir.join("fn/f/function.json");
        let settings = serde_yaml::from_str::<lbctl_spec::Function>(&format!(
            "{{ command: [sh, -c, {script:?}], timeout: {timeout}, env: {{ WHO: env }} }}"
        ))
        .unwrap()
        .resolve();
        let config = FunctionConfig {
            format: runtime::RUNTIME_FORMAT,
            name: "f".into(),
            settings,
            lbctl_exe: PathBuf::from("/nonexistent/lbctl"),
            working_dir: dir.to_path_buf(),
        };
        runtime::write_json(&file, &config).unwrap();
        Function::new("f", file, "arn:tg")
    }

    async fn call(function: &Function, body: &'static str) -> (u16, String) {
        let request = parts("POST", "/x?q=1", &[("content-type", "text/plain")]);
        let (response, _) = invoke(function, request, Full::new(Bytes::from_static(body.as_bytes()))).await;
        (response.status().as_u16(), String::from_utf8_lossy(response.body()).into_owned())
    }

    #[test]
    fn invocations_answer_time_out_and_fail() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            // The event arrives on stdin; the environment and working directory are the function's.
            let echo = r#"event=$(cat); printf '{"statusCode": 200, "body": "%s %s %s"}' "$WHO" "$AWS_LAMBDA_FUNCTION_NAME" "$(basename "$PWD")"; case "$event" in *'"body":"ping"'*) ;; *) exit 9;; esac"#;
            let name = dir.path().file_name().unwrap().to_string_lossy().into_owned();
            assert_eq!(call(&function(dir.path(), echo, "5s"), "ping").await, (200, format!("env f {name}")));

            let started = std::time::Instant::now();
            let slow = function(dir.path(), "sleep 5 & sleep 5; echo '{}'", "300ms");
            assert_eq!(call(&slow, "").await, (504, "504 Gateway Timeout\n".into()));
            assert!(started.elapsed() < std::time::Duration::from_secs(3), "{:?}", started.elapsed());

            let crash = function(dir.path(), r#"echo '{"statusCode": 200}'; exit 3"#, "5s");
            assert_eq!(call(&crash, "").await, (502, "502 Bad Gateway\n".into()));
            let garbage = function(dir.path(), "echo nope", "5s");
            assert_eq!(call(&garbage, "").await, (502, "502 Bad Gateway\n".into()));
            let deaf = function(dir.path(), r#"echo '{"statusCode": 204}'"#, "5s");
            assert_eq!(call(&deaf, "").await.0, 204, "a function need not read its event");
            let missing = Function::new("gone", dir.path().join("fn/gone/function.json"), "arn:tg");
            assert_eq!(call(&missing, "").await.0, 502);
        });
    }
}
