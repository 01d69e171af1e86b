//! The few EC2 calls the provider makes (the default VPC and its subnets,
//! launch templates and their versions, Elastic IPs), through the SDK's
//! own signing crate (`aws-sigv4`) and a small typed Query/XML layer
//! instead of `aws-sdk-ec2`, whose 1.2 million generated lines would
//! multiply the build's time and memory for a dozen operations.
//!
//! Requests are the EC2 Query protocol (a form-encoded POST with `Action`
//! and `Version`), signed with SigV4 for service `ec2`; answers are XML.
//! Throttling and server errors are retried with exponential backoff, as
//! the SDK's standard retry mode does.

use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use aws_config::SdkConfig;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;

/// The EC2 API version these calls are written against.
const VERSION: &str = "2016-11-15";
/// Attempts for throttled or failed-on-the-server calls.
const ATTEMPTS: u32 = 5;

/// An EC2 endpoint.
pub struct Ec2 {
    endpoint: String,
    region: String,
    agent: ureq::Agent,
}

/// An EC2 error answer.
#[derive(Debug)]
pub struct Ec2Error {
    /// The action.
    pub action: String,
    /// AWS's error code (`InvalidLaunchTemplateName.NotFoundException`).
    pub code: String,
    /// AWS's message.
    pub message: String,
}

impl std::fmt::Display for Ec2Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.action, self.code, self.message)
    }
}

impl std::error::Error for Ec2Error {}

/// The AWS error code of an EC2 call's error, when AWS answered.
pub fn code(err: &anyhow::Error) -> Option<&str> {
    err.downcast_ref::<Ec2Error>().map(|it| it.code.as_str())
}

impl Ec2 {
    /// The endpoint of `region`, or `AWS_ENDPOINT_URL_EC2` /
    /// `AWS_ENDPOINT_URL` as the SDK takes them.
    pub fn new(config: &SdkConfig, region: &str) -> Ec2 {
        let endpoint = std::env::var("AWS_ENDPOINT_URL_EC2")
            .ok()
            .filter(|it| !it.is_empty())
            .or_else(|| config.endpoint_url().map(str::to_string))
            .unwrap_or_else(|| format!("https://ec2.{region}.amazonaws.com"));
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Ec2 { endpoint: endpoint.trim_end_matches('/').to_string() + "/", region: region.to_string(), agent }
    }

