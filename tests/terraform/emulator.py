"""Helpers of tests/terraform/apply.sh, which applies terraform/ to moto, a
local AWS emulator. Subcommands:

  override SCHEMA_JSON URL ALIASES_JSON   the provider overrides (stdout): every
      endpoint in the provider's schema at URL, one name per aliased service
  aliases PLAN_JSON_LINES                 the aliased endpoint names the provider
      warned about (stdout, JSON), from `terraform plan -json`
  plan-check PLAN_JSON                    exit 1 unless the plan changes nothing
      but attributes the emulator does not keep
  deploy URL NAME_PREFIX                  what the pipeline and autoscaling do
  before-destroy URL NAME_PREFIX          what terraform/README.md says a destroy needs

override, aliases and plan-check need only the standard library; deploy and
before-destroy need boto3 (the moto venv has it).
"""

import json
import re
import sys

# The dead proxy: a closed loopback port, for any request not sent to the emulator.
DEAD_PROXY = "http://127.0.0.1:9"

# Attributes moto does not keep or return, so that a plan after an apply shows
# them as changes although nothing changed: (resource type, attribute): why.
# Neither the service's desired_count nor its task_definition is here.
EMULATOR_DOES_NOT_KEEP = {
    ("aws_vpc_security_group_ingress_rule", "description"): "moto returns no description for a rule",
    ("aws_vpc_security_group_egress_rule", "description"): "moto returns no description for a rule",
    ("aws_ecs_service", "health_check_grace_period_seconds"): "moto's ECS does not store it",
    ("aws_ecs_service", "availability_zone_rebalancing"): "moto's ECS does not store it",
    ("aws_db_instance", "monitoring_interval"): "moto's RDS does not store Enhanced Monitoring",
    ("aws_db_instance", "monitoring_role_arn"): "moto's RDS does not store Enhanced Monitoring",
    ("aws_db_instance", "performance_insights_enabled"): "moto's RDS does not store Performance Insights",
    ("aws_db_instance", "performance_insights_kms_key_id"): "moto's RDS does not store Performance Insights",
    ("aws_db_parameter_group", "parameter"): "moto's RDS does not return a group's user parameters",
}


def override(schema_path, url, aliases_path):
    schema = json.load(open(schema_path))
    provider = schema["provider_schemas"]["registry.terraform.io/hashicorp/aws"]["provider"]
    names = sorted(provider["block"]["block_types"]["endpoints"]["block"]["attributes"])
    dropped = set()
    for group in json.load(open(aliases_path)):
        dropped.update(sorted(group)[1:])
    lines = ['provider "aws" {']
    strings = {"access_key": "emulator", "secret_key": "emulator", "http_proxy": DEAD_PROXY,
               "https_proxy": DEAD_PROXY, "no_proxy": "127.0.0.1"}
    lines += [f'  {key} = "{value}"' for key, value in strings.items()]
    flags = ("skip_credentials_validation", "skip_metadata_api_check", "skip_region_validation", "s3_use_path_style")
    lines += [f"  {key} = true" for key in flags]
    lines += ["  max_retries = 2", "  endpoints {"]
    lines += [f'    {name} = "{url}"' for name in names if name not in dropped]
    lines += ["  }", "}"]
    print("\n".join(lines))


def aliases(plan_json_lines):
    groups = []
    for line in open(plan_json_lines):
        diagnostic = json.loads(line).get("diagnostic") or {}
        if diagnostic.get("summary") == "Invalid Attribute Combination":
            groups.append(re.findall(r'"endpoints\[0\]\.([a-z0-9]+)"', diagnostic.get("detail", "")))
    print(json.dumps(groups))


def plan_check(plan_json):
    problems, tolerated = [], set()
    for change in json.load(open(plan_json)).get("resource_changes", []):
        actions = change["change"]["actions"]
        if actions in (["no-op"], ["read"]):
            continue
        if actions != ["update"]:
            problems.append(f"{change['address']}: {'/'.join(actions)}")
            continue
        before, after = change["change"]["before"] or {}, change["change"]["after"] or {}
        unknown = change["change"].get("after_unknown") or {}
        for key in sorted(set(before) | set(after)):
            if before.get(key) == after.get(key) and not unknown.get(key):
                continue
            why = EMULATOR_DOES_NOT_KEEP.get((change["type"], key))
            if why:
                tolerated.add(f"{change['type']}.{key} ({why})")
            else:
                problems.append(f"{change['address']}.{key}: {before.get(key)!r} -> {after.get(key)!r}")
    for line in sorted(tolerated):
        print(f"  emulator difference, not the stack's: {line}")
    for line in problems:
        print(f"  CHANGE: {line}")
    return 1 if problems else 0


def clients(url):
    import boto3  # only here: the other subcommands run without it

    session = boto3.session.Session(region_name="us-east-1")
    return session.client("ecs", endpoint_url=url), session.client("elbv2", endpoint_url=url)


def the_service(ecs, prefix):
    cluster = f"{prefix}-cluster"
    return ecs.describe_services(cluster=cluster, services=[f"{prefix}-app"])["services"][0]


def deploy(url, prefix):
    """As CodePipeline's ECS deploy action does: a copy of the service's
    revision with another image, the service pointed at it; as autoscaling
    does: one task more."""
    ecs, _ = clients(url)
    service = the_service(ecs, prefix)
    current = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"]
    keep = ("family", "taskRoleArn", "executionRoleArn", "networkMode", "containerDefinitions", "volumes",
            "requiresCompatibilities", "cpu", "memory", "runtimePlatform")
    revision = {key: current[key] for key in keep if key in current}
    for container in revision["containerDefinitions"]:
        container["image"] = re.sub(r":emulator$", ":deployed", container["image"])
    new = ecs.register_task_definition(**revision)["taskDefinition"]["taskDefinitionArn"]
    count = service["desiredCount"] + 1
    ecs.update_service(cluster=service["clusterArn"], service=service["serviceName"], taskDefinition=new,
                       desiredCount=count)
    old = service["taskDefinition"].split("/")[-1]
    print(f"  pipeline deploy and scale-out: {service['serviceName']} runs {new.split('/')[-1]} "
          f"x {count} (was {old} x {service['desiredCount']})")
    return 0


def before_destroy(url, prefix):
    _, elbv2 = clients(url)
    for lb in elbv2.describe_load_balancers(Names=[f"{prefix}-alb"])["LoadBalancers"]:
        elbv2.modify_load_balancer_attributes(
            LoadBalancerArn=lb["LoadBalancerArn"],
            Attributes=[{"Key": "deletion_protection.enabled", "Value": "false"}])
    print("  ALB deletion protection off (terraform/README.md, Destroy)")
    return 0


def main(argv):
    commands = {"override": override, "aliases": aliases, "plan-check": plan_check, "deploy": deploy,
                "before-destroy": before_destroy}
    if len(argv) < 2 or argv[1] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    return commands[argv[1]](*argv[2:]) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
