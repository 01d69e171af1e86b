//! The AWS clients: the SDK's configuration from the standard chain
//! (environment, profiles, `AWS_ENDPOINT_URL`), made once and checked
//! (a region, credentials) before the first call; the SDK clients of
//! Elastic Load Balancing, Auto Scaling and ACM; and how an AWS error reads.

use std::future::Future;

use anyhow::{anyhow, Context, Result};
use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::Credentials;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::ec2::Ec2;

/// Everything that talks to AWS.
pub struct Clients {
    runtime: tokio::runtime::Runtime,
    config: SdkConfig,
    /// Elastic Load Balancing v2.
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    /// Auto Scaling.
    pub asg: aws_sdk_autoscaling::Client,
    /// Certificate Manager.
    pub acm: aws_sdk_acm::Client,
    /// The EC2 calls the provider makes.
    pub ec2: Ec2,
}

impl Clients {
    /// Loads the configuration (`region` from the spec overrides the
    /// chain's) and checks that a region and credentials are there.
    pub fn connect(region: Option<&str>) -> Result<Clients> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("lbctl-aws")
            .enable_all()
            .build()
            .context("starting the AWS client runtime")?;
        let http =
            aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(CryptoMode::Ring)).build_https();
        // The SDK's standard retry mode: throttling and transient errors
        // are retried with backoff.
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .retry_config(RetryConfig::standard().with_max_attempts(5));
        if let Some(region) = region {
            loader = loader.region(Region::new(region.to_string()));
        }
        let config = runtime.block_on(loader.load());
        let region = config.region().map(|it| it.to_string()).ok_or_else(|| {
            anyhow!("no AWS region: set AWS_REGION (or a profile's region through AWS_PROFILE), or `aws.region` in the spec")
        })?;
        let credentials = runtime.block_on(credentials(&config))?;
        let _ = credentials;
        let ec2 = Ec2::new(&config, &region);
        Ok(Clients {
            elb: aws_sdk_elasticloadbalancingv2::Client::new(&config),
            asg: aws_sdk_autoscaling::Client::new(&config),
            acm: aws_sdk_acm::Client::new(&config),
            ec2,
            config,
            runtime,
        })
    }

    /// Runs an SDK call to completion.
    pub fn run<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Current credentials (refreshed by the chain when they expire).
    pub fn credentials(&self) -> Result<Credentials> {
        self.runtime.block_on(credentials(&self.config))
    }

    /// The region.
    pub fn region(&self) -> String {
        self.config.region().map(|it| it.to_string()).unwrap_or_default()
    }
}

async fn credentials(config: &SdkConfig) -> Result<Credentials> {
    let missing = "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones), or AWS_PROFILE for a profile of ~/.aws/config";
    let provider = config.credentials_provider().ok_or_else(|| anyhow!(missing))?;
    provider.provide_credentials().await.map_err(|err| anyhow!("{missing} ({})", error_chain(&err)))
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// An SDK error as users read it: the call, AWS's code and message.
pub fn sdk_error<E>(call: &str, err: aws_sdk_elasticloadbalancingv2::error::SdkError<E>) -> anyhow::Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|it| it.status().as_u16());
    match err.as_service_error() {
        Some(service) if service.code().is_some() => {
            anyhow!("{call}: {}: {}", service.code().unwrap_or_default(), service.message().unwrap_or("no message"))
        }
        _ => match status {
            Some(status) => anyhow!("{call}: HTTP {status} without an AWS error code ({})", error_chain(&err)),
            None => anyhow!("{call}: {}", error_chain(&err)),
        },
    }
}

/// An SDK call's answer, or `None` when AWS answered that what it names
/// does not exist (`missing`: `LoadBalancerNotFound`, ...).
pub fn unless_missing<T, E>(
    result: Result<T, aws_sdk_elasticloadbalancingv2::error::SdkError<E>>,
    call: &str,
    missing: &str,
) -> Result<Option<T>>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match result {
        Ok(answer) => Ok(Some(answer)),
        Err(err) if code(&err) == Some(missing) => Ok(None),
        Err(err) => Err(sdk_error(call, err)),
    }
}

/// The AWS error code of an SDK error, when AWS answered.
pub fn code<E: ProvideErrorMetadata>(err: &aws_sdk_elasticloadbalancingv2::error::SdkError<E>) -> Option<&str> {
    err.as_service_error().and_then(|it| it.code())
}
