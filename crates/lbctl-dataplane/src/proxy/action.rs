//! Listener actions, compiled once per configuration: forward to a target
//! group, weighted forward over several, redirect, fixed response.
//!
//! Forward actions hold their target groups directly, so a request never
//! looks a group up by name; redirects are parsed into templates whose
//! `#{...}` placeholders are filled per request.

use std::fmt::Write;
use std::sync::Arc;

use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::StatusCode;
use lbctl_spec::ActionKind;
use rand::Rng;

use super::target_group::TargetGroup;

/// What a listener does with a request.
pub enum Action {
    /// Forward to one target group.
    Forward(Arc<TargetGroup>),
    /// Forward to one of several target groups, chosen by weight.
    Weighted(Weighted),
    /// Answer with a redirect.
    Redirect(RedirectTemplate),
    /// Answer directly.
    Fixed(FixedResponse),
}

impl Action {
    /// The action of a listener whose configured action is unusable: 503.
    pub fn unavailable() -> Action {
        Action::Fixed(FixedResponse {
            status: StatusCode::SERVICE_UNAVAILABLE,
            content_type: HeaderValue::from_static("text/plain"),
            body: Bytes::from_static(b"503 Service Unavailable\n"),
        })
    }
}

/// Compiles a spec action; `resolve` gives the target group of a name.
pub fn compile(
    action: &lbctl_spec::Action,
    resolve: &mut dyn FnMut(&str) -> Arc<TargetGroup>,
) -> Result<Action, String> {
    match action.kind() {
        None => Err("an action needs exactly one of forward, redirect, fixed_response".to_string()),
        Some(ActionKind::Forward(lbctl_spec::Forward::Single(name))) => Ok(Action::Forward(resolve(name))),
        Some(ActionKind::Forward(lbctl_spec::Forward::Weighted(list))) => {
            let mut total = 0u32;
            let mut groups = Vec::with_capacity(list.len());
            for item in list {
                total = total.saturating_add(item.weight());
                groups.push((resolve(&item.target_group), total));
            }
            Ok(Action::Weighted(Weighted { groups, total }))
        }
        Some(ActionKind::Redirect(redirect)) => RedirectTemplate::compile(redirect).map(Action::Redirect),
        Some(ActionKind::FixedResponse(fixed)) => FixedResponse::compile(fixed).map(Action::Fixed),
    }
}

/// A weighted forward: groups with their cumulative weights.
pub struct Weighted {
    groups: Vec<(Arc<TargetGroup>, u32)>,
    total: u32,
}

impl Weighted {
    /// A group chosen at random by weight; `None` when every weight is 0.
    pub fn pick(&self) -> Option<&Arc<TargetGroup>> {
        if self.total == 0 {
            return None;
        }
        self.pick_at(rand::thread_rng().gen_range(0..self.total))
    }

    /// The group that the point `at` (below the total weight) falls in.
    fn pick_at(&self, at: u32) -> Option<&Arc<TargetGroup>> {
        self.groups.iter().find(|(_, cumulative)| at < *cumulative).map(|(group, _)| group)
    }
}

/// A fixed response, ready to send.
pub struct FixedResponse {
    /// Status code.
    pub status: StatusCode,
    /// Content type.
    pub content_type: HeaderValue,
    /// Body.
    pub body: Bytes,
}

impl FixedResponse {
    fn compile(fixed: &lbctl_spec::FixedResponse) -> Result<FixedResponse, String> {
        let status = StatusCode::from_u16(fixed.status_code)
            .map_err(|_| format!("fixed_response: {} is not an HTTP status code", fixed.status_code))?;
        let content_type = fixed.content_type.as_deref().unwrap_or("text/plain");
        let content_type = HeaderValue::from_str(content_type)
            .map_err(|_| format!("fixed_response: `{content_type}` is not a valid content type"))?;
        Ok(FixedResponse { status, content_type, body: Bytes::from(fixed.body.clone().unwrap_or_default()) })
    }
}

/// One piece of a redirect component.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Protocol,
    Host,
    Port,
    Path,
    Query,
}

