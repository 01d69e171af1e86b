//! Prometheus metrics of a load balancer, named after the CloudWatch
//! metrics AWS users know, in Prometheus's conventions (`RequestCount` is
//! `lbctl_requests_total`, `HTTPCode_Target_2XX_Count` is
//! `lbctl_httpcode_target_total{class="2xx"}`, `HealthyHostCount` is
//! `lbctl_healthy_hosts`, `TargetResponseTime` is the histogram
//! `lbctl_target_response_time_seconds`; each help text names the
//! CloudWatch metric), served as Prometheus text on a loopback port.
//!
//! The request path only adds to atomics it already holds (the load
//! balancer's `LbStats`, its target groups' `GroupStats`, each target's
//! request counter); a scrape reads them and the health the proxy knows,
//! and writes the text. The exposition is the Prometheus text format 0.0.4,
//! written here in a few lines rather than through a client library, whose
//! registries would add a label lookup to every request; `promtool check
//! metrics` checks it in the tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::runtime::metrics::Exposition;
use crate::runtime::{HealthState, ProxyStatus};

/// Upper bounds of the response time histogram, in seconds.
pub const BUCKETS: [f64; 12] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Counters of a whole load balancer.
#[derive(Debug, Default)]
pub struct LbStats {
    /// Responses the load balancer made itself or passed on, by class
    /// (1xx..5xx): `HTTPCode_ELB_*` counts those it made; these count every
    /// response it sent, by the code the client got.
    pub elb_codes: [AtomicU64; 5],
    /// Responses the load balancer made itself (redirects, fixed responses,
    /// errors), by class: `HTTPCode_ELB_*_Count`.
    pub own_codes: [AtomicU64; 5],
    /// Bytes received and sent, client side: `ProcessedBytes`.
    pub processed_bytes: AtomicU64,
    /// Connections (and UDP flows) accepted: `NewConnectionCount` / `NewFlowCount`.
    pub new_connections: AtomicU64,
    /// Connections to targets reset or refused: `TCP_Target_Reset_Count`.
    pub target_resets: AtomicU64,
}

