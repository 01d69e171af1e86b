//! The spec's settings as Elastic Load Balancing requests, and AWS's
//! answers back as the spec's settings (for field-level drift). Pure: no
//! calls, tested on their own. AWS's ranges are `lbctl-export`'s, so an
//! export and an apply of the same spec agree.

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};
use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, FixedResponseActionConfig, ForwardActionConfig, HostHeaderConditionConfig,
    HttpHeaderConditionConfig, HttpRequestMethodConditionConfig, PathPatternConditionConfig,
    QueryStringConditionConfig, QueryStringKeyValuePair, RedirectActionConfig, RedirectActionStatusCodeEnum,
    RuleCondition, SourceIpConditionConfig, TargetGroupAttribute, TargetGroupStickinessConfig, TargetGroupTuple,
};
use lbctl_export::model::{self, GroupSettings, FIXED_RESPONSE_TYPES};
use lbctl_spec::{settings, ActionKind, Conditions, Forward, HttpHeaderCondition, QueryStringCondition};

/// What an action needs to know of the target groups it forwards to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupRef {
    /// The group's ARN.
    pub arn: String,
    /// Its cookie stickiness seconds, when on.
    pub stickiness: Option<i64>,
}

/// A listener's or rule's action, with target groups by ARN.
pub fn action(action: &lbctl_spec::Action, groups: &BTreeMap<String, GroupRef>) -> Result<Action> {
    let arn = |name: &str| {
        groups.get(name).map(|it| it.arn.clone()).ok_or_else(|| anyhow!("target group `{name}` has no ARN yet"))
    };
    Ok(match action.kind() {
        Some(ActionKind::Forward(Forward::Single(name))) => {
            Action::builder().r#type(ActionTypeEnum::Forward).target_group_arn(arn(name)?).build()
        }
        Some(ActionKind::Forward(Forward::Weighted(list))) => {
            let mut config = ForwardActionConfig::builder();
            for it in list {
                config = config.target_groups(
                    TargetGroupTuple::builder()
                        .target_group_arn(arn(&it.target_group)?)
                        .weight(it.weight() as i32)
                        .build(),
                );
            }
            // A weighted forward keeps a client on its group when its groups stick.
            let sticky = list.iter().filter_map(|it| groups.get(&it.target_group)?.stickiness).max();
            if let Some(seconds) = sticky {
                config = config.target_group_stickiness_config(
                    TargetGroupStickinessConfig::builder().enabled(true).duration_seconds(seconds as i32).build(),
                );
            }
            Action::builder().r#type(ActionTypeEnum::Forward).forward_config(config.build()).build()
        }
        Some(ActionKind::Redirect(redirect)) => {
            let keep =
                |value: &Option<String>, placeholder: &str| value.clone().unwrap_or_else(|| placeholder.to_string());
            let protocol = match &redirect.protocol {
                Some(it) if it.starts_with('#') => it.clone(),
                Some(it) => it.to_uppercase(),
                None => "#{protocol}".to_string(),
            };
            let path = keep(&redirect.path, "/#{path}");
            let config = RedirectActionConfig::builder()
                .protocol(protocol)
                .host(keep(&redirect.host, "#{host}"))
                .port(keep(&redirect.port, "#{port}"))
                .path(if path.starts_with('/') { path } else { format!("/{path}") })
                .query(keep(&redirect.query, "#{query}"))
                .status_code(if redirect.status() == 301 {
                    RedirectActionStatusCodeEnum::Http301
                } else {
                    RedirectActionStatusCodeEnum::Http302
                })
                .build();
            Action::builder().r#type(ActionTypeEnum::Redirect).redirect_config(config).build()
        }
        Some(ActionKind::FixedResponse(fixed)) => {
            let content_type = fixed
                .content_type
                .clone()
                .filter(|it| FIXED_RESPONSE_TYPES.contains(&it.as_str()))
                .unwrap_or_else(|| "text/plain".to_string());
            let config = FixedResponseActionConfig::builder()
                .status_code(fixed.status_code.to_string())
                .content_type(content_type)
                .set_message_body(fixed.body.clone())
                .build();
            Action::builder().r#type(ActionTypeEnum::FixedResponse).fixed_response_config(config).build()
        }
        None => return Err(anyhow!("an action without forward, redirect or fixed_response")),
    })
}