/// A redirect component with its placeholders found.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template(Vec<Piece>);

impl Template {
    fn parse(text: &str) -> Template {
        let mut pieces = Vec::new();
        let mut rest = text;
        let mut literal = String::new();
        while let Some(start) = rest.find("#{") {
            let (before, after) = rest.split_at(start);
            literal.push_str(before);
            let placeholder = after.find('}').map(|end| (&after[2..end], end));
            let piece = match placeholder {
                Some(("protocol", _)) => Some(Piece::Protocol),
                Some(("host", _)) => Some(Piece::Host),
                Some(("port", _)) => Some(Piece::Port),
                Some(("path", _)) => Some(Piece::Path),
                Some(("query", _)) => Some(Piece::Query),
                _ => None,
            };
            match (piece, placeholder) {
                (Some(piece), Some((_, end))) => {
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    pieces.push(piece);
                    rest = &after[end + 1..];
                }
                // An unknown placeholder is kept as written.
                _ => {
                    literal.push_str("#{");
                    rest = &after[2..];
                }
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Template(pieces)
    }

    fn expand(&self, request: &RedirectSource<'_>, out: &mut String) {
        for piece in &self.0 {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Protocol => out.push_str(request.protocol),
                Piece::Host => out.push_str(request.host),
                Piece::Port => {
                    let _ = write!(out, "{}", request.port);
                }
                Piece::Path => out.push_str(request.path.strip_prefix('/').unwrap_or(request.path)),
                Piece::Query => out.push_str(request.query),
            }
        }
    }
}

/// The parts of the original request a redirect can reuse.
pub struct RedirectSource<'a> {
    /// `http` or `https`.
    pub protocol: &'a str,
    /// Host without port.
    pub host: &'a str,
    /// The listener's port.
    pub port: u16,
    /// Path with its leading `/`.
    pub path: &'a str,
    /// Query without `?`, possibly empty.
    pub query: &'a str,
}

/// A compiled redirect action. Omitted components keep the request's, as in
/// AWS: `#{protocol}`, `#{host}`, `#{port}`, `/#{path}`, `#{query}`. As in
/// AWS, `#{path}` is the path without its leading `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectTemplate {
    protocol: Template,
    host: Template,
    port: Template,
    path: Template,
    query: Template,
    /// 301 or 302.
    pub status: StatusCode,
}

impl RedirectTemplate {
    fn compile(redirect: &lbctl_spec::Redirect) -> Result<RedirectTemplate, String> {
        let status = match redirect.status() {
            301 => StatusCode::MOVED_PERMANENTLY,
            302 => StatusCode::FOUND,
            other => return Err(format!("redirect: status_code {other} is not 301 or 302")),
        };
        let part = |value: &Option<String>, default: &str| Template::parse(value.as_deref().unwrap_or(default));
        Ok(RedirectTemplate {
            protocol: part(&redirect.protocol, "#{protocol}"),
            host: part(&redirect.host, "#{host}"),
            port: part(&redirect.port, "#{port}"),
            path: part(&redirect.path, "/#{path}"),
            query: part(&redirect.query, "#{query}"),
            status,
        })
    }