impl LbStats {
    /// Counts a response sent to a client.
    pub fn response(&self, status: u16, own: bool) {
        if let Some(slot) = class(status) {
            self.elb_codes[slot].fetch_add(1, Ordering::Relaxed);
            if own {
                self.own_codes[slot].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts bytes through the load balancer.
    pub fn bytes(&self, count: u64) {
        self.processed_bytes.fetch_add(count, Ordering::Relaxed);
    }
}

/// Counters of one target group.
#[derive(Debug, Default)]
pub struct GroupStats {
    /// Target responses by class: `HTTPCode_Target_*_Count`.
    pub target_codes: [AtomicU64; 5],
    /// Target response times: counts per bucket (the last: above every bound).
    pub buckets: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of response times, microseconds.
    pub sum_micros: AtomicU64,
}

impl GroupStats {
    /// Counts a target's answer: its status and how long its head took.
    pub fn answer(&self, status: u16, took: Duration) {
        if let Some(slot) = class(status) {
            self.target_codes[slot].fetch_add(1, Ordering::Relaxed);
        }
        let seconds = took.as_secs_f64();
        let bucket = BUCKETS.iter().position(|bound| seconds <= *bound).unwrap_or(BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
}

fn class(status: u16) -> Option<usize> {
    (100..600).contains(&status).then(|| usize::from(status / 100 - 1))
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The metrics of a load balancer: its counters, its target groups'
/// counters, and the health and connections of `status`.
pub fn exposition(
    lb: &str,
    network: bool,
    stats: &LbStats,
    groups: &[(String, &GroupStats)],
    status: &ProxyStatus,
) -> String {
    let mut out = Exposition::new();
    let at_lb = [("load_balancer", lb)];
    let load = |it: &AtomicU64| it.load(Ordering::Relaxed);

    out.family("lbctl_requests_total", "counter", "Requests (connections, for a network load balancer) forwarded to each target: RequestCount, RequestCountPerTarget.");
    for (group, targets) in &status.target_groups {
        for target in targets {
            out.sample(
                "lbctl_requests_total",
                &[("load_balancer", lb), ("target_group", group), ("target", &target.id)],
                target.requests,
            );
        }
    }
    out.family("lbctl_healthy_hosts", "gauge", "Targets healthy in each target group: HealthyHostCount.");
    for (group, targets) in &status.target_groups {
        let healthy = targets.iter().filter(|it| it.state == HealthState::Healthy).count();
        out.sample("lbctl_healthy_hosts", &[("load_balancer", lb), ("target_group", group)], healthy);
    }
    out.family("lbctl_unhealthy_hosts", "gauge", "Targets unhealthy in each target group: UnHealthyHostCount.");
    for (group, targets) in &status.target_groups {
        let unhealthy = targets.iter().filter(|it| it.state == HealthState::Unhealthy).count();
        out.sample("lbctl_unhealthy_hosts", &[("load_balancer", lb), ("target_group", group)], unhealthy);
    }
    out.single(
        "lbctl_processed_bytes_total",
        "counter",
        "Bytes received from and sent to clients: ProcessedBytes.",
        &at_lb,
        load(&stats.processed_bytes),
    );
    out.single(
        "lbctl_rejected_connections_total",
        "counter",
        "Connections and flows refused at the limit: RejectedConnectionCount.",
        &at_lb,
        status.rejected_connections,
    );
    if network {
        out.single(
            "lbctl_active_flows",
            "gauge",
            "TCP connections and UDP flows open: ActiveFlowCount.",
            &at_lb,
            status.connections,
        );
        out.single(
            "lbctl_new_flows_total",
            "counter",
            "TCP connections and UDP flows opened: NewFlowCount.",
            &at_lb,
            load(&stats.new_connections),
        );
        out.single(
            "lbctl_tcp_target_resets_total",
            "counter",
            "Connections to targets refused or reset: TCP_Target_Reset_Count.",
            &at_lb,
            load(&stats.target_resets),
        );
        return out.finish();
    }
    out.single(
        "lbctl_active_connections",
        "gauge",
        "Client connections open: ActiveConnectionCount.",
        &at_lb,
        status.connections,
    );
    out.single(
        "lbctl_new_connections_total",
        "counter",
        "Client connections accepted: NewConnectionCount.",
        &at_lb,
        load(&stats.new_connections),
    );
    out.family(
        "lbctl_httpcode_elb_total",
        "counter",
        "Responses the load balancer made itself, by class: HTTPCode_ELB_<class>_Count.",
    );
    for (slot, class) in CLASSES.iter().enumerate() {
        out.sample(
            "lbctl_httpcode_elb_total",
            &[("load_balancer", lb), ("class", class)],
            load(&stats.own_codes[slot]),
        );
    }
    out.family(
        "lbctl_httpcode_client_total",
        "counter",
        "Responses sent to clients, by class (the load balancer's and the targets').",
    );
    for (slot, class) in CLASSES.iter().enumerate() {
        out.sample(
            "lbctl_httpcode_client_total",
            &[("load_balancer", lb), ("class", class)],
            load(&stats.elb_codes[slot]),
        );
    }
    out.family("lbctl_httpcode_target_total", "counter", "Target responses, by class: HTTPCode_Target_<class>_Count.");
    for (group, counters) in groups {
        for (slot, class) in CLASSES.iter().enumerate() {
            out.sample(
                "lbctl_httpcode_target_total",
                &[("load_balancer", lb), ("target_group", group), ("class", class)],
                load(&counters.target_codes[slot]),
            );
        }
    }
    out.family(
        "lbctl_target_response_time_seconds",
        "histogram",
        "Time from sending a request to a target to its response head: TargetResponseTime.",
    );
    for (group, counters) in groups {
        let mut cumulative = 0;
        for (idx, bound) in BUCKETS.iter().enumerate() {
            cumulative += load(&counters.buckets[idx]);
            let le = bound.to_string();
            out.sample(
                "lbctl_target_response_time_seconds_bucket",
                &[("load_balancer", lb), ("target_group", group), ("le", &le)],
                cumulative,
            );
        }
        cumulative += load(&counters.buckets[BUCKETS.len()]);
        let at_group = [("load_balancer", lb), ("target_group", group.as_str())];
        let mut with_inf = at_group.to_vec();
        with_inf.push(("le", "+Inf"));
        out.sample("lbctl_target_response_time_seconds_bucket", &with_inf, cumulative);
        out.sample(
            "lbctl_target_response_time_seconds_sum",
            &at_group,
            load(&counters.sum_micros) as f64 / 1_000_000.0,
        );
        out.sample("lbctl_target_response_time_seconds_count", &at_group, cumulative);
    }
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::TargetHealth;

    #[test]
    fn a_scrape_names_cloudwatch_metrics_with_labels() {
        let stats = LbStats::default();
        stats.response(200, false);
        stats.response(503, true);
        stats.bytes(300);
        let web = GroupStats::default();
        web.answer(200, Duration::from_millis(3));
        web.answer(502, Duration::from_secs(20));
        let mut status = ProxyStatus::default();
        let target = |id: &str, state| TargetHealth {
            id: id.to_string(),
            ip: "127.16.0.2".parse().unwrap(),
            port: 8080,
            state,
            reason: String::new(),
            requests: 7,
            health_check_requests: 0,
        };
        status.target_groups.insert(
            "web".to_string(),
            vec![target("i-1", HealthState::Healthy), target("i-\"2", HealthState::Unhealthy)],
        );
        let text = exposition("public", false, &stats, &[("web".to_string(), &web)], &status);
        for line in [
            "# TYPE lbctl_requests_total counter",
            "lbctl_requests_total{load_balancer=\"public\",target_group=\"web\",target=\"i-1\"} 7",
            "lbctl_requests_total{load_balancer=\"public\",target_group=\"web\",target=\"i-\\\"2\"} 7",
            "lbctl_healthy_hosts{load_balancer=\"public\",target_group=\"web\"} 1",
            "lbctl_unhealthy_hosts{load_balancer=\"public\",target_group=\"web\"} 1",
            "lbctl_httpcode_elb_total{load_balancer=\"public\",class=\"5xx\"} 1",
            "lbctl_httpcode_elb_total{load_balancer=\"public\",class=\"2xx\"} 0",
            "lbctl_httpcode_client_total{load_balancer=\"public\",class=\"2xx\"} 1",
            "lbctl_httpcode_target_total{load_balancer=\"public\",target_group=\"web\",class=\"5xx\"} 1",
            "lbctl_target_response_time_seconds_bucket{load_balancer=\"public\",target_group=\"web\",le=\"0.005\"} 1",
            "lbctl_target_response_time_seconds_bucket{load_balancer=\"public\",target_group=\"web\",le=\"10\"} 1",
            "lbctl_target_response_time_seconds_bucket{load_balancer=\"public\",target_group=\"web\",le=\"+Inf\"} 2",
            "lbctl_target_response_time_seconds_count{load_balancer=\"public\",target_group=\"web\"} 2",
            "lbctl_processed_bytes_total{load_balancer=\"public\"} 300",
        ] {
            assert!(text.lines().any(|it| it == line), "no `{line}` in\n{text}");
        }
        let network = exposition("edge", true, &stats, &[], &status);
        assert!(network.contains("lbctl_active_flows{load_balancer=\"edge\"} 0"), "{network}");
        assert!(!network.contains("httpcode"), "{network}");
    }
}
