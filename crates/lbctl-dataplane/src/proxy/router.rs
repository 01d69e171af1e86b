//! Listener rules, compiled once per configuration, and request matching.
//!
//! A listener's rules are sorted by priority and their patterns compiled when
//! a configuration is applied, so that matching a request only compares bytes:
//! no allocation, no locking. The first rule whose conditions all match wins;
//! otherwise the listener's default action applies.

use std::net::IpAddr;
use std::sync::Arc;

use hyper::header::{HeaderName, HOST};
use hyper::{HeaderMap, Method, Request};
use ipnet::IpNet;

use super::action::{self, Action};
use super::target_group::TargetGroup;

/// The parts of a request that rule conditions look at, borrowed from it.
pub struct RequestView<'a> {
    /// Request method.
    pub method: &'a Method,
    /// Host header (or HTTP/2 authority) without its port.
    pub host: Option<&'a [u8]>,
    /// Path without the query.
    pub path: &'a str,
    /// Query without the leading `?`.
    pub query: Option<&'a str>,
    /// All headers.
    pub headers: &'a HeaderMap,
    /// The client's address.
    pub source: IpAddr,
}

impl<'a> RequestView<'a> {
    /// The view of `request` coming from `source`.
    pub fn new<B>(request: &'a Request<B>, source: IpAddr) -> RequestView<'a> {
        let host = match request.headers().get(HOST) {
            Some(value) => Some(value.as_bytes()),
            None => request.uri().authority().map(|it| it.host().as_bytes()),
        };
        RequestView {
            method: request.method(),
            host: host.map(strip_port),
            path: request.uri().path(),
            query: request.uri().query(),
            headers: request.headers(),
            source: source.to_canonical(),
        }
    }
}

/// A host without its `:port` suffix (`[::1]:80` keeps its brackets).
pub fn strip_port(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        return match host.iter().position(|it| *it == b']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.iter().rposition(|it| *it == b':') {
        Some(colon) if host[colon + 1..].iter().all(u8::is_ascii_digit) => &host[..colon],
        _ => host,
    }
}

/// A compiled `*` / `?` wildcard pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    shape: Shape,
    /// Whether ASCII letters match regardless of case; the pattern is then
    /// stored in lower case.
    fold_case: bool,
}

/// The cheapest way to match a pattern, found when it is compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    /// `*`.
    Any,
    /// No wildcard at all.
    Exact(Box<[u8]>),
    /// `text*`.
    Prefix(Box<[u8]>),
    /// `*text`.
    Suffix(Box<[u8]>),
    /// Anything else.
    Glob(Box<[u8]>),
}

impl Pattern {
    /// Compiles `text`; `fold_case` makes ASCII letters case-insensitive.
    pub fn new(text: &str, fold_case: bool) -> Pattern {
        let bytes: Box<[u8]> =
            if fold_case { text.to_ascii_lowercase().into_bytes() } else { text.as_bytes().to_vec() }.into();
        let wild = |it: &u8| *it == b'*' || *it == b'?';
        let shape = match bytes.iter().filter(|it| wild(it)).count() {
            0 => Shape::Exact(bytes),
            _ if bytes.iter().all(|it| *it == b'*') => Shape::Any,
            1 if bytes.last() == Some(&b'*') => Shape::Prefix(bytes[..bytes.len() - 1].into()),
            1 if bytes.first() == Some(&b'*') => Shape::Suffix(bytes[1..].into()),
            _ => Shape::Glob(bytes),
        };
        Pattern { shape, fold_case }
    }

    /// Whether `text` matches.
    pub fn matches(&self, text: &[u8]) -> bool {
        let same = |pattern: &[u8], text: &[u8]| {
            if self.fold_case {
                pattern.len() == text.len() && pattern.iter().zip(text).all(|(p, t)| *p == t.to_ascii_lowercase())
            } else {
                pattern == text
            }
        };
        match &self.shape {
            Shape::Any => true,
            Shape::Exact(pattern) => same(pattern, text),
            Shape::Prefix(prefix) => text.len() >= prefix.len() && same(prefix, &text[..prefix.len()]),
            Shape::Suffix(suffix) => text.len() >= suffix.len() && same(suffix, &text[text.len() - suffix.len()..]),
            Shape::Glob(pattern) => glob(pattern, text, self.fold_case),
        }
    }
}

