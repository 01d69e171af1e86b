//! Semantic checks: everything the types alone cannot say.
//!
//! Each check pushes a `Diagnostic` and carries on, so one run reports every
//! problem in the file, not just the first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::model::*;
use crate::{Diagnostic, SpecFile};

/// The shortest health check interval: AWS's is 5s, lbctl's locally
/// shorter for speed, but not a busy loop.
const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(100);

pub(crate) fn check(file: &SpecFile) -> Vec<Diagnostic> {
    let mut checker = Checker { file, found: Vec::new() };
    checker.stack();
    checker.load_balancers();
    checker.target_groups();
    checker.functions();
    checker.autoscaling_groups();
    checker.cycles();
    checker.found
}

struct Checker<'a> {
    file: &'a SpecFile,
    found: Vec<Diagnostic>,
}

/// A name usable in a DNS label and a file name.
fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// "target group `webb` is not defined (defined: web, images); did you mean `web`?"
fn undefined<'a>(kind: &str, name: &str, defined: impl Iterator<Item = &'a String> + Clone) -> String {
    let names: Vec<&str> = defined.map(String::as_str).collect();
    let listed = if names.is_empty() { "none".to_string() } else { names.join(", ") };
    format!("{kind} `{name}` is not defined (defined: {listed}){}", crate::did_you_mean(name, names.iter().copied()))
}

/// The name of an enum value as the spec writes it (`HTTP`, `ip`).
pub fn wire_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => text,
        _ => String::new(),
    }
}

/// Parses a health check matcher: `200`, `200,202`, `200-299`.
pub fn parse_matcher(text: &str) -> Result<Vec<(u16, u16)>, String> {
    parse_codes(text, 100..=599, "an HTTP status code")
}

/// Parses a gRPC health check matcher: gRPC status codes `0` to `99`, as
/// lists and ranges (`0`, `0,12`, `0-99`).
pub fn parse_grpc_matcher(text: &str) -> Result<Vec<(u16, u16)>, String> {
    parse_codes(text, 0..=99, "a gRPC status code (0-99)")
}

/// The status ranges a target group's health check counts as success:
/// HTTP status codes, or gRPC status codes for `GRPC` groups; none for a
/// TCP check.
pub fn health_check_matcher(group: &crate::settings::TargetGroup) -> Result<Vec<(u16, u16)>, String> {
    let Some(matcher) = group.health_check.matcher.as_deref() else { return Ok(Vec::new()) };
    match group.version() {
        ProtocolVersion::Grpc => parse_grpc_matcher(matcher),
        ProtocolVersion::Http1 | ProtocolVersion::Http2 => parse_matcher(matcher),
    }
}

fn parse_codes(text: &str, allowed: std::ops::RangeInclusive<u16>, what: &str) -> Result<Vec<(u16, u16)>, String> {
    let mut ranges = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let (low, high) = match part.split_once('-') {
            Some((low, high)) => (low.trim(), high.trim()),
            None => (part, part),
        };
        let parse = |it: &str| -> Result<u16, String> {
            match it.parse::<u16>() {
                Ok(code) if allowed.contains(&code) => Ok(code),
                _ => Err(format!("invalid matcher `{text}`: `{it}` is not {what}")),
            }
        };
        let (low, high) = (parse(low)?, parse(high)?);
        if low > high {
            return Err(format!("invalid matcher `{text}`: range {low}-{high} is empty"));
        }
        ranges.push((low, high));
    }
    Ok(ranges)
}

/// Where the static IPs of network load balancers without `static_ip`
/// come from (127.251.0.0/16): a given `static_ip` may not be there, so
/// that no allocation can take an address the spec gives.
pub const ALLOCATED_STATIC_IPS: (&str, u8) = ("127.251.0.0/16", 251);

/// The content types of a fixed response: AWS's.
const FIXED_CONTENT_TYPES: [&str; 5] =
    ["text/plain", "text/css", "text/html", "application/javascript", "application/json"];

/// What is wrong with a redirect's parts, by field (`""`: the whole): AWS's
/// placeholders only, a port that is one, an absolute path, and at least
/// one of protocol, host, port and path changed (else it redirects to
/// itself).
fn redirect_problems(redirect: &Redirect) -> Vec<(&'static str, String)> {
    let mut found = Vec::new();
    let parts = [
        ("protocol", &redirect.protocol, "#{protocol}"),
        ("host", &redirect.host, "#{host}"),
        ("port", &redirect.port, "#{port}"),
        ("path", &redirect.path, "/#{path}"),
        ("query", &redirect.query, "#{query}"),
    ];
    for (field, value, _) in parts {
        let Some(value) = value else { continue };
        let mut rest = value.as_str();
        while let Some(start) = rest.find("#{") {
            let Some(end) = rest[start..].find('}') else {
                found.push((field, format!("`{value}` has a `#{{` without its `}}`")));
                break;
            };
            let name = &rest[start + 2..start + end];
            if !["protocol", "host", "port", "path", "query"].contains(&name) {
                let message = format!(
                    "`#{{{name}}}` is not a placeholder: #{{protocol}}, #{{host}}, #{{port}}, #{{path}} or #{{query}}"
                );
                found.push((field, message));
            }
            rest = &rest[start + end + 1..];
        }
        let limit = if field == "query" { 0..=128 } else { 1..=128 };
        if !limit.contains(&value.len()) {
            found.push((field, format!("{field} must be {} to 128 characters", limit.start())));
        }
    }
    if let Some(port) = &redirect.port {
        if port != "#{port}" && !port.parse::<u16>().is_ok_and(|it| it > 0) {
            found.push(("port", format!("`{port}` is not a port (1 to 65535) or #{{port}}")));
        }
    }
    if redirect.path.as_deref().is_some_and(|it| !it.starts_with('/')) {
        found.push(("path", "path must start with `/`".to_string()));
    }
    if redirect.query.as_deref().is_some_and(|it| it.starts_with('?')) {
        found.push(("query", "query is written without its leading `?`".to_string()));
    }
    let unchanged = parts[..4].iter().all(|(_, value, same)| value.as_deref().is_none_or(|it| it == *same));
    if unchanged {
        found.push(("", "this redirect leads to the request's own URL: change at least one of protocol, host, port and path, as AWS requires".to_string()));
    }
    found
}