    /// The `Location` of the redirect for `request`. The port is left out
    /// when it is the protocol's default one.
    pub fn location(&self, request: &RedirectSource<'_>) -> String {
        let mut protocol = String::new();
        self.protocol.expand(request, &mut protocol);
        protocol.make_ascii_lowercase();
        let mut port = String::new();
        self.port.expand(request, &mut port);
        let mut out = String::with_capacity(64 + request.path.len() + request.query.len());
        out.push_str(&protocol);
        out.push_str("://");
        self.host.expand(request, &mut out);
        let default_port = matches!((protocol.as_str(), port.as_str()), ("http", "80") | ("https", "443"));
        if !port.is_empty() && !default_port {
            out.push(':');
            out.push_str(&port);
        }
        let path_start = out.len();
        self.path.expand(request, &mut out);
        if !out[path_start..].starts_with('/') {
            out.insert(path_start, '/');
        }
        let query_start = out.len();
        out.push('?');
        self.query.expand(request, &mut out);
        if out.len() == query_start + 1 {
            out.truncate(query_start);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_locations() {
        fn check(yaml: &str, request: (&str, &str, u16, &str, &str), expect: &str) {
            let redirect: lbctl_spec::Redirect = serde_yaml::from_str(yaml).unwrap();
            let template = RedirectTemplate::compile(&redirect).unwrap();
            let (protocol, host, port, path, query) = request;
            let source = RedirectSource { protocol, host, port, path, query };
            assert_eq!(template.location(&source), expect, "{yaml}");
        }
        let request = ("http", "shop.example.com", 8080, "/old/a/b", "x=1");
        check("{ path: '/new/#{path}' }", request, "http://shop.example.com:8080/new/old/a/b?x=1");
        check("{ protocol: HTTPS, port: '443' }", request, "https://shop.example.com/old/a/b?x=1");
        check("{ protocol: HTTPS, port: '8443' }", request, "https://shop.example.com:8443/old/a/b?x=1");
        check("{ host: 'www.#{host}', query: '' }", request, "http://www.shop.example.com:8080/old/a/b");
        check("{ query: '#{query}&v=2' }", request, "http://shop.example.com:8080/old/a/b?x=1&v=2");
        check("{ path: '/#{path}', port: '80' }", ("http", "h", 8080, "/", ""), "http://h/");
        check("{ path: 'relative' }", ("http", "h", 80, "/", ""), "http://h/relative");
        check("{ path: '/p/#{unknown}/#{port}' }", ("http", "h", 81, "/", ""), "http://h:81/p/#{unknown}/81");
    }

    #[test]
    fn redirect_status_codes() {
        fn check(yaml: &str, expect: Result<u16, &str>) {
            let redirect: lbctl_spec::Redirect = serde_yaml::from_str(yaml).unwrap();
            let compiled = RedirectTemplate::compile(&redirect).map(|it| it.status.as_u16());
            assert_eq!(compiled, expect.map_err(String::from), "{yaml}");
        }
        check("{ path: /x }", Ok(302));
        check("{ path: /x, status_code: 301 }", Ok(301));
        check("{ path: /x, status_code: 307 }", Err("redirect: status_code 307 is not 301 or 302"));
    }

    #[test]
    fn weighted_picks_follow_weights() {
        let yaml = "forward: [{ target_group: a, weight: 90 }, { target_group: none, weight: 0 }, { target_group: b, weight: 10 }]";
        let action: lbctl_spec::Action = serde_yaml::from_str(yaml).unwrap();
        let Ok(Action::Weighted(weighted)) = compile(&action, &mut |name| TargetGroup::new("test", name)) else {
            panic!()
        };
        fn check(weighted: &Weighted, at: u32, expect: Option<&str>) {
            assert_eq!(weighted.pick_at(at).map(|it| it.name.as_str()), expect, "{at}");
        }
        check(&weighted, 0, Some("a"));
        check(&weighted, 89, Some("a"));
        check(&weighted, 90, Some("b"));
        check(&weighted, 99, Some("b"));
        check(&weighted, 100, None);
        let picks: Vec<_> = (0..200).filter_map(|_| weighted.pick()).map(|it| it.name.clone()).collect();
        assert_eq!(picks.len(), 200);
        assert!(picks.iter().all(|it| it != "none"));
    }

    #[test]
    fn fixed_responses() {
        let action: lbctl_spec::Action =
            serde_yaml::from_str("fixed_response: { status_code: 403, body: nope }").unwrap();
        let Ok(Action::Fixed(fixed)) = compile(&action, &mut |name| TargetGroup::new("test", name)) else { panic!() };
        assert_eq!(
            (fixed.status.as_u16(), fixed.content_type.to_str().unwrap(), &fixed.body[..]),
            (403, "text/plain", &b"nope"[..])
        );
        let bad: lbctl_spec::Action = serde_yaml::from_str("fixed_response: { status_code: 42 }").unwrap();
        assert!(compile(&bad, &mut |name| TargetGroup::new("test", name)).is_err());
    }
}