    /// Calls `action` with `params`; the answer's XML text.
    pub fn call(&self, credentials: &Credentials, action: &str, params: &[(String, String)]) -> Result<String> {
        let mut body = form_urlencoded::Serializer::new(String::new());
        body.append_pair("Action", action).append_pair("Version", VERSION);
        for (key, value) in params {
            body.append_pair(key, value);
        }
        let body = body.finish();
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=ATTEMPTS {
            match self.send(credentials, action, &body) {
                Ok(text) => return Ok(text),
                Err(err) => {
                    let retry = match err.downcast_ref::<Ec2Error>() {
                        Some(it) => matches!(
                            it.code.as_str(),
                            "RequestLimitExceeded"
                                | "Throttling"
                                | "ThrottlingException"
                                | "InternalError"
                                | "ServiceUnavailable"
                                | "Unavailable"
                        ),
                        None => true,
                    };
                    if !retry || attempt == ATTEMPTS {
                        return Err(err);
                    }
                    std::thread::sleep(delay);
                    delay *= 2;
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    fn send(&self, credentials: &Credentials, action: &str, body: &str) -> Result<String> {
        let host = self
            .endpoint
            .split("://")
            .nth(1)
            .and_then(|it| it.split('/').next())
            .ok_or_else(|| anyhow!("the EC2 endpoint `{}` is not a URL", self.endpoint))?
            .to_string();
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let headers = [("host", host.as_str()), ("content-type", content_type)];
        let identity: Identity = credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("ec2")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .context("signing an EC2 request")?
            .into();
        let signable = SignableRequest::new(
            "POST",
            self.endpoint.as_str(),
            headers.iter().copied(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .context("signing an EC2 request")?;
        let (instructions, _) = sign(signable, &params).context("signing an EC2 request")?.into_parts();
        let mut request = self.agent.post(&self.endpoint).header("content-type", content_type);
        for (name, value) in instructions.headers() {
            request = request.header(name, value);
        }
        let mut response = request.send(body).with_context(|| format!("{action}: calling {}", self.endpoint))?;
        let status = response.status();
        let text = response.body_mut().read_to_string().with_context(|| format!("{action}: reading the answer"))?;
        if status.is_success() {
            return Ok(text);
        }
        let (code, message) = error_of(&text).unwrap_or_else(|| (format!("HTTP {}", status.as_u16()), text.clone()));
        Err(Ec2Error { action: action.to_string(), code, message }.into())
    }
}

fn error_of(xml: &str) -> Option<(String, String)> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let error = doc.descendants().find(|it| it.has_tag_name("Error"))?;
    Some((child_text(error, "Code")?, child_text(error, "Message").unwrap_or_default()))
}

/// The text of `node`'s child `name`.
pub fn child_text(node: roxmltree::Node, name: &str) -> Option<String> {
    node.children().find(|it| it.has_tag_name(name)).and_then(|it| it.text()).map(str::to_string)
}

/// The `item`s of `node`'s child list `name`.
pub fn items<'a, 'input>(node: roxmltree::Node<'a, 'input>, name: &str) -> Vec<roxmltree::Node<'a, 'input>> {
    node.children()
        .find(|it| it.has_tag_name(name))
        .map(|list| list.children().filter(|it| it.has_tag_name("item")).collect())
        .unwrap_or_default()
}

/// Parses an answer.
pub fn parse(text: &str) -> Result<roxmltree::Document<'_>> {
    roxmltree::Document::parse(text).context("reading an EC2 answer")
}

/// A subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    /// Its id.
    pub id: String,
    /// Its availability zone.
    pub zone: String,
}

/// An Elastic IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// Allocation id.
    pub allocation_id: String,
    /// The address.
    pub public_ip: String,
    /// The network interface it is associated with, if any.
    pub association: Option<String>,
}

/// `Filter.N.Name` / `Filter.N.Value.1` parameters.
pub fn filters(filters: &[(&str, &str)]) -> Vec<(String, String)> {
    filters
        .iter()
        .enumerate()
        .flat_map(|(idx, (name, value))| {
            [
                (format!("Filter.{}.Name", idx + 1), name.to_string()),
                (format!("Filter.{}.Value.1", idx + 1), value.to_string()),
            ]
        })
        .collect()
}

/// `TagSpecification.1.*` parameters for `resource_type`.
pub fn tag_specification(resource_type: &str, tags: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut params = vec![("TagSpecification.1.ResourceType".to_string(), resource_type.to_string())];
    for (idx, (key, value)) in tags.iter().enumerate() {
        params.push((format!("TagSpecification.1.Tag.{}.Key", idx + 1), key.to_string()));
        params.push((format!("TagSpecification.1.Tag.{}.Value", idx + 1), value.to_string()));
    }
    params
}

/// The default VPC's id.
pub fn default_vpc(answer: &str) -> Result<String> {
    let doc = parse(answer)?;
    let vpc = items(doc.root_element(), "vpcSet").into_iter().next();
    match vpc.and_then(|it| child_text(it, "vpcId")) {
        Some(id) => Ok(id),
        None => bail!("this account and region have no default VPC: set `aws.vpc_id` and `aws.subnets` in the spec"),
    }
}

/// Subnets of a `DescribeSubnets` answer, by zone.
pub fn subnets(answer: &str) -> Result<Vec<Subnet>> {
    let doc = parse(answer)?;
    let mut found: Vec<Subnet> = items(doc.root_element(), "subnetSet")
        .into_iter()
        .filter_map(|it| Some(Subnet { id: child_text(it, "subnetId")?, zone: child_text(it, "availabilityZone")? }))
        .collect();
    found.sort_by(|a, b| (&a.zone, &a.id).cmp(&(&b.zone, &b.id)));
    Ok(found)
}

/// Addresses of a `DescribeAddresses` answer.
pub fn addresses(answer: &str) -> Result<Vec<Address>> {
    let doc = parse(answer)?;
    Ok(items(doc.root_element(), "addressesSet")
        .into_iter()
        .filter_map(|it| {
            Some(Address {
                allocation_id: child_text(it, "allocationId")?,
                public_ip: child_text(it, "publicIp")?,
                association: child_text(it, "associationId").or_else(|| child_text(it, "networkInterfaceId")),
            })
        })
        .collect())
}

/// The text of the first element `name` anywhere in an answer.
pub fn first(answer: &str, name: &str) -> Result<Option<String>> {
    let doc = parse(answer)?;
    Ok(doc.descendants().find(|it| it.has_tag_name(name)).and_then(|it| it.text()).map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_by_element() {
        let vpcs = r#"<DescribeVpcsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>1</requestId>
            <vpcSet><item><vpcId>vpc-1a2b</vpcId><isDefault>true</isDefault></item></vpcSet></DescribeVpcsResponse>"#;
        assert_eq!(default_vpc(vpcs).unwrap(), "vpc-1a2b");
        let none = r#"<DescribeVpcsResponse><vpcSet/></DescribeVpcsResponse>"#;
        assert!(default_vpc(none).unwrap_err().to_string().contains("aws.vpc_id"));
        let subnets_xml = r#"<DescribeSubnetsResponse><subnetSet>
            <item><subnetId>subnet-b</subnetId><availabilityZone>eu-west-1b</availabilityZone></item>
            <item><subnetId>subnet-a</subnetId><availabilityZone>eu-west-1a</availabilityZone></item>
            </subnetSet></DescribeSubnetsResponse>"#;
        let found = subnets(subnets_xml).unwrap();
        assert_eq!(found.iter().map(|it| it.id.as_str()).collect::<Vec<_>>(), ["subnet-a", "subnet-b"]);
        let addresses_xml = r#"<DescribeAddressesResponse><addressesSet><item><publicIp>198.51.100.7</publicIp>
            <allocationId>eipalloc-1</allocationId><domain>vpc</domain></item></addressesSet></DescribeAddressesResponse>"#;
        assert_eq!(
            addresses(addresses_xml).unwrap(),
            [Address { allocation_id: "eipalloc-1".into(), public_ip: "198.51.100.7".into(), association: None }]
        );
        let error = r#"<Response><Errors><Error><Code>InvalidAllocationID.NotFound</Code><Message>gone</Message></Error></Errors></Response>"#;
        assert_eq!(error_of(error), Some(("InvalidAllocationID.NotFound".to_string(), "gone".to_string())));
    }

    #[test]
    fn parameters_are_numbered_from_one() {
        assert_eq!(
            filters(&[("vpc-id", "vpc-1"), ("default-for-az", "true")]),
            [
                ("Filter.1.Name".to_string(), "vpc-id".to_string()),
                ("Filter.1.Value.1".to_string(), "vpc-1".to_string()),
                ("Filter.2.Name".to_string(), "default-for-az".to_string()),
                ("Filter.2.Value.1".to_string(), "true".to_string()),
            ]
        );
        let tags = tag_specification("elastic-ip", &[("lbctl:stack", "shop")]);
        assert_eq!(tags[0], ("TagSpecification.1.ResourceType".to_string(), "elastic-ip".to_string()));
        assert_eq!(tags[2], ("TagSpecification.1.Tag.1.Value".to_string(), "shop".to_string()));
    }
}