/// Parses a loopback address (127.0.0.0/8).
fn loopback(text: &str) -> Result<Ipv4Addr, String> {
    match text.parse::<Ipv4Addr>() {
        Ok(ip) if ip.is_loopback() => Ok(ip),
        Ok(_) => Err(format!("`{text}` is not a loopback address; lbctl uses only 127.0.0.0/8")),
        Err(_) => Err(format!("`{text}` is not an IPv4 address")),
    }
}

impl Checker<'_> {
    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.found.push(self.file.diagnostic(path, message));
    }

    /// ` (the default)` when the file does not write `path`.
    fn default_note(&self, path: &str) -> &'static str {
        if self.file.source_map().has(path) {
            ""
        } else {
            " (the default)"
        }
    }

    fn stack(&mut self) {
        let file = self.file;
        let spec = &file.spec;
        if spec.version != 1 {
            let message = format!("unsupported version {}; this lbctl reads version 1", spec.version);
            self.error("version", message);
        }
        if !is_dns_label(&spec.name) {
            let message = format!("stack name `{}` must be a DNS label: a-z, 0-9 and `-`, at most 63", spec.name);
            self.error("name", message);
        }
        let kinds: [(&str, Vec<&String>); 4] = [
            ("load_balancers", spec.load_balancers.keys().collect()),
            ("target_groups", spec.target_groups.keys().collect()),
            ("functions", spec.functions.keys().collect()),
            ("autoscaling_groups", spec.autoscaling_groups.keys().collect()),
        ];
        for (kind, names) in kinds {
            for name in names {
                if !is_dns_label(name) {
                    let message = format!("name `{name}` must be a DNS label: a-z, 0-9 and `-`, at most 63");
                    self.found.push(Diagnostic {
                        location: Some(self.file.source_map().locate_key(&format!("{kind}.{name}"))),
                        ..self.file.diagnostic(&format!("{kind}.{name}"), message)
                    });
                }
            }
        }
    }

    fn load_balancers(&mut self) {
        let file = self.file;
        let spec = &file.spec;
        // (bind address, port, is_udp) -> first listener path using it.
        let mut bound: HashMap<(String, u16, bool), String> = HashMap::new();
        let mut static_ips: BTreeMap<String, String> = BTreeMap::new();
        for (name, lb) in &spec.load_balancers {
            let base = format!("load_balancers.{name}");
            if lb.worker_threads == Some(0) {
                self.error(&format!("{base}.worker_threads"), "worker_threads must be at least 1");
            }
            if lb.max_connections == Some(0) {
                self.error(&format!("{base}.max_connections"), "max_connections must be at least 1");
            }
            let application = lb.kind == LoadBalancerType::Application;
            match (&lb.static_ip, application) {
                (Some(_), true) => {
                    self.error(&format!("{base}.static_ip"), "static_ip applies to network load balancers only")
                }
                (Some(ip), false) => match loopback(ip) {
                    Err(message) => self.error(&format!("{base}.static_ip"), message),
                    Ok(address) if address.octets()[1] == ALLOCATED_STATIC_IPS.1 => {
                        let message = format!(
                            "{ip} is in {}, where lbctl allocates the static IPs of network load balancers that give none; choose another address",
                            ALLOCATED_STATIC_IPS.0
                        );
                        self.error(&format!("{base}.static_ip"), message)
                    }
                    Ok(_) => {
                        if let Some(other) = static_ips.insert(ip.clone(), name.clone()) {
                            let message = format!("static_ip {ip} is already used by load balancer `{other}`");
                            self.error(&format!("{base}.static_ip"), message);
                        }
                    }
                },
                _ => {}
            }
            if lb.listeners.is_empty() {
                self.error(&format!("{base}.listeners"), "a load balancer needs at least one listener");
            }
            // Application load balancers share 127.0.0.1; network ones own their IP.
            let address = if application {
                "127.0.0.1".to_string()
            } else {
                lb.static_ip.clone().unwrap_or_else(|| format!("allocated for {name}"))
            };
            for (idx, listener) in lb.listeners.iter().enumerate() {
                let path = format!("{base}.listeners[{idx}]");
                self.listener(&path, lb, listener);
                let key = (address.clone(), listener.port, listener.protocol == ListenerProtocol::Udp);
                if let Some(other) = bound.get(&key) {
                    let message = format!("port {} on {} is already used by {other}", listener.port, key.0);
                    self.error(&format!("{path}.port"), message);
                } else {
                    bound.insert(key, path.clone());
                }
            }
        }
    }

    fn listener(&mut self, path: &str, lb: &LoadBalancer, listener: &Listener) {
        use ListenerProtocol::*;
        let application = lb.kind == LoadBalancerType::Application;
        let allowed = if application {
            [Http, Https].contains(&listener.protocol)
        } else {
            [Tcp, Tls, Udp].contains(&listener.protocol)
        };
        if !allowed {
            let kind = if application { "application: HTTP or HTTPS" } else { "network: TCP, TLS or UDP" };
            let message = format!("protocol {} is not valid here ({kind})", wire_name(&listener.protocol));
            self.error(&format!("{path}.protocol"), message);
        }
        if listener.port == 0 {
            self.error(&format!("{path}.port"), "port must be between 1 and 65535");
        }
        let needs_certificate = matches!(listener.protocol, Https | Tls);
        match (&listener.certificate, needs_certificate) {
            (None, true) => {
                self.error(path, "HTTPS and TLS listeners need a certificate (self_signed or { cert, key })")
            }
            (Some(_), false) => {
                self.error(&format!("{path}.certificate"), "only HTTPS and TLS listeners take a certificate")
            }
            _ => {}
        }
        self.action(&format!("{path}.default_action"), lb, listener.protocol, &listener.default_action);
        if !application && !listener.rules.is_empty() {
            self.error(&format!("{path}.rules"), "network load balancer listeners have no rules");
        }
        let mut priorities: BTreeMap<u32, usize> = BTreeMap::new();
        for (idx, rule) in listener.rules.iter().enumerate() {
            let rule_path = format!("{path}.rules[{idx}]");
            if !(1..=50_000).contains(&rule.priority) {
                self.error(&format!("{rule_path}.priority"), "priority must be between 1 and 50000");
            }
            if let Some(first) = priorities.insert(rule.priority, idx) {
                let message = format!("priority {} is already used by rules[{first}] of this listener", rule.priority);
                self.error(&format!("{rule_path}.priority"), message);
            }
            self.conditions(&format!("{rule_path}.conditions"), &rule.conditions);
            self.action(&format!("{rule_path}.action"), lb, listener.protocol, &rule.action);
        }
    }

    fn conditions(&mut self, path: &str, conditions: &Conditions) {
        if conditions == &Conditions::default() && !self.file.source_map().has(&format!("{path}.path_pattern")) {
            self.error(path, "a rule needs at least one condition");
        }
        for (idx, cidr) in conditions.source_ip.iter().enumerate() {
            let valid = cidr.parse::<ipnet::IpNet>().is_ok() || cidr.parse::<std::net::IpAddr>().is_ok();
            if !valid {
                self.error(&format!("{path}.source_ip[{idx}]"), format!("`{cidr}` is not a CIDR block"));
            }
        }
        for (idx, method) in conditions.http_request_method.iter().enumerate() {
            if method.is_empty()
                || method.len() > 40
                || !method.bytes().all(|b| b.is_ascii_uppercase() || b == b'_' || b == b'-')
            {
                let message = format!("`{method}` is not a method name (A-Z, `_`, `-`, at most 40)");
                self.error(&format!("{path}.http_request_method[{idx}]"), message);
            }
        }
        if let Some(header) = &conditions.http_header {
            if header.values.is_empty() {
                self.error(&format!("{path}.http_header.values"), "http_header needs at least one value");
            }
            let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if header.name.is_empty() || header.name.len() > 40 || !header.name.bytes().all(token) {
                let message = format!("`{}` is not a header name (a token of at most 40 characters)", header.name);
                self.error(&format!("{path}.http_header.name"), message);
            }
        }
        // AWS: at most three values to match per condition and five per
        // rule, each at most 128 visible ASCII characters, five wildcards
        // per rule at most.
        let header_values = conditions.http_header.as_ref().map(|it| it.values.as_slice()).unwrap_or_default();
        let query_values: Vec<&str> = conditions
            .query_string
            .iter()
            .flat_map(|it| it.key.as_deref().into_iter().chain([it.value.as_str()]))
            .collect();
        // Each condition: its field, how many values it matches, and the
        // patterns among them (a query string pair matches once, with a
        // pattern for its key and one for its value).
        fn strings(values: &[String]) -> Vec<&str> {
            values.iter().map(String::as_str).collect()
        }
        let lists: [(&str, usize, Vec<&str>); 6] = [
            ("host_header", conditions.host_header.len(), strings(&conditions.host_header)),
            ("path_pattern", conditions.path_pattern.len(), strings(&conditions.path_pattern)),
            ("http_header.values", header_values.len(), strings(header_values)),
            ("http_request_method", conditions.http_request_method.len(), Vec::new()),
            ("source_ip", conditions.source_ip.len(), Vec::new()),
            ("query_string", conditions.query_string.len(), query_values),
        ];
        let mut evaluations = 0;
        let mut wildcards = 0;
        for (field, count, patterns) in &lists {
            let count = *count;
            let field_path = format!("{path}.{field}");
            if count == 0 && self.file.source_map().has(&field_path) && *field != "http_header.values" {
                self.error(&field_path, format!("{field} needs at least one value"));
            }
            if count > 3 {
                self.error(&field_path, format!("{field} has {count} values; a condition takes at most 3, as on AWS"));
            }
            evaluations += count;
            for value in patterns {
                wildcards += value.bytes().filter(|b| matches!(b, b'*' | b'?')).count();
                let visible = value.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
                if value.is_empty() && *field != "query_string" || value.len() > 128 || !visible {
                    let message = format!("`{value}`: a value to match is 1 to 128 visible ASCII characters");
                    self.error(&field_path, message);
                }
            }
        }
        for (idx, host) in conditions.host_header.iter().enumerate() {
            if !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.*?".contains(&b)) {
                let message = format!("`{host}` is not a host name pattern (a-z, 0-9, `-`, `.`, `*`, `?`)");
                self.error(&format!("{path}.host_header[{idx}]"), message);
            }
        }
        for (idx, pattern) in conditions.path_pattern.iter().enumerate() {
            if !pattern.is_empty() && !pattern.starts_with('/') && !pattern.starts_with('*') {
                self.error(
                    &format!("{path}.path_pattern[{idx}]"),
                    format!("path pattern `{pattern}` must start with `/`"),
                );
            }
        }
        if evaluations > 5 {
            self.error(path, format!("this rule has {evaluations} values to match; a rule takes at most 5, as on AWS"));
        }
        if wildcards > 5 {
            self.error(path, format!("this rule has {wildcards} wildcards; a rule takes at most 5, as on AWS"));
        }
    }

    fn action(&mut self, path: &str, lb: &LoadBalancer, listener: ListenerProtocol, action: &Action) {
        let application = lb.kind == LoadBalancerType::Application;
        let Some(kind) = action.kind() else {
            self.error(path, "an action is exactly one of forward, redirect, fixed_response");
            return;
        };
        match kind {
            ActionKind::Forward(Forward::Single(group)) => {
                self.forward_target(&format!("{path}.forward"), application, listener, group)
            }
            ActionKind::Forward(Forward::Weighted(list)) => {
                if !application {
                    self.error(&format!("{path}.forward"), "network load balancers forward to one target group");
                }
                if list.is_empty() || list.len() > 5 {
                    self.error(&format!("{path}.forward"), "a weighted forward takes 1 to 5 target groups");
                }
                if !list.is_empty() && list.iter().all(|it| it.weight() == 0) {
                    self.error(&format!("{path}.forward"), "at least one weight must be above 0");
                }
                let mut seen = BTreeSet::new();
                for (idx, item) in list.iter().enumerate() {
                    let item_path = format!("{path}.forward[{idx}]");
                    if item.weight() > 999 {
                        self.error(&format!("{item_path}.weight"), "weight must be between 0 and 999");
                    }
                    if !seen.insert(item.target_group.as_str()) {
                        let message = format!("target group `{}` appears twice", item.target_group);
                        self.error(&format!("{item_path}.target_group"), message);
                    }
                    self.forward_target(
                        &format!("{item_path}.target_group"),
                        application,
                        listener,
                        &item.target_group,
                    );
                }
            }
            ActionKind::Redirect(redirect) => {
                if !application {
                    self.error(path, "network load balancers only forward");
                }
                if ![301, 302].contains(&redirect.status()) {
                    self.error(&format!("{path}.redirect.status_code"), "redirect status_code must be 301 or 302");
                }
                if let Some(protocol) = &redirect.protocol {
                    if !["HTTP", "HTTPS", "#{protocol}"].contains(&protocol.as_str()) {
                        self.error(&format!("{path}.redirect.protocol"), "protocol must be HTTP, HTTPS or #{protocol}");
                    }
                }
                for (field, message) in redirect_problems(redirect) {
                    let at =
                        if field.is_empty() { format!("{path}.redirect") } else { format!("{path}.redirect.{field}") };
                    self.error(&at, message);
                }
            }
            ActionKind::FixedResponse(fixed) => {
                if !application {
                    self.error(path, "network load balancers only forward");
                }
                if !(200..=599).contains(&fixed.status_code) || (300..400).contains(&fixed.status_code) {
                    let message = "fixed_response status_code must be 2XX, 4XX or 5XX";
                    self.error(&format!("{path}.fixed_response.status_code"), message);
                }
                if let Some(body) = fixed.body.as_deref().filter(|it| it.chars().count() > 1024) {
                    let count = body.chars().count();
                    let message = format!("body is {count} characters; a fixed response's is at most 1024, as on AWS");
                    self.error(&format!("{path}.fixed_response.body"), message);
                }
                if let Some(kind) = fixed.content_type.as_deref().filter(|it| !FIXED_CONTENT_TYPES.contains(it)) {
                    let message =
                        format!("content_type `{kind}` is not one AWS serves: {}", FIXED_CONTENT_TYPES.join(", "));
                    self.error(&format!("{path}.fixed_response.content_type"), message);
                }
            }
        }
    }

    /// A forward from a `listener` of that protocol to `group_name`: AWS's
    /// pairs are HTTP and HTTPS listeners to HTTP and HTTPS groups, TCP to
    /// TCP or alb groups, TLS to TCP groups, UDP to UDP groups.
    fn forward_target(&mut self, path: &str, application: bool, listener: ListenerProtocol, group_name: &str) {
        let Some(group) = self.file.spec.target_groups.get(group_name) else {
            self.error(path, undefined("target group", group_name, self.file.spec.target_groups.keys()));
            return;
        };
        let group = group.resolve();
        let l7 = matches!(group.protocol, TargetProtocol::Http | TargetProtocol::Https)
            || group.target_type == TargetType::Lambda;
        if application && group.target_type == TargetType::Alb {
            // Said once and plainly: the group's own protocol is not the point.
            let message = format!(
                "target group `{group_name}` has target_type alb; only network load balancers forward to alb target groups, as on AWS"
            );
            self.error(path, message);
            return;
        }
        if application && !l7 {
            let message = format!(
                "target group `{group_name}` is {}; application load balancers forward to HTTP or HTTPS groups",
                wire_name(&group.protocol)
            );
            self.error(path, message);
        }
        if application {
            return;
        }
        if l7 {
            self.error(path, format!("target group `{group_name}` is not TCP or UDP; network load balancers forward to TCP or UDP groups"));
            return;
        }
        let fits = match listener {
            ListenerProtocol::Tcp => group.protocol == TargetProtocol::Tcp,
            ListenerProtocol::Tls => group.protocol == TargetProtocol::Tcp && group.target_type != TargetType::Alb,
            ListenerProtocol::Udp => group.protocol == TargetProtocol::Udp,
            // Not a network listener: said at its protocol.
            ListenerProtocol::Http | ListenerProtocol::Https => true,
        };
        if !fits {
            let (listener, target) = (wire_name(&listener), wire_name(&group.protocol));
            let message = if group.target_type == TargetType::Alb {
                format!("a {listener} listener cannot forward to target group `{group_name}` (target_type alb): only TCP listeners forward to an application load balancer, as on AWS")
            } else {
                format!("a {listener} listener cannot forward to {target} target group `{group_name}`: TCP and TLS listeners forward to TCP groups, UDP listeners to UDP groups, as on AWS")
            };
            self.error(path, message);
        }
    }

    fn target_groups(&mut self) {
        let file = self.file;
        let spec = &file.spec;
        for (name, written) in &spec.target_groups {
            let base = format!("target_groups.{name}");
            self.no_effect(&base, written);
            let group = written.resolve();
            if group.port == Some(0) {
                self.error(&format!("{base}.port"), "port must be between 1 and 65535");
            }
            let health = &group.health_check;
            if let Err(message) = health_check_matcher(&group) {
                self.error(&format!("{base}.health_check.matcher"), message);
            }
            if health.path.as_deref().is_some_and(|it| !it.starts_with('/')) {
                self.error(&format!("{base}.health_check.path"), "path must start with `/`");
            }
            if health.timeout.get() > health.interval.get() {
                let (timeout, interval) =
                    (format!("{base}.health_check.timeout"), format!("{base}.health_check.interval"));
                let message = format!(
                    "timeout {}{} must not be longer than interval {}{}",
                    health.timeout,
                    self.default_note(&timeout),
                    health.interval,
                    self.default_note(&interval)
                );
                // Shown where the user wrote something: a default has no place in the file.
                let at = if self.file.source_map().has(&timeout) { timeout } else { interval };
                self.error(&at, message);
            }
            if health.interval.get().is_zero() || health.timeout.get().is_zero() {
                self.error(&format!("{base}.health_check"), "interval and timeout must be above 0s");
            } else if health.interval.get() < MIN_HEALTH_INTERVAL {
                // Shorter than AWS's 5s for local speed, but no busy loop.
                self.error(&format!("{base}.health_check.interval"), "interval must be at least 100ms");
            }
            if health.interval.get() > Duration::from_secs(300) {
                self.error(&format!("{base}.health_check.interval"), "interval must be at most 300s, as on AWS");
            }
            if health.port == HealthCheckPort::Number(0) {
                self.error(&format!("{base}.health_check.port"), "port must be between 1 and 65535");
            }
            if let Some(path) = health.path.as_deref() {
                if path.len() > 1024 || path.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
                    let message = "path must be at most 1024 characters, without spaces or control characters";
                    self.error(&format!("{base}.health_check.path"), message);
                }
            }
            let slow_start = group.slow_start.get();
            if slow_start > Duration::from_secs(900) {
                self.error(&format!("{base}.slow_start"), "slow_start must be at most 900s, as on AWS");
            }
            if group.stickiness.enabled {
                let duration = group.stickiness.duration.get();
                if duration < Duration::from_secs(1) || duration > Duration::from_secs(7 * 86_400) {
                    self.error(&format!("{base}.stickiness.duration"), "duration must be between 1s and 7d, as on AWS");
                }
            }
            for (field, value) in
                [("healthy_threshold", health.healthy_threshold), ("unhealthy_threshold", health.unhealthy_threshold)]
            {
                if !(1..=10).contains(&value) {
                    self.error(&format!("{base}.health_check.{field}"), format!("{field} must be between 1 and 10"));
                }
            }
            if group.deregistration_delay.get() > std::time::Duration::from_secs(3600) {
                self.error(&format!("{base}.deregistration_delay"), "deregistration_delay must be at most 1h");
            }
            self.targets(&base, &group);
        }
    }

    /// Fields written where they have no effect: an error each, never a
    /// silently ignored setting.
    fn no_effect(&mut self, base: &str, group: &TargetGroup) {
        let lambda = group.target_type == Some(TargetType::Lambda);
        let network = group.is_network();
        let resolved = group.resolve();
        let tcp_check = resolved.health_check.protocol == Some(HealthCheckProtocol::Tcp);
        let health = group.health_check.clone().unwrap_or_default();
        let stickiness = group.stickiness.clone().unwrap_or_default();
        let checks = [
            (lambda && group.protocol.is_some(), "protocol", "lambda target groups have no protocol"),
            (lambda && group.port.is_some(), "port", "lambda target groups have no port"),
            (
                (lambda || network) && group.protocol_version.is_some(),
                "protocol_version",
                "protocol_version applies to HTTP and HTTPS target groups only",
            ),
            (
                network && group.algorithm.is_some(),
                "algorithm",
                "network load balancers pick targets by flow hash; algorithm applies to HTTP and HTTPS target groups",
            ),
            (
                lambda && group.algorithm.is_some(),
                "algorithm",
                "a lambda target group has one function; algorithm applies to instance and ip target groups",
            ),
            (
                (lambda || network) && group.slow_start.is_some(),
                "slow_start",
                "slow_start applies to the instance and ip target groups of application load balancers only",
            ),
            (
                (lambda || network) && group.stickiness.is_some(),
                "stickiness",
                "stickiness applies to the instance and ip target groups of application load balancers only",
            ),
            (
                !network && group.proxy_protocol_v2 == Some(true),
                "proxy_protocol_v2",
                "proxy_protocol_v2 applies to network load balancers' target groups (TCP) only",
            ),
            (
                lambda && health.port.is_some(),
                "health_check.port",
                "a lambda function is checked by invoking it; its health check has no port",
            ),
            (
                lambda && health.protocol.is_some(),
                "health_check.protocol",
                "a lambda function is checked by invoking it; its health check has no protocol",
            ),
            (
                lambda && group.deregistration_delay.is_some(),
                "deregistration_delay",
                "lambda target groups do not drain",
            ),
            (
                !lambda && health.enabled.is_some(),
                "health_check.enabled",
                "health checks are always on for instance, ip and alb target groups (as on AWS); enabled applies to lambda groups",
            ),
            (tcp_check && health.path.is_some(), "health_check.path", "a TCP health check has no path"),
            (tcp_check && health.matcher.is_some(), "health_check.matcher", "a TCP health check has no matcher"),
            (
                stickiness.duration.is_some() && stickiness.enabled != Some(true),
                "stickiness.duration",
                "duration has no effect with stickiness off; set `enabled: true` or remove it",
            ),
        ];
        for (broken, field, message) in checks {
            if broken {
                self.error(&format!("{base}.{field}"), message);
            }
        }
    }

    fn targets(&mut self, base: &str, group: &crate::settings::TargetGroup) {
        let spec = &self.file.spec;
        let mut found = Vec::new();
        for (idx, target) in group.targets.iter().enumerate() {
            let path = format!("{base}.targets[{idx}]");
            let given =
                [target.ip.is_some(), target.function.is_some(), target.load_balancer.is_some(), target.id.is_some()];
            let (field, expected) = match group.target_type {
                TargetType::Ip => ("ip", 0),
                TargetType::Lambda => ("function", 1),
                TargetType::Alb => ("load_balancer", 2),
                TargetType::Instance => ("id", 3),
            };
            if given.iter().filter(|it| **it).count() != 1 || !given[expected] {
                let hint = if group.target_type == TargetType::Instance && target.ip.is_some() {
                    " (an instance by id; use target_type: ip for fixed addresses)"
                } else {
                    ""
                };
                let message =
                    format!("a target of an {} group is `{{ {field}: ... }}`{hint}", wire_name(&group.target_type));
                found.push((path.clone(), message));
                continue;
            }
            if let Some(id) = &target.id {
                let hex =
                    id.strip_prefix("i-").filter(|it| !it.is_empty() && it.bytes().all(|b| b.is_ascii_hexdigit()));
                if hex.is_none() {
                    found.push((format!("{path}.id"), format!("`{id}` is not an instance id (`i-` and hex digits)")));
                }
            }
            if let Some(ip) = &target.ip {
                // Locally, targets are on loopback; on AWS, in the VPC.
                let checked = match spec.provider() {
                    crate::ProviderName::Local => loopback(ip).map(|_| ()),
                    crate::ProviderName::Aws => {
                        ip.parse::<Ipv4Addr>().map(|_| ()).map_err(|_| format!("`{ip}` is not an IPv4 address"))
                    }
                };
                if let Err(message) = checked {
                    found.push((format!("{path}.ip"), message));
                }
                if target.port.or(group.port).is_none() {
                    found.push((path.clone(), "no port: set the target's port or the group's".to_string()));
                }
            }
            if target.port == Some(0) {
                found.push((format!("{path}.port"), "port must be between 1 and 65535".to_string()));
            }
            if let Some(function) = &target.function {
                if target.port.is_some() {
                    found.push((format!("{path}.port"), "a function target has no port".to_string()));
                }
                if !spec.functions.contains_key(function) {
                    found.push((format!("{path}.function"), undefined("function", function, spec.functions.keys())));
                }
            }
            if let Some(lb_name) = &target.load_balancer {
                match spec.load_balancers.get(lb_name) {
                    None => found.push((
                        format!("{path}.load_balancer"),
                        undefined("load balancer", lb_name, spec.load_balancers.keys()),
                    )),
                    Some(lb) if lb.kind != LoadBalancerType::Application => found.push((
                        format!("{path}.load_balancer"),
                        format!("load balancer `{lb_name}` is not an application load balancer"),
                    )),
                    Some(lb) => {
                        // AWS: the group's port is the ALB listener traffic goes to.
                        let ports: Vec<String> = lb.listeners.iter().map(|it| it.port.to_string()).collect();
                        let port = target.port.or(group.port);
                        if !port.is_some_and(|port| lb.listeners.iter().any(|it| it.port == port)) {
                            let message = format!(
                                "the port of an alb target must be a listener port of `{lb_name}` ({}); set the group's port",
                                ports.join(", ")
                            );
                            found.push((path.clone(), message));
                        }
                    }
                }
            }
        }
        if matches!(group.target_type, TargetType::Lambda | TargetType::Alb) && group.targets.len() > 1 {
            let what = if group.target_type == TargetType::Lambda { "one function" } else { "one load balancer" };
            found.push((
                format!("{base}.targets"),
                format!("a {} target group has {what} as its target, as on AWS", wire_name(&group.target_type)),
            ));
        }
        if matches!(group.target_type, TargetType::Alb) && group.protocol != TargetProtocol::Tcp {
            found.push((format!("{base}.protocol"), "alb target groups use protocol TCP".to_string()));
        }
        if matches!(group.target_type, TargetType::Alb) && group.health_check.protocol == Some(HealthCheckProtocol::Tcp)
        {
            found.push((
                format!("{base}.health_check.protocol"),
                "an application load balancer as a target is checked over HTTP or HTTPS, as on AWS".to_string(),
            ));
        }
        for (path, message) in found {
            self.error(&path, message);
        }
    }

    fn functions(&mut self) {
        let file = self.file;
        let spec = &file.spec;
        for (name, function) in &spec.functions {
            let base = format!("functions.{name}");
            self.command(&base, &function.command, &function.env, false);
            if function.resolve().timeout.get().is_zero() {
                self.error(&format!("{base}.timeout"), "timeout must be above 0s");
            }
        }
    }

    fn autoscaling_groups(&mut self) {
        let file = self.file;
        let spec = &file.spec;
        for (name, group) in &spec.autoscaling_groups {
            let base = format!("autoscaling_groups.{name}");
            let desired = group.desired();
            if group.min_size > group.max_size {
                let message = format!("min_size ({}) is greater than max_size ({})", group.min_size, group.max_size);
                self.error(&format!("{base}.min_size"), message);
            }
            if desired < group.min_size {
                let message = format!("desired_capacity ({desired}) is less than min_size ({})", group.min_size);
                self.error(&format!("{base}.desired_capacity"), message);
            }
            if desired > group.max_size {
                let message = format!("desired_capacity ({desired}) is greater than max_size ({})", group.max_size);
                self.error(&format!("{base}.desired_capacity"), message);
            }
            if let Some(capacity) = group.wait_for_elb_capacity.filter(|it| *it > group.max_size) {
                let message = format!(
                    "wait_for_elb_capacity ({capacity}) is greater than max_size ({}): apply would never finish",
                    group.max_size
                );
                self.error(&format!("{base}.wait_for_elb_capacity"), message);
            }
            self.command(
                &format!("{base}.launch_template"),
                &group.launch_template.command,
                &group.launch_template.env,
                true,
            );
            if group.launch_template.port == Some(0) {
                self.error(&format!("{base}.launch_template.port"), "port must be between 1 and 65535");
            }
            for (idx, group_name) in group.target_groups.iter().enumerate() {
                let path = format!("{base}.target_groups[{idx}]");
                match spec.target_groups.get(group_name) {
                    None => self.error(&path, undefined("target group", group_name, spec.target_groups.keys())),
                    Some(target_group) if target_group.resolve().target_type != TargetType::Instance => {
                        let message = format!(
                            "target group `{group_name}` has target_type {}; autoscaling groups register in instance groups",
                            wire_name(&target_group.resolve().target_type)
                        );
                        self.error(&path, message);
                    }
                    Some(_) => {}
                }
            }
            if let Some(refresh) = &group.instance_refresh {
                if refresh.min_healthy_percentage.unwrap_or(90) > 100 {
                    self.error(
                        &format!("{base}.instance_refresh.min_healthy_percentage"),
                        "min_healthy_percentage must be between 0 and 100",
                    );
                }
            }
            if let Some(scaling) = &group.scaling {
                let value = scaling.target_tracking.target_value;
                if !(value.is_finite() && value > 0.0) {
                    self.error(&format!("{base}.scaling.target_tracking.target_value"), "target_value must be above 0");
                }
            }
        }
    }

    /// A command and its environment, under `base` (`command`, `env`): a
    /// program to run, words and values without NUL, variable names without
    /// `=`, and in launch templates only the placeholders instances get.
    fn command(&mut self, base: &str, command: &[String], env: &BTreeMap<String, String>, placeholders: bool) {
        if command.is_empty() {
            self.error(&format!("{base}.command"), "command must not be empty");
        } else if command[0].trim().is_empty() {
            self.error(&format!("{base}.command[0]"), "the program to run must not be empty");
        }
        for (idx, word) in command.iter().enumerate() {
            let path = format!("{base}.command[{idx}]");
            if word.contains('\0') {
                self.error(&path, "a word of a command cannot hold a NUL character");
            }
            let mut rest = word.as_str();
            while let Some(start) = rest.find('{') {
                let Some(end) = rest[start..].find('}') else { break };
                let name = &rest[start + 1..start + end];
                // A near miss of a placeholder (`{ipp}`) is a mistake; other
                // braces are the command's own (`awk '{print}'`, `${HOME}`),
                // left as they are, as the supervisor leaves them.
                let known = ["ip", "port", "instance_id"];
                let shell = rest[..start].ends_with('$');
                let near = crate::suggestion(name, known).filter(|_| !known.contains(&name) && !shell);
                if let (true, Some(meant)) = (placeholders, near) {
                    let message = format!(
                        "`{{{name}}}` is not a placeholder ({{ip}}, {{port}} or {{instance_id}}); did you mean `{{{meant}}}`?"
                    );
                    self.error(&path, message);
                }
                rest = &rest[start + end + 1..];
            }
        }
        for (name, value) in env {
            let path = format!("{base}.env.{name}");
            if name.is_empty() || name.contains(['=', '\0']) {
                self.error(&path, format!("`{name}` is not an environment variable name: not empty, no `=` or NUL"));
            }
            if value.contains('\0') {
                self.error(&path, "an environment value cannot hold a NUL character");
            }
        }
    }

    /// Load balancer -> target group (forward) -> load balancer (alb
    /// target) reference cycles, then forwarding loops: listener -> group
    /// -> listener, where a group's target is a listener of the stack (an
    /// alb target, or an ip target at a listener's address and port).
    fn cycles(&mut self) {
        let file = self.file;
        let spec = &file.spec;
        for (lb_name, lb) in &spec.load_balancers {
            let mut path = vec![format!("load_balancers.{lb_name}")];
            if let Some(cycle) = find_reference_cycle(spec, lb, &mut path) {
                let message = format!("reference cycle: {}", cycle.join(" -> "));
                self.error(&format!("load_balancers.{lb_name}"), message);
                return;
            }
        }
        for (lb_name, lb) in &spec.load_balancers {
            for listener in &lb.listeners {
                let start = (lb_name.clone(), listener.port);
                let mut path = vec![format!("load_balancers.{lb_name} (port {})", listener.port)];
                if let Some(cycle) = find_loop(spec, &start, &start, &mut path, &mut BTreeSet::new()) {
                    let message = format!("forwarding loop: {}", cycle.join(" -> "));
                    self.error(&format!("load_balancers.{lb_name}"), message);
                    return;
                }
            }
        }
    }
}