/// A rule's conditions.
pub fn conditions(conditions: &Conditions) -> Vec<RuleCondition> {
    model::conditions(conditions)
        .into_iter()
        .map(|condition| match condition {
            model::Condition::Values("host-header", values) => RuleCondition::builder()
                .field("host-header")
                .host_header_config(HostHeaderConditionConfig::builder().set_values(Some(values)).build())
                .build(),
            model::Condition::Values("path-pattern", values) => RuleCondition::builder()
                .field("path-pattern")
                .path_pattern_config(PathPatternConditionConfig::builder().set_values(Some(values)).build())
                .build(),
            model::Condition::Values("http-request-method", values) => RuleCondition::builder()
                .field("http-request-method")
                .http_request_method_config(
                    HttpRequestMethodConditionConfig::builder().set_values(Some(values)).build(),
                )
                .build(),
            model::Condition::Values(_, values) => RuleCondition::builder()
                .field("source-ip")
                .source_ip_config(SourceIpConditionConfig::builder().set_values(Some(values)).build())
                .build(),
            model::Condition::Header(name, values) => RuleCondition::builder()
                .field("http-header")
                .http_header_config(
                    HttpHeaderConditionConfig::builder().http_header_name(name).set_values(Some(values)).build(),
                )
                .build(),
            model::Condition::Query(pairs) => {
                let mut config = QueryStringConditionConfig::builder();
                for (key, value) in pairs {
                    config = config.values(QueryStringKeyValuePair::builder().set_key(key).value(value).build());
                }
                RuleCondition::builder().field("query-string").query_string_config(config.build()).build()
            }
        })
        .collect()
}

