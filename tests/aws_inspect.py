"""What an AWS endpoint holds, as JSON on stdout: load balancers with their
listeners and rules, target groups with their attributes and targets,
auto-scaling groups with their policies, launch templates with their user
data, Elastic IPs and certificates. The aws provider's tests read it with
boto3 (from the tests' virtual environment) against moto's server, as a
user would check real AWS.

Usage: AWS_ENDPOINT_URL=... python3 aws_inspect.py
"""

import base64
import json
import os

import boto3

REGION = os.environ.get("AWS_REGION", "us-east-1")


def client(name):
    return boto3.client(name, region_name=REGION, endpoint_url=os.environ["AWS_ENDPOINT_URL"])


def main():
    elb, asg, ec2, acm = client("elbv2"), client("autoscaling"), client("ec2"), client("acm")
    found = {"load_balancers": {}, "target_groups": {}, "autoscaling_groups": {}, "launch_templates": {}}
    for lb in elb.describe_load_balancers()["LoadBalancers"]:
        listeners = []
        for listener in elb.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"]:
            rules = elb.describe_rules(ListenerArn=listener["ListenerArn"])["Rules"]
            listeners.append({
                "port": listener["Port"],
                "protocol": listener["Protocol"],
                "certificates": [it["CertificateArn"] for it in listener.get("Certificates", [])],
                "default_actions": listener["DefaultActions"],
                "rules": [
                    {"priority": it["Priority"], "conditions": it["Conditions"], "actions": it["Actions"]}
                    for it in rules if not it.get("IsDefault")
                ],
            })
        attributes = elb.describe_load_balancer_attributes(LoadBalancerArn=lb["LoadBalancerArn"])["Attributes"]
        found["load_balancers"][lb["LoadBalancerName"]] = {
            "arn": lb["LoadBalancerArn"],
            "type": lb["Type"],
            "dns_name": lb["DNSName"],
            "listeners": listeners,
            "attributes": {it["Key"]: it["Value"] for it in attributes},
        }
    for tg in elb.describe_target_groups()["TargetGroups"]:
        arn = tg["TargetGroupArn"]
        attributes = elb.describe_target_group_attributes(TargetGroupArn=arn)["Attributes"]
        health = elb.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]
        found["target_groups"][tg["TargetGroupName"]] = {
            "arn": arn,
            "group": {key: value for key, value in tg.items() if key != "ResponseMetadata"},
            "attributes": {it["Key"]: it["Value"] for it in attributes},
            "targets": [{"id": it["Target"]["Id"], "port": it["Target"].get("Port")} for it in health],
        }
    policies = asg.describe_policies()["ScalingPolicies"]
    for group in asg.describe_auto_scaling_groups()["AutoScalingGroups"]:
        name = group["AutoScalingGroupName"]
        found["autoscaling_groups"][name] = {
            "min": group["MinSize"],
            "max": group["MaxSize"],
            "desired": group["DesiredCapacity"],
            "target_group_arns": group.get("TargetGroupARNs", []),
            "health_check_type": group.get("HealthCheckType"),
            "health_check_grace_period": group.get("HealthCheckGracePeriod"),
            "termination_policies": group.get("TerminationPolicies", []),
            "launch_template": group.get("LaunchTemplate"),
            "instances": len(group.get("Instances", [])),
            "policies": [
                {"type": it["PolicyType"], "tracking": it.get("TargetTrackingConfiguration")}
                for it in policies if it["AutoScalingGroupName"] == name
            ],
        }
    for template in ec2.describe_launch_templates()["LaunchTemplates"]:
        versions = ec2.describe_launch_template_versions(LaunchTemplateId=template["LaunchTemplateId"])
        latest = max(versions["LaunchTemplateVersions"], key=lambda it: it["VersionNumber"])
        data = latest["LaunchTemplateData"]
        found["launch_templates"][template["LaunchTemplateName"]] = {
            "id": template["LaunchTemplateId"],
            "versions": len(versions["LaunchTemplateVersions"]),
            "image_id": data.get("ImageId"),
            "instance_type": data.get("InstanceType"),
            "user_data": base64.b64decode(data.get("UserData", "")).decode(),
        }
    found["elastic_ips"] = [
        {"ip": it["PublicIp"], "tags": {tag["Key"]: tag["Value"] for tag in it.get("Tags", [])}}
        for it in ec2.describe_addresses()["Addresses"]
    ]
    found["certificates"] = [it["CertificateArn"] for it in acm.list_certificates()["CertificateSummaryList"]]
    print(json.dumps(found, default=str))


if __name__ == "__main__":
    main()