/// Walks lb -> tg -> lb edges (alb targets: references) depth-first;
/// `path` holds the resource paths walked so far, starting with a load
/// balancer.
fn find_reference_cycle(spec: &Spec, lb: &LoadBalancer, path: &mut Vec<String>) -> Option<Vec<String>> {
    for group_name in spec.load_balancer_target_groups(lb) {
        let Some(group) = spec.target_groups.get(&group_name) else {
            continue;
        };
        for next in group.targets.iter().filter_map(|it| it.load_balancer.as_ref()) {
            let next_path = format!("load_balancers.{next}");
            path.push(format!("target_groups.{group_name}"));
            if path[0] == next_path {
                let mut cycle = path.clone();
                cycle.push(next_path);
                return Some(cycle);
            }
            if !path.contains(&next_path) {
                if let Some(next_lb) = spec.load_balancers.get(next) {
                    path.push(next_path);
                    if let Some(cycle) = find_reference_cycle(spec, next_lb, path) {
                        return Some(cycle);
                    }
                    path.pop();
                }
            }
            path.pop();
        }
    }
    None
}

/// A listener of the stack: its load balancer's name and its port.
type ListenerAt = (String, u16);

/// The listeners of `spec` a target group's targets are: alb targets (the
/// group's port is a listener's, as on AWS), and ip targets at the address
/// and port a load balancer listens on (application ones on 127.0.0.1,
/// network ones on their `static_ip`).
fn reached_listeners(spec: &Spec, group: &TargetGroup) -> Vec<ListenerAt> {
    let mut reached = Vec::new();
    for target in &group.targets {
        let Some(port) = target.port.or(group.port) else { continue };
        if let Some(name) = &target.load_balancer {
            reached.push((name.clone(), port));
        }
        let Some(ip) = target.ip.as_deref() else { continue };
        for (name, lb) in &spec.load_balancers {
            let address = match lb.kind {
                LoadBalancerType::Application => Some("127.0.0.1"),
                LoadBalancerType::Network => lb.static_ip.as_deref(),
            };
            let udp = group.protocol == Some(TargetProtocol::Udp);
            let listens =
                lb.listeners.iter().any(|it| it.port == port && (it.protocol == ListenerProtocol::Udp) == udp);
            if address == Some(ip) && listens {
                reached.push((name.clone(), port));
            }
        }
    }
    reached
}