/// Wildcard matching with backtracking to the last `*` only, which is linear
/// for the patterns rules use. `?` matches one character (a whole UTF-8
/// sequence), `*` any run of characters.
fn glob(pattern: &[u8], text: &[u8], fold_case: bool) -> bool {
    let char_len = |at: usize| {
        let mut end = at + 1;
        while end < text.len() && (text[end] & 0b1100_0000) == 0b1000_0000 {
            end += 1;
        }
        end - at
    };
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it currently absorbs up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let byte = if fold_case { text[t].to_ascii_lowercase() } else { text[t] };
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(b'?') => {
                p += 1;
                t += char_len(t);
            }
            Some(expected) if *expected == byte => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    let next = star_t + char_len(star_t);
                    star = Some((star_p, next));
                    p = star_p + 1;
                    t = next;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|it| *it == b'*')
}

/// A rule's conditions, compiled. Empty lists match everything.
#[derive(Debug, Default)]
pub struct Conditions {
    hosts: Vec<Pattern>,
    paths: Vec<Pattern>,
    header: Option<(HeaderName, Vec<Pattern>)>,
    methods: Vec<Method>,
    query: Vec<(Option<Pattern>, Pattern)>,
    sources: Vec<IpNet>,
}

impl Conditions {
    /// Compiles the spec's conditions; an error names the value that cannot be used.
    pub fn compile(spec: &lbctl_spec::Conditions) -> Result<Conditions, String> {
        let header = match &spec.http_header {
            Some(header) => {
                let name = HeaderName::from_bytes(header.name.as_bytes())
                    .map_err(|_| format!("`{}` is not a valid header name", header.name))?;
                Some((name, header.values.iter().map(|it| Pattern::new(it, true)).collect()))
            }
            None => None,
        };
        let methods = spec
            .http_request_method
            .iter()
            .map(|it| Method::from_bytes(it.as_bytes()).map_err(|_| format!("`{it}` is not an HTTP method")))
            .collect::<Result<_, _>>()?;
        let sources = spec
            .source_ip
            .iter()
            .map(|it| {
                it.parse::<IpNet>()
                    .or_else(|_| it.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("`{it}` is not a CIDR block"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Conditions {
            hosts: spec.host_header.iter().map(|it| Pattern::new(strip_pattern_port(it), true)).collect(),
            paths: spec.path_pattern.iter().map(|it| Pattern::new(it, false)).collect(),
            header,
            methods,
            query: spec
                .query_string
                .iter()
                .map(|it| (it.key.as_deref().map(|key| Pattern::new(key, true)), Pattern::new(&it.value, true)))
                .collect(),
            sources,
        })
    }

    /// Whether every condition matches `request`.
    pub fn matches(&self, request: &RequestView<'_>) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|it| it == request.method))
            && (self.paths.is_empty() || self.paths.iter().any(|it| it.matches(request.path.as_bytes())))
            && (self.hosts.is_empty() || request.host.is_some_and(|host| self.hosts.iter().any(|it| it.matches(host))))
            && self.header_matches(request.headers)
            && self.query_matches(request.query)
            && (self.sources.is_empty() || self.sources.iter().any(|it| it.contains(&request.source)))
    }

    fn header_matches(&self, headers: &HeaderMap) -> bool {
        let Some((name, patterns)) = &self.header else { return true };
        headers.get_all(name).iter().any(|value| patterns.iter().any(|it| it.matches(value.as_bytes())))
    }

    fn query_matches(&self, query: Option<&str>) -> bool {
        if self.query.is_empty() {
            return true;
        }
        let Some(query) = query else { return false };
        self.query.iter().any(|(key, value)| {
            query.split('&').filter(|it| !it.is_empty()).any(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                key.as_ref().is_none_or(|key| key.matches(k.as_bytes())) && value.matches(v.as_bytes())
            })
        })
    }
}

/// A host pattern without a `:port` suffix, as the Host header is compared without one.
fn strip_pattern_port(pattern: &str) -> &str {
    std::str::from_utf8(strip_port(pattern.as_bytes())).unwrap_or(pattern)
}

/// A listener's rules in priority order and its default action.
pub struct Router {
    rules: Vec<(u32, Conditions, Action)>,
    default: Action,
}

impl Router {
    /// Compiles a listener's rules; `resolve` gives the target group of a name.
    /// A rule that cannot be compiled never matches, and is reported.
    pub fn compile(
        listener: &lbctl_spec::Listener,
        resolve: &mut dyn FnMut(&str) -> Arc<TargetGroup>,
    ) -> (Router, Vec<String>) {
        let mut errors = Vec::new();
        let mut rules: Vec<&lbctl_spec::Rule> = listener.rules.iter().collect();
        rules.sort_by_key(|it| it.priority);
        let mut compiled = Vec::with_capacity(rules.len());
        for rule in rules {
            let conditions = Conditions::compile(&rule.conditions);
            let action = action::compile(&rule.action, resolve);
            match (conditions, action) {
                (Ok(conditions), Ok(action)) => compiled.push((rule.priority, conditions, action)),
                (Err(err), _) | (_, Err(err)) => errors.push(format!("rule {}: {err}", rule.priority)),
            }
        }
        let default = action::compile(&listener.default_action, resolve).unwrap_or_else(|err| {
            errors.push(format!("default action: {err}"));
            Action::unavailable()
        });
        (Router { rules: compiled, default }, errors)
    }

    /// The action for `request`: the first matching rule's, else the default.
    #[cfg(test)]
    pub fn route(&self, request: &RequestView<'_>) -> &Action {
        self.route_with_priority(request).1
    }

    /// The action for `request` and the priority of the rule that chose it
    /// (0 for the default action, as AWS logs it).
    pub fn route_with_priority(&self, request: &RequestView<'_>) -> (u32, &Action) {
        self.rules
            .iter()
            .find(|(_, conditions, _)| conditions.matches(request))
            .map(|(priority, _, action)| (*priority, action))
            .unwrap_or((0, &self.default))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lbctl_spec::{HttpHeaderCondition, QueryStringCondition};

    #[test]
    fn wildcard_patterns() {
        fn check(pattern: &str, fold_case: bool, text: &str, expect: bool) {
            assert_eq!(Pattern::new(pattern, fold_case).matches(text.as_bytes()), expect, "{pattern} ~ {text}");
        }
        check("*", false, "", true);
        check("/images/*", false, "/images/a.png", true);
        check("/images/*", false, "/images/", true);
        check("/images/*", false, "/images", false);
        check("/images/*", false, "/Images/a.png", false);
        check("/a/*/c", false, "/a/b/x/c", true);
        check("/a/*/c", false, "/a/b/x/d", false);
        check("/a?c", false, "/abc", true);
        check("/a?c", false, "/ac", false);
        check("/a?c", false, "/aéc", true);
        check("*.img.example.com", true, "x.IMG.example.com", true);
        check("*.img.example.com", true, "img.example.com", false);
        check("image.example.com", true, "IMAGE.Example.COM", true);
        check("image.example.com", false, "IMAGE.example.com", false);
        check("*a*b*", false, "xxaxxbxx", true);
        check("*a*b*", false, "xxbxxaxx", false);
        check("a**b", false, "ab", true);
        check("*ab", false, "aab", true);
        check("/exact", false, "/exact/", false);
    }

    #[test]
    fn ports_are_stripped() {
        fn check(host: &str, expect: &str) {
            assert_eq!(strip_port(host.as_bytes()), expect.as_bytes(), "{host}");
        }
        check("example.com:8080", "example.com");
        check("example.com", "example.com");
        check("[::1]:80", "[::1]");
        check("[::1]", "[::1]");
        check("a:b", "a:b");
    }

    /// A request as `METHOD uri` with headers and a source address.
    fn request(line: &str, headers: &[(&str, &str)], source: &str) -> (Request<()>, IpAddr) {
        let (method, uri) = line.split_once(' ').unwrap();
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        (builder.body(()).unwrap(), source.parse().unwrap())
    }

    #[test]
    fn conditions() {
        fn check(conditions: lbctl_spec::Conditions, line: &str, headers: &[(&str, &str)], expect: bool) {
            let compiled = Conditions::compile(&conditions).unwrap();
            let (req, source) = request(line, headers, "127.0.0.1");
            assert_eq!(
                compiled.matches(&RequestView::new(&req, source)),
                expect,
                "{conditions:?} on {line} {headers:?}"
            );
        }
        let host = |it: &[&str]| lbctl_spec::Conditions {
            host_header: it.iter().map(|it| it.to_string()).collect(),
            ..Default::default()
        };
        let path = |it: &[&str]| lbctl_spec::Conditions {
            path_pattern: it.iter().map(|it| it.to_string()).collect(),
            ..Default::default()
        };
        let method = |it: &[&str]| lbctl_spec::Conditions {
            http_request_method: it.iter().map(|it| it.to_string()).collect(),
            ..Default::default()
        };
        let header = |name: &str, values: &[&str]| lbctl_spec::Conditions {
            http_header: Some(HttpHeaderCondition {
                name: name.into(),
                values: values.iter().map(|it| it.to_string()).collect(),
            }),
            ..Default::default()
        };
        let query = |pairs: &[(Option<&str>, &str)]| lbctl_spec::Conditions {
            query_string: pairs
                .iter()
                .map(|(k, v)| QueryStringCondition { key: k.map(String::from), value: v.to_string() })
                .collect(),
            ..Default::default()
        };

        check(lbctl_spec::Conditions::default(), "GET /", &[], true);
        check(host(&["image.example.com"]), "GET /", &[("host", "Image.Example.com:8080")], true);
        check(host(&["image.example.com"]), "GET /", &[("host", "www.example.com")], false);
        check(host(&["image.example.com"]), "GET /", &[], false);
        check(host(&["x.com", "*.img.example.com"]), "GET /", &[("host", "a.img.example.com")], true);
        check(host(&["image.example.com:8080"]), "GET /", &[("host", "image.example.com")], true);
        check(host(&["a.com"]), "GET http://a.com:9/x", &[], true);
        check(path(&["/images/*"]), "GET /images/a.png?x=1", &[], true);
        check(path(&["/images/*"]), "GET /IMAGES/a.png", &[], false);
        check(path(&["/a", "/b"]), "GET /b", &[], true);
        check(method(&["DELETE"]), "DELETE /", &[], true);
        check(method(&["DELETE"]), "GET /", &[], false);
        check(header("X-Canary", &["1"]), "GET /", &[("x-canary", "1")], true);
        check(header("X-Canary", &["on*"]), "GET /", &[("x-canary", "ON-please")], true);
        check(header("X-Canary", &["1"]), "GET /", &[("x-canary", "2")], false);
        check(header("X-Canary", &["*"]), "GET /", &[], false);
        check(header("X-Canary", &["2"]), "GET /", &[("x-canary", "1"), ("x-canary", "2")], true);
        check(query(&[(Some("version"), "v2")]), "GET /?a=1&version=V2", &[], true);
        check(query(&[(Some("version"), "v2")]), "GET /?version=v3", &[], false);
        check(query(&[(Some("version"), "v2")]), "GET /", &[], false);
        check(query(&[(None, "beta*")]), "GET /?x=betamax", &[], true);
        check(query(&[(None, "beta")]), "GET /?beta", &[], false);
        check(query(&[(Some("beta"), "")]), "GET /?beta", &[], true);
        check(query(&[(Some("a"), "1"), (Some("b"), "2")]), "GET /?b=2", &[], true);
        let both = lbctl_spec::Conditions {
            path_pattern: vec!["/api/*".into()],
            http_request_method: vec!["POST".into()],
            ..Default::default()
        };
        check(both.clone(), "POST /api/x", &[], true);
        check(both, "GET /api/x", &[], false);
    }

    #[test]
    fn source_ips() {
        fn check(cidrs: &[&str], source: &str, expect: bool) {
            let spec = lbctl_spec::Conditions {
                source_ip: cidrs.iter().map(|it| it.to_string()).collect(),
                ..Default::default()
            };
            let compiled = Conditions::compile(&spec).unwrap();
            let (req, source) = request("GET /", &[], source);
            assert_eq!(compiled.matches(&RequestView::new(&req, source)), expect, "{cidrs:?} {source}");
        }
        check(&["127.0.0.0/8"], "127.0.0.5", true);
        check(&["10.0.0.0/8"], "127.0.0.5", false);
        check(&["10.0.0.0/8", "127.0.0.1"], "127.0.0.1", true);
        check(&["127.0.0.0/8"], "::ffff:127.0.0.9", true);
        check(&["::1/128"], "::1", true);
    }

    #[test]
    fn bad_conditions_are_reported() {
        fn check(spec: lbctl_spec::Conditions, expect: &str) {
            assert_eq!(Conditions::compile(&spec).unwrap_err(), expect);
        }
        check(
            lbctl_spec::Conditions { source_ip: vec!["nope".into()], ..Default::default() },
            "`nope` is not a CIDR block",
        );
        check(
            lbctl_spec::Conditions { http_request_method: vec!["G T".into()], ..Default::default() },
            "`G T` is not an HTTP method",
        );
    }

    #[test]
    fn first_rule_by_priority_wins() {
        let yaml = r#"
port: 80
protocol: HTTP
default_action: { fixed_response: { status_code: 404 } }
rules:
  - priority: 20
    conditions: { path_pattern: ["/images/*"] }
    action: { fixed_response: { status_code: 202 } }
  - priority: 10
    conditions: { path_pattern: ["/images/big/*"] }
    action: { fixed_response: { status_code: 201 } }
  - priority: 30
    conditions: { source_ip: ["not-an-ip"] }
    action: { fixed_response: { status_code: 500 } }
"#;
        let listener: lbctl_spec::Listener = serde_yaml::from_str(yaml).unwrap();
        let (router, errors) = Router::compile(&listener, &mut |name| TargetGroup::new("test", name));
        assert_eq!(errors, vec!["rule 30: `not-an-ip` is not a CIDR block".to_string()]);
        fn check(router: &Router, path: &str, expect: u16) {
            let (req, source) = request(&format!("GET {path}"), &[], "127.0.0.1");
            let Action::Fixed(fixed) = router.route(&RequestView::new(&req, source)) else {
                panic!("not a fixed response")
            };
            assert_eq!(fixed.status.as_u16(), expect, "{path}");
        }
        check(&router, "/images/big/x", 201);
        check(&router, "/images/x", 202);
        check(&router, "/other", 404);
    }

    /// Property: compiling rules with any patterns and matching any request
    /// that can be built never panics.
    #[test]
    fn matching_never_panics_on_arbitrary_requests() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        const CASES: u32 = 1000;
        let text = "[ -~\\x{80}-\\x{10FFFF}]{0,24}";
        let bytes = proptest::collection::vec(any::<u8>(), 0..40);
        let cases = (
            proptest::collection::vec(text, 1..4),
            (bytes.clone(), bytes.clone(), bytes.clone()),
            proptest::collection::vec(("[a-zA-Z0-9-]{1,12}", bytes), 0..6),
            any::<[u8; 4]>(),
        );
        let mut runner = TestRunner::new(Config { cases: CASES, failure_persistence: None, ..Config::default() });
        let (compiled, routed) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
        runner
            .run(&cases, |(patterns, (method, target, host), headers, source)| {
                let condition = serde_json::json!({
                    "path_pattern": patterns, "host_header": patterns,
                    "http_header": { "name": "X-Test", "values": patterns },
                    "query_string": [{ "key": patterns[0], "value": patterns[patterns.len() - 1] }],
                });
                let listener = serde_json::json!({
                    "port": 80, "protocol": "HTTP",
                    "default_action": { "fixed_response": { "status_code": 404 } },
                    "rules": [
                        { "priority": 1, "conditions": condition, "action": { "fixed_response": { "status_code": 200 } } },
                        { "priority": 2, "conditions": { "path_pattern": patterns }, "action": { "redirect": { "path": "/#{path}" } } },
                    ],
                });
                let Ok(listener) = serde_json::from_value::<lbctl_spec::Listener>(listener) else { return Ok(()) };
                let (router, _) = Router::compile(&listener, &mut |name| TargetGroup::new("test", name));
                compiled.set(compiled.get() + 1);
                let mut builder = Request::builder();
                if let Ok(method) = Method::from_bytes(&method) {
                    builder = builder.method(method);
                }
                if let Ok(uri) = hyper::Uri::try_from(target) {
                    builder = builder.uri(uri);
                }
                if let Ok(host) = hyper::header::HeaderValue::from_bytes(&host) {
                    builder = builder.header(HOST, host);
                }
                for (name, value) in headers {
                    if let Ok(value) = hyper::header::HeaderValue::from_bytes(&value) {
                        builder = builder.header(name.as_str(), value);
                    }
                }
                let Ok(request) = builder.body(()) else { return Ok(()) };
                router.route(&RequestView::new(&request, IpAddr::from(source)));
                routed.set(routed.get() + 1);
                Ok(())
            })
            .unwrap();
        println!("router property: {} rule sets compiled, {} arbitrary requests matched", compiled.get(), routed.get());
    }
}