/// AWS's conditions back as the spec's.
pub fn conditions_back(found: &[RuleCondition]) -> Conditions {
    let mut conditions = Conditions::default();
    for condition in found {
        match condition.field() {
            Some("host-header") => {
                conditions.host_header =
                    condition.host_header_config().map(|it| it.values().to_vec()).unwrap_or_default()
            }
            Some("path-pattern") => {
                conditions.path_pattern =
                    condition.path_pattern_config().map(|it| it.values().to_vec()).unwrap_or_default()
            }
            Some("http-request-method") => {
                conditions.http_request_method =
                    condition.http_request_method_config().map(|it| it.values().to_vec()).unwrap_or_default()
            }
            Some("source-ip") => {
                conditions.source_ip = condition.source_ip_config().map(|it| it.values().to_vec()).unwrap_or_default()
            }
            Some("http-header") => {
                conditions.http_header = condition.http_header_config().map(|it| HttpHeaderCondition {
                    name: it.http_header_name().unwrap_or_default().to_string(),
                    values: it.values().to_vec(),
                })
            }
            Some("query-string") => {
                conditions.query_string = condition
                    .query_string_config()
                    .map(|it| {
                        it.values()
                            .iter()
                            .map(|pair| QueryStringCondition {
                                key: pair.key().map(str::to_string),
                                value: pair.value().unwrap_or_default().to_string(),
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            }
            _ => {}
        }
    }
    conditions
}

/// A target group's settings within AWS's ranges.
pub fn group_settings(name: &str, group: &settings::TargetGroup) -> GroupSettings {
    model::group_settings(group, &format!("target_groups.{name}"), &mut Vec::new())
}

/// A target group's attributes as `ModifyTargetGroupAttributes` takes them,
/// with what resets an existing group's earlier values.
pub fn group_attributes(settings: &GroupSettings) -> Vec<TargetGroupAttribute> {
    let attribute = |(key, value): (&str, String)| TargetGroupAttribute::builder().key(key).value(value).build();
    settings.attributes(true).into_iter().map(attribute).collect()
}

/// The attribute values of `found` that differ from what `wanted` sets:
/// (key, wanted, found).
pub fn attribute_drift(
    wanted: &[TargetGroupAttribute],
    found: &[TargetGroupAttribute],
) -> Vec<(String, String, String)> {
    let found: BTreeMap<&str, &str> = found.iter().filter_map(|it| Some((it.key()?, it.value()?))).collect();
    wanted
        .iter()
        .filter_map(|it| {
            let key = it.key()?;
            let value = it.value()?;
            let seen = found.get(key)?;
            (*seen != value).then(|| (key.to_string(), value.to_string(), seen.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups() -> BTreeMap<String, GroupRef> {
        BTreeMap::from([
            ("blue".to_string(), GroupRef { arn: "arn:tg/blue".to_string(), stickiness: Some(3600) }),
            ("green".to_string(), GroupRef { arn: "arn:tg/green".to_string(), stickiness: None }),
        ])
    }

    fn spec_action(yaml: &str) -> lbctl_spec::Action {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn actions_map_to_elb_actions() {
        let forward = action(&spec_action("forward: blue"), &groups()).unwrap();
        assert_eq!(forward.r#type(), Some(&ActionTypeEnum::Forward));
        assert_eq!(forward.target_group_arn(), Some("arn:tg/blue"));

        let weighted = action(
            &spec_action("forward: [{ target_group: blue, weight: 90 }, { target_group: green, weight: 10 }]"),
            &groups(),
        )
        .unwrap();
        let config = weighted.forward_config().unwrap();
        let tuples: Vec<(Option<&str>, Option<i32>)> =
            config.target_groups().iter().map(|it| (it.target_group_arn(), it.weight())).collect();
        assert_eq!(tuples, [(Some("arn:tg/blue"), Some(90)), (Some("arn:tg/green"), Some(10))]);
        let sticky = config.target_group_stickiness_config().unwrap();
        assert_eq!((sticky.enabled(), sticky.duration_seconds()), (Some(true), Some(3600)));

        let redirect =
            action(&spec_action("redirect: { protocol: https, path: 'new/#{path}', status_code: 301 }"), &groups())
                .unwrap();
        let config = redirect.redirect_config().unwrap();
        assert_eq!(config.protocol(), Some("HTTPS"));
        assert_eq!(config.path(), Some("/new/#{path}"));
        assert_eq!(config.host(), Some("#{host}"));
        assert_eq!(config.status_code(), Some(&RedirectActionStatusCodeEnum::Http301));

        let fixed =
            action(&spec_action("fixed_response: { status_code: 403, content_type: text/xml, body: nope }"), &groups())
                .unwrap();
        let config = fixed.fixed_response_config().unwrap();
        assert_eq!(
            (config.status_code(), config.content_type(), config.message_body()),
            (Some("403"), Some("text/plain"), Some("nope"))
        );

        let missing = action(&spec_action("forward: red"), &groups()).unwrap_err();
        assert!(missing.to_string().contains("`red`"), "{missing}");
    }

    #[test]
    fn conditions_go_and_come_back_the_same() {
        let written: Conditions = serde_yaml::from_str(
            "{ host_header: [a.example.com], path_pattern: ['/x/*'], http_header: { name: X-Canary, values: ['1'] },
               http_request_method: [DELETE], query_string: [{ key: debug, value: '1' }, { value: trace }],
               source_ip: ['127.0.0.0/8'] }",
        )
        .unwrap();
        let mapped = conditions(&written);
        let fields: Vec<&str> = mapped.iter().filter_map(|it| it.field()).collect();
        assert_eq!(
            fields,
            ["host-header", "path-pattern", "http-header", "http-request-method", "query-string", "source-ip"]
        );
        assert_eq!(conditions_back(&mapped), written);
    }

    #[test]
    fn target_group_attributes_are_aws_keys_within_aws_ranges() {
        let group: lbctl_spec::TargetGroup = serde_yaml::from_str(
            "{ port: 8080, slow_start: 10s, stickiness: { enabled: true, duration: 1h }, algorithm: least_outstanding_requests, deregistration_delay: 2500ms, health_check: { interval: 1s, timeout: 1s } }",
        )
        .unwrap();
        let settings = group_settings("web", &group.resolve());
        assert_eq!((settings.health_check.interval, settings.health_check.timeout), (5, 2));
        let attributes = group_attributes(&settings);
        let pairs: Vec<(&str, &str)> = attributes.iter().map(|it| (it.key().unwrap(), it.value().unwrap())).collect();
        assert_eq!(
            pairs,
            [
                ("deregistration_delay.timeout_seconds", "3"),
                ("slow_start.duration_seconds", "30"),
                ("stickiness.enabled", "true"),
                ("stickiness.type", "lb_cookie"),
                ("stickiness.lb_cookie.duration_seconds", "3600"),
                ("load_balancing.algorithm.type", "least_outstanding_requests"),
            ]
        );
        let mut seen = attributes.clone();
        seen[0] = TargetGroupAttribute::builder().key("deregistration_delay.timeout_seconds").value("300").build();
        assert_eq!(
            attribute_drift(&attributes, &seen),
            [("deregistration_delay.timeout_seconds".to_string(), "3".to_string(), "300".to_string())]
        );
        let tcp: lbctl_spec::TargetGroup =
            serde_yaml::from_str("{ protocol: TCP, port: 7000, proxy_protocol_v2: true }").unwrap();
        let pairs: Vec<String> = group_attributes(&group_settings("echo", &tcp.resolve()))
            .iter()
            .map(|it| format!("{}={}", it.key().unwrap(), it.value().unwrap()))
            .collect();
        assert_eq!(pairs, ["deregistration_delay.timeout_seconds=300", "proxy_protocol_v2.enabled=true"]);
    }
}