/// The target groups the listeners of `at` forward to.
fn forwarded_from(spec: &Spec, (lb, port): &ListenerAt) -> Vec<String> {
    let Some(lb) = spec.load_balancers.get(lb) else { return Vec::new() };
    lb.listeners.iter().filter(|it| it.port == *port).flat_map(Listener::target_groups).map(str::to_string).collect()
}

/// Walks listener -> group -> listener edges depth-first from `at`,
/// looking for `start` again; `path` holds the resource paths walked so
/// far, `seen` the listeners.
fn find_loop(
    spec: &Spec,
    start: &ListenerAt,
    at: &ListenerAt,
    path: &mut Vec<String>,
    seen: &mut BTreeSet<ListenerAt>,
) -> Option<Vec<String>> {
    for group_name in forwarded_from(spec, at) {
        let Some(group) = spec.target_groups.get(&group_name) else { continue };
        path.push(format!("target_groups.{group_name}"));
        for next in reached_listeners(spec, group) {
            path.push(format!("load_balancers.{} (port {})", next.0, next.1));
            if next == *start {
                return Some(path.clone());
            }
            if seen.insert(next.clone()) {
                if let Some(cycle) = find_loop(spec, start, &next, path, seen) {
                    return Some(cycle);
                }
            }
            path.pop();
        }
        path.pop();
    }
    None
}
