"""Structural tests of terraform/: the wiring between the ALB, the service, the
database, the collector and the app that breaks silently when one side
changes, and the security properties the stack promises. Parses the HCL with
python-hcl2, buildspec.yml with PyYAML, and the app's defaults and metric
names from its Rust source, so a change to either side that breaks the other
fails here. `terraform validate` needs the AWS provider, which cannot be
downloaded offline: these tests check structure, not a plan.

Run: python tests/terraform/test_wiring.py   (needs python-hcl2 and PyYAML)
SALDOS_SOURCE_ROOT=<dir> reads the service's metric names from another source
tree (a manual check against a branch not merged yet); CI uses src/.
"""

import os
import pathlib
import re
import sys

import hcl2
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "terraform"
SOURCE_ROOT = pathlib.Path(os.environ.get("SALDOS_SOURCE_ROOT", ROOT / "src"))


def unquote(value):
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def load_terraform():
    """All blocks of all .tf files: {kind: {type: {name: body}}}, plus locals and variables."""
    resources, data, locals_, variables = {}, {}, {}, {}
    for path in sorted(TERRAFORM.glob("*.tf")):
        with path.open() as handle:
            parsed = hcl2.load(handle)
        for kind, into in (("resource", resources), ("data", data)):
            for block in parsed.get(kind, []):
                for rtype, named in block.items():
                    into.setdefault(unquote(rtype), {}).update(
                        {unquote(name): body for name, body in named.items()}
                    )
        for block in parsed.get("locals", []):
            locals_.update(block)
        for block in parsed.get("variable", []):
            variables.update({unquote(name): body for name, body in block.items()})
    return resources, data, locals_, variables


RESOURCES, DATA, LOCALS, VARIABLES = load_terraform()


def resolve(value):
    """A literal, or a `${local.x}` / `${var.x}` reference resolved to its value or default."""
    value = unquote(value)
    if isinstance(value, str):
        match = re.fullmatch(r"\$\{(local|var)\.([a-z0-9_]+)\}", value)
        if match:
            kind, name = match.groups()
            if kind == "local":
                return resolve(LOCALS[name])
            return resolve(VARIABLES[name]["default"])
    return value


def number(value):
    return int(resolve(value))


def rust_constant(path, pattern):
    """An integer the app defines, found in its source by `pattern`."""
    text = (ROOT / path).read_text()
    match = re.search(pattern, text)
    assert match, f"{pattern} not found in {path}"
    return int(match.group(1).replace("_", ""))


APP_PORT = rust_constant("src/config.rs", r'env = "PORT", default_value_t = (\d+)')
APP_IDLE_S = rust_constant("src/server.rs", r"IDLE_TIMEOUT: Duration = Duration::from_secs\((\d+)\)")
SERVICE = RESOURCES["aws_ecs_service"]["app"]
CONTAINER = LOCALS["container"]
TARGET_GROUP = RESOURCES["aws_lb_target_group"]["app"]
DB = RESOURCES["aws_db_instance"]["main"]
MODES = ("postgres", "journal")


def containers(mode):
    """The task's container definitions in `mode`, by name."""
    listed = [resolve(ref) for ref in LOCALS["task_containers"][mode]]
    return {resolve(c["name"]): c for c in listed}


def environment(container, mode, auth="jwt"):
    """A container's environment in `mode` as {name: value as written}: its
    literal entries plus the locals its concat() lists, picked by mode or auth
    mode."""
    value = container["environment"]
    if isinstance(value, list):
        return {unquote(e["name"]): unquote(e["value"]) for e in value}
    literals = re.findall(r'\{name = "([A-Z_]+)", value = ("[^"]*"|[^}]*)\}', value)
    # An unquoted expression inside a string expression: write it as ${…}.
    found = {n: unquote(v) if v.startswith('"') else "${" + v + "}" for n, v in literals}
    for name, key in re.findall(r'(?:concat\(|, )local\.([a-z_]+)(?:\[([^\]]+)\])?', value):
        part = LOCALS[name]
        if key:
            part = part[{"var.storage": mode, "local.auth_mode": auth}.get(key, unquote(key))]
        found.update(environment({"environment": part}, mode, auth))
    return found


def policy_statements(document):
    """A policy document's statements, dynamic ones included: [(statement, mode-condition)]."""
    out = [(st, None) for st in document.get("statement", [])]
    for block in document.get("dynamic", []):
        for body in block.values():
            for st in body["content"]:
                out.append((st, body["for_each"]))
    return out


def refs_in(value):
    """Every Terraform reference (aws_x.y, local.z, var.w) in a parsed value."""
    return set(re.findall(r"\b((?:aws_[a-z0-9_]+\.[a-z0-9_]+)|(?:local|var)\.[a-z0-9_]+)", str(value)))


def source_metric_names():
    """Every metric name the service's source spells out as a string literal."""
    names = set()
    for path in SOURCE_ROOT.rglob("*.rs"):
        names.update(re.findall(r'"(saldos_[a-z0-9_]+)"', path.read_text()))
    return names


def test_health_check_is_the_apps_health_route():
    health_check = TARGET_GROUP["health_check"][0]
    assert resolve(health_check["path"]) == "/health"
    assert resolve(health_check["matcher"]) == "200"
    command = [resolve(part) for part in CONTAINER["healthCheck"]["command"]]
    assert command == ["CMD", "/usr/local/bin/saldos", "healthcheck"], command


def test_one_port_everywhere():
    ports = {
        "app default": APP_PORT,
        "container": number(CONTAINER["portMappings"][0]["containerPort"]),
        "target group": number(TARGET_GROUP["port"]),
        "service load_balancer": number(SERVICE["load_balancer"][0]["container_port"]),
    }
    for name in ("alb_to_tasks",):
        rule = RESOURCES["aws_vpc_security_group_egress_rule"][name]
        ports[f"sg {name}"] = number(rule["from_port"])
        assert number(rule["to_port"]) == number(rule["from_port"])
    rule = RESOURCES["aws_vpc_security_group_ingress_rule"]["tasks_from_alb"]
    ports["sg tasks_from_alb"] = number(rule["from_port"])
    assert len(set(ports.values())) == 1, ports


def test_tasks_get_no_public_ip_and_live_in_private_subnets():
    network = SERVICE["network_configuration"][0]
    assert resolve(network["assign_public_ip"]) is False
    assert "aws_subnet.private" in str(network["subnets"])


def test_deployments_per_mode():
    """Postgres: several tasks, rolling 50/200, autoscaling. Journal: one writer, stop-then-start."""
    assert resolve(SERVICE["desired_count"]) == "${local.deployment.desired_count}"
    assert resolve(SERVICE["deployment_minimum_healthy_percent"]) == "${local.deployment.minimum_healthy_percent}"
    assert resolve(SERVICE["deployment_maximum_percent"]) == "${local.deployment.maximum_percent}"
    assert LOCALS["deployment"] == "${local.deployments[var.storage]}"
    expected = {
        "postgres": lambda d: d >= 2,
        "journal": lambda d: d == 1,
    }
    rolling = {"postgres": (50, 200), "journal": (0, 100)}
    for mode in MODES:
        deployment = LOCALS["deployments"][mode]
        assert expected[mode](number(deployment["desired_count"])), (mode, deployment)
        percents = (number(deployment["minimum_healthy_percent"]), number(deployment["maximum_percent"]))
        assert percents == rolling[mode], (mode, percents)
    assert resolve(VARIABLES["storage"]["default"]) == "postgres"
    breaker = SERVICE["deployment_circuit_breaker"][0]
    assert resolve(breaker["enable"]) is True and resolve(breaker["rollback"]) is True
    # Autoscaling exists in postgres mode only, never below two tasks, on CPU and requests.
    target = RESOURCES["aws_appautoscaling_target"]["app"]
    assert resolve(target["count"]) == "${local.postgres ? 1 : 0}"
    assert number(target["min_capacity"]) >= 2
    assert "var.autoscaling_min_tasks >= 2" in str(VARIABLES["autoscaling_min_tasks"]["validation"])
    assert "var.desired_count >= 2" in str(VARIABLES["desired_count"]["validation"])
    assert LOCALS["scaling_policies"].endswith("if local.postgres}}"), LOCALS["scaling_policies"]
    metrics = {resolve(p["metric"]) for p in LOCALS["scaling_policy_definitions"].values()}
    assert metrics == {"ECSServiceAverageCPUUtilization", "ALBRequestCountPerTarget"}, metrics
    assert "local.scaling_policies" in str(RESOURCES["aws_appautoscaling_policy"]["app"]["for_each"])
    # The journal's EFS exists in journal mode only.
    assert resolve(RESOURCES["aws_efs_file_system"]["journal"]["count"]) == "${local.journal ? 1 : 0}"
    volume = RESOURCES["aws_ecs_task_definition"]["app"]["dynamic"][0]['"volume"']
    assert volume["for_each"] == "${local.journal ? [1] : []}"


def test_deregistration_is_shorter_than_the_stop_timeout():
    stop_timeout_s = number(CONTAINER["stopTimeout"])
    grace_s = number(LOCALS["shutdown_grace_s"])
    assert number(TARGET_GROUP["deregistration_delay"]) < stop_timeout_s
    assert grace_s < stop_timeout_s <= 120
    for mode in MODES:
        grace = environment(CONTAINER, mode)["SALDOS_SHUTDOWN_GRACE"]
        assert grace in ('"${local.shutdown_grace_s}s"', "${local.shutdown_grace_s}s"), grace


def test_alb_idle_timeout_is_below_the_apps_keep_alive():
    assert number(LOCALS["app_keepalive_idle_s"]) == APP_IDLE_S
    alb_idle_s = number(RESOURCES["aws_lb"]["main"]["idle_timeout"])
    assert alb_idle_s < APP_IDLE_S, (alb_idle_s, APP_IDLE_S)
    condition = VARIABLES["alb_idle_timeout_s"]["validation"][0]["condition"]
    assert f"< {APP_IDLE_S}" in str(condition), condition


def test_containers_are_locked_down():
    for mode in MODES:
        for name, container in containers(mode).items():
            assert resolve(container["readonlyRootFilesystem"]) is True, (mode, name)
            drop = [resolve(c) for c in container["linuxParameters"]["capabilities"]["drop"]]
            assert drop == ["ALL"], (mode, name)
            if name != "collector":  # the collector runs as its image's own non-root user
                assert resolve(container["user"]) == "65532:65532", (mode, name)
    access_point = RESOURCES["aws_efs_access_point"]["journal"]
    assert number(access_point["posix_user"][0]["uid"]) == 65532
    volume = RESOURCES["aws_ecs_task_definition"]["app"]["dynamic"][0]['"volume"']["content"][0]
    efs = volume["efs_volume_configuration"][0]
    assert resolve(efs["transit_encryption"]) == "ENABLED"
    assert resolve(efs["authorization_config"][0]["iam"]) == "ENABLED"
    assert [resolve(m["containerPath"]) for m in LOCALS["app_mount_points"]["journal"]] == ["/data"]
    assert LOCALS["app_mount_points"]["postgres"] == []


def test_dockerfile_matches_the_task():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"EXPOSE {APP_PORT}" in dockerfile
    assert "USER 65532:65532" in dockerfile
    assert "SALDOS_DATA_DIR=/data" in dockerfile
    assert 'ENTRYPOINT ["/usr/local/bin/saldos"]' in dockerfile
    # The RDS CA bundle lands where PGSSLROOTCERT points.
    bundle = resolve(LOCALS["rds_ca_bundle_path"])
    directory, file = bundle.rsplit("/", 1)
    assert f"/out/share/{file}" in dockerfile and f"/out/share/ {directory}/" in dockerfile, bundle
    assert environment(CONTAINER, "postgres")["PGSSLROOTCERT"] == "${local.rds_ca_bundle_path}"


def test_database_is_multi_az_encrypted_private_and_forces_tls():
    assert resolve(DB["count"]) == "${local.postgres ? 1 : 0}"
    for key in ("multi_az", "storage_encrypted", "iam_database_authentication_enabled", "manage_master_user_password", "performance_insights_enabled", "copy_tags_to_snapshot"):
        assert resolve(DB[key]) is True, key
    assert resolve(DB["publicly_accessible"]) is False
    for key in ("kms_key_id", "performance_insights_kms_key_id", "master_user_secret_kms_key_id"):
        assert "aws_kms_key.main" in str(DB[key]), key
    assert number(DB["backup_retention_period"]) >= 7
    assert "var.db_backup_retention_days >= 7" in str(VARIABLES["db_backup_retention_days"]["validation"])
    assert resolve(DB["deletion_protection"]) is True
    assert resolve(DB["skip_final_snapshot"]) is False
    assert set(resolve(x) for x in DB["enabled_cloudwatch_logs_exports"]) >= {"postgresql", "upgrade"}
    parameters = {resolve(p["name"]): resolve(p["value"]) for p in RESOURCES["aws_db_parameter_group"]["main"]["parameter"]}
    assert parameters.get("rds.force_ssl") == "1", parameters
    assert "aws_db_parameter_group.main" in str(DB["parameter_group_name"])
    # Its subnets are the database subnets, whose route table has no route.
    assert "aws_subnet.database" in str(RESOURCES["aws_db_subnet_group"]["main"]["subnet_ids"])
    assert "route" not in RESOURCES["aws_route_table"]["database"]
    association = RESOURCES["aws_route_table_association"]["database"]
    assert "aws_subnet.database" in str(association["subnet_id"]) and "aws_route_table.database" in str(association["route_table_id"])
    assert not any("aws_route_table.database" in str(r) for r in RESOURCES.get("aws_route", {}).values())


def test_only_the_tasks_reach_the_database_on_5432():
    assert str(DB["vpc_security_group_ids"]) == "['${aws_security_group.database[0].id}']"
    ingress = [r for r in RESOURCES["aws_vpc_security_group_ingress_rule"].values() if "aws_security_group.database" in str(r["security_group_id"])]
    assert ingress, "no ingress rule on the database security group"
    for rule in ingress:
        assert resolve(rule["referenced_security_group_id"]) == "${aws_security_group.tasks.id}", rule
        assert "cidr_ipv4" not in rule and "cidr_ipv6" not in rule, rule
        assert number(rule["from_port"]) == number(rule["to_port"]) == 5432, rule
    egress = RESOURCES["aws_vpc_security_group_egress_rule"]["tasks_to_database"]
    assert number(egress["from_port"]) == number(egress["to_port"]) == 5432
    assert "aws_security_group.database" in str(egress["referenced_security_group_id"])
    assert not any("aws_security_group.database" in str(r["security_group_id"]) for r in RESOURCES["aws_vpc_security_group_egress_rule"].values())
    postgres_env = environment(CONTAINER, "postgres")
    assert postgres_env["PGPORT"] == "${tostring(local.db_port)}"


def test_master_secret_reaches_only_the_migrate_container_via_the_execution_role():
    by_name = containers("postgres")
    assert set(by_name) == {"migrate", "collector", "saldos"}
    migrate = by_name["migrate"]
    assert resolve(migrate["essential"]) is False
    secrets = {resolve(s["name"]): resolve(s["valueFrom"]) for s in migrate["secrets"]}
    assert secrets == {"PGPASSWORD": "${local.master_secret_arn}:password::"}, secrets
    assert "master_user_secret[0].secret_arn" in LOCALS["master_secret_arn"]
    migrate_env = environment(migrate, "postgres")
    assert migrate_env["PGUSER"] == "${var.db_master_username}"
    assert migrate_env["SALDOS_DB_APP_ROLE"] == "${var.db_app_user}"
    assert [resolve(c) for c in migrate["command"]] == ["migrate"]
    for name in ("collector", "saldos"):
        assert "secrets" not in by_name[name], name
        assert "PGPASSWORD" not in environment(by_name[name], "postgres"), name
    # The execution role reads this secret, and decrypts through Secrets Manager only.
    readers = []
    for doc_name, document in DATA["aws_iam_policy_document"].items():
        for statement, _ in policy_statements(document):
            actions = [resolve(a) for a in statement.get("actions", [])]
            allows = resolve(statement.get("effect", "Allow")) == "Allow"
            if allows and any(a.startswith("secretsmanager:") or a == "*" for a in actions):
                readers.append((doc_name, actions, [unquote(r) for r in statement["resources"]]))
    assert readers == [("execution", ["secretsmanager:GetSecretValue"], ["${local.master_secret_arn}"])], readers
    decrypt = [st for st, _ in policy_statements(DATA["aws_iam_policy_document"]["execution"]) if "kms:Decrypt" in str(st.get("actions"))]
    assert len(decrypt) == 1 and "secretsmanager.${var.region}.amazonaws.com" in str(decrypt[0]["condition"]), decrypt
    assert "execution_role" in str(RESOURCES["aws_ecs_task_definition"]["app"]["execution_role_arn"])


def test_the_app_logs_in_with_iam_tokens_as_its_own_role():
    env = environment(CONTAINER, "postgres")
    assert env["SALDOS_STORAGE"] == "postgres"
    assert env["PGUSER"] == "${var.db_app_user}"
    assert env["SALDOS_DB_AUTH"] == "rds-iam"
    assert env["PGSSLMODE"] == "verify-full"
    assert env["AWS_REGION"] == "${var.region}"
    assert "SALDOS_DB_CONNECTIONS" in env and "SALDOS_DB_TIMEOUT" in env
    assert environment(CONTAINER, "journal")["SALDOS_STORAGE"] == "journal"
    assert resolve(DB["iam_database_authentication_enabled"]) is True
    connect = [st for st, _ in policy_statements(DATA["aws_iam_policy_document"]["task"]) if "rds-db:connect" in str(st["actions"])]
    assert len(connect) == 1 and [unquote(r) for r in connect[0]["resources"]] == ["${local.db_user_arn}"], connect
    assert LOCALS["db_user_arn"].endswith('dbuser:${aws_db_instance.main[0].resource_id}/${var.db_app_user}" : ""}'), LOCALS["db_user_arn"]
    # The app's dependencies: the migration succeeded, the collector started.
    depends = {(resolve(d["containerName"]), resolve(d["condition"])) for d in LOCALS["app_depends_on"]["postgres"]}
    assert depends == {("migrate", "SUCCESS"), ("collector", "START")}, depends
    assert resolve(CONTAINER["dependsOn"]) == "${local.app_depends_on[var.storage]}"


def test_authentication_is_on_unless_explicitly_off():
    assert resolve(VARIABLES["allow_unauthenticated"]["default"]) is False
    condition = VARIABLES["allow_unauthenticated"]["validation"][0]["condition"]
    for name in ("var.allow_unauthenticated ||", 'var.jwt_issuer != ""', 'var.jwt_audience != ""', 'var.jwks_url != ""'):
        assert name in condition, (name, condition)
    jwt = environment(CONTAINER, "postgres", "jwt")
    assert jwt["SALDOS_AUTH"] == "jwt"
    assert (jwt["SALDOS_JWT_ISSUER"], jwt["SALDOS_JWT_AUDIENCE"], jwt["SALDOS_JWKS_URL"]) == ("${var.jwt_issuer}", "${var.jwt_audience}", "${var.jwks_url}")
    assert environment(CONTAINER, "postgres", "none")["SALDOS_AUTH"] == "none"
    assert LOCALS["auth_mode"] == '${var.allow_unauthenticated ? "none" : "jwt"}'


def test_the_tasks_reach_every_aws_api_they_call_through_endpoints():
    endpoints = LOCALS["endpoints"]
    for service in ('"ecr.api"', '"ecr.dkr"', '"logs"', '"xray"', '"secretsmanager"', '"cognito-idp"'):
        assert service in endpoints, service
    assert "nat_gateway" not in str(RESOURCES.keys())
    routes = RESOURCES["aws_route_table"]["private"].get("route")
    assert not routes, routes


def test_collector_scrapes_the_metrics_listener_and_exports_to_cloudwatch_and_xray():
    for mode in MODES:
        collector = containers(mode)["collector"]
        assert collector["image"] == "${local.collector_image}"
        assert resolve(collector["healthCheck"]["command"][1]) == "/healthcheck"
        env = environment(CONTAINER, mode)
        assert env["SALDOS_METRICS_ADDR"] == "${local.metrics_addr}"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://${local.otlp_http_addr}"
        assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
        assert env["OTEL_TRACES_SAMPLER_ARG"] == "${tostring(var.trace_sampling_ratio)}"
        assert env["OTEL_SERVICE_NAME"] == "saldos"
        config_env = {resolve(e["name"]): e["value"] for e in collector["environment"]}
        assert config_env == {"AOT_CONFIG_CONTENT": "${yamlencode(local.collector_config)}"}, config_env
    assert resolve(LOCALS["metrics_addr"]) == "127.0.0.1:9464"
    assert resolve(LOCALS["otlp_http_addr"]) == "127.0.0.1:4318"
    assert float(resolve(VARIABLES["trace_sampling_ratio"]["default"])) == 0.05
    assert unquote(LOCALS["collector_image"]).endswith(":${var.collector_version}"), LOCALS["collector_image"]
    assert unquote(LOCALS["collector_repository"]).endswith("/aws-observability/aws-otel-collector")
    assert re.fullmatch(r"v\d+\.\d+\.\d+", resolve(VARIABLES["collector_version"]["default"]))
    config = LOCALS["collector_config"]
    scrape = config["receivers"]["prometheus"]["config"]["scrape_configs"][0]
    assert scrape["static_configs"][0]["targets"] == ["${local.metrics_addr}"]
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"] == "${local.otlp_http_addr}"
    pipelines = config["service"]["pipelines"]
    assert [resolve(x) for x in pipelines["metrics"]["receivers"]] == ["prometheus"]
    assert [resolve(x) for x in pipelines["metrics"]["exporters"]] == ["awsemf"]
    assert [resolve(x) for x in pipelines["traces"]["receivers"]] == ["otlp"]
    assert [resolve(x) for x in pipelines["traces"]["exporters"]] == ["awsxray"]
    emf = config["exporters"]["awsemf"]
    assert "aws_cloudwatch_log_group.metrics" in str(emf["log_group_name"])
    # The task role may write exactly there, and traces to X-Ray.
    task = {resolve(st["sid"]): st for st, _ in policy_statements(DATA["aws_iam_policy_document"]["task"])}
    assert "aws_cloudwatch_log_group.metrics" in str(task["WriteEmfMetrics"]["resources"])
    assert [resolve(a) for a in task["SendTraces"]["actions"]] == ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]


def test_the_collector_scrapes_the_address_the_service_listens_on():
    config = (SOURCE_ROOT / "config.rs").read_text()
    match = re.search(r'env = "SALDOS_METRICS_ADDR", default_value = "([^"]+)"', config)
    assert match, f"no SALDOS_METRICS_ADDR default in {SOURCE_ROOT / 'config.rs'}"
    assert resolve(LOCALS["metrics_addr"]) == match.group(1), (LOCALS["metrics_addr"], match.group(1))


def test_alarms_and_dashboard_use_metrics_the_service_exports():
    exported = source_metric_names()
    assert exported, f"no saldos_* metric name in {SOURCE_ROOT}"
    used = set(re.findall(r"saldos_[a-z0-9_]+", str([RESOURCES["aws_cloudwatch_metric_alarm"], LOCALS["alarm_definitions"]])))
    used |= {resolve(name) for name in LOCALS["service_metrics"]}
    assert "saldos_storage_healthy" in used
    missing = used - exported
    assert not missing, f"alarms or the dashboard use metrics the service does not export: {sorted(missing)}"
    assert "local.service_metrics" in str(LOCALS["collector_config"]["exporters"]["awsemf"]["metric_declarations"])
    assert "local.service_metrics" in str(RESOURCES["aws_cloudwatch_dashboard"]["main"]["dashboard_body"])


def test_alarms_cover_the_service_the_alb_and_the_database_and_notify_sns():
    definitions = LOCALS["alarm_definitions"]
    metrics = {resolve(a["metric"]): (name, a) for name, a in definitions.items()}
    expected = {  # metric: (statistic, postgres mode only)
        "saldos_storage_healthy": ("Minimum", False),
        "TargetResponseTime": ("p99", False),
        "UnHealthyHostCount": ("Maximum", False),
        "CPUUtilization": ("Average", True),
        "FreeStorageSpace": ("Minimum", True),
        "DatabaseConnections": ("Maximum", True),
    }
    for metric, (statistic, postgres_only) in expected.items():
        name, alarm = metrics[metric]
        assert resolve(alarm["statistic"]) == statistic, (metric, alarm)
        assert resolve(alarm["postgres"]) is postgres_only, (metric, alarm)
    assert resolve(definitions["storage_unhealthy"]["missing"]) == "breaching"
    assert LOCALS["alarms"].endswith("if local.postgres || !alarm.postgres}}"), LOCALS["alarms"]
    alarms = RESOURCES["aws_cloudwatch_metric_alarm"]
    assert unquote(alarms["metric"]["for_each"]) == "${local.alarms}"
    rate = str(alarms["http_5xx_rate"])
    assert "HTTPCode_Target_5XX_Count" in rate and "HTTPCode_ELB_5XX_Count" in rate and "RequestCount" in rate
    for name, alarm in alarms.items():
        assert [resolve(a) for a in alarm["alarm_actions"]] == ["${aws_sns_topic.alarms.arn}"], name
    assert "aws_kms_key.main" in str(RESOURCES["aws_sns_topic"]["alarms"]["kms_master_key_id"])


def test_logs_are_exported_to_a_locked_down_bucket():
    app = RESOURCES["aws_cloudwatch_log_group"]["app"]
    assert unquote(app["retention_in_days"]) == "${var.app_log_retention_days}"
    assert number(VARIABLES["app_log_retention_days"]["default"]) == 14
    subscription = RESOURCES["aws_cloudwatch_log_subscription_filter"]["app_to_history"]
    assert "aws_cloudwatch_log_group.app.name" in str(subscription["log_group_name"])
    assert resolve(subscription["filter_pattern"]) == ""
    assert "aws_kinesis_firehose_delivery_stream.logs" in str(subscription["destination_arn"])
    firehose = RESOURCES["aws_kinesis_firehose_delivery_stream"]["logs"]
    assert 'aws_s3_bucket.history["logs"]' in str(firehose["extended_s3_configuration"][0]["bucket_arn"])
    assert resolve(firehose["server_side_encryption"][0]["enabled"]) is True
    # Logs and trail buckets always exist; only the pipeline's is optional.
    assert {"logs", "trail"} <= set(LOCALS["bucket_definitions"])
    assert LOCALS["history_buckets"].endswith('if name != "artifacts" || var.enable_pipeline}}'), LOCALS["history_buckets"]
    for kind in ("aws_s3_bucket_public_access_block", "aws_s3_bucket_versioning", "aws_s3_bucket_server_side_encryption_configuration", "aws_s3_bucket_lifecycle_configuration", "aws_s3_bucket_policy"):
        assert resolve(RESOURCES[kind]["history"]["for_each"]) == "${aws_s3_bucket.history}", kind
    block = RESOURCES["aws_s3_bucket_public_access_block"]["history"]
    assert all(resolve(block[k]) is True for k in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"))
    assert resolve(RESOURCES["aws_s3_bucket_versioning"]["history"]["versioning_configuration"][0]["status"]) == "Enabled"
    sse = RESOURCES["aws_s3_bucket_server_side_encryption_configuration"]["history"]["rule"][0]["apply_server_side_encryption_by_default"][0]
    assert resolve(sse["sse_algorithm"]) == "aws:kms"
    rule = RESOURCES["aws_s3_bucket_lifecycle_configuration"]["history"]["rule"][0]
    assert resolve(rule["dynamic"][0]['"transition"']["content"][0]["storage_class"]) == "DEEP_ARCHIVE"
    tls = DATA["aws_iam_policy_document"]["tls_only"]["statement"][0]
    assert "aws_s3_bucket.history" in str(DATA["aws_iam_policy_document"]["tls_only"]["for_each"])
    assert resolve(tls["effect"]) == "Deny" and resolve(tls["condition"][0]["variable"]) == "aws:SecureTransport"


def test_cloudtrail_is_multi_region_write_only_encrypted_and_validated():
    trail = RESOURCES["aws_cloudtrail"]["main"]
    assert resolve(trail["is_multi_region_trail"]) is True
    assert resolve(trail["enable_log_file_validation"]) is True
    assert "aws_kms_key.main" in str(trail["kms_key_id"])
    assert 'aws_s3_bucket.history["trail"]' in str(trail["s3_bucket_name"])
    selector = trail["event_selector"][0]
    assert resolve(selector["read_write_type"]) == "WriteOnly"
    assert resolve(selector["include_management_events"]) is True
    assert "count" not in trail and "count" not in RESOURCES["aws_s3_bucket"]["history"]


def test_only_the_alb_is_open_to_the_world_and_only_on_80_and_443():
    open_rules = []
    for kind in ("aws_vpc_security_group_ingress_rule", "aws_vpc_security_group_egress_rule"):
        for name, rule in RESOURCES[kind].items():
            if resolve(rule.get("cidr_ipv4")) == "0.0.0.0/0" or resolve(rule.get("cidr_ipv6")) == "::/0" or resolve(rule.get("ip_protocol")) == "-1":
                open_rules.append((kind, name, resolve(rule["security_group_id"]), number(rule["from_port"]), number(rule["to_port"])))
    expected = {
        ("aws_vpc_security_group_ingress_rule", "alb_http", "${aws_security_group.alb.id}", 80, 80),
        ("aws_vpc_security_group_ingress_rule", "alb_https", "${aws_security_group.alb.id}", 443, 443),
    }
    assert set(open_rules) == expected, open_rules
    for name, group in RESOURCES["aws_security_group"].items():
        assert "ingress" not in group and "egress" not in group, f"inline rules in {name}"


def test_buildspec_builds_the_checkout_tags_the_commit_and_deploys():
    """The pipeline builds the checkout it is given (no clone), tags it with the
    commit, and deploys every container that runs the service's image."""
    spec = yaml.safe_load((ROOT / "buildspec.yml").read_text())
    script = "\n".join(spec["phases"]["build"]["commands"])
    assert "git clone" not in script
    # Tagged with the commit, abbreviated as build_and_push.sh does.
    assert "tag=${CODEBUILD_RESOLVED_SOURCE_VERSION:0:12}" in script
    assert 'image="${REPOSITORY_URL}:${tag}"' in script
    assert "rev-parse --short=12 HEAD" in (TERRAFORM / "build_and_push.sh").read_text()
    assert 'docker push "$image"' in script
    assert 'terraform/build_image.sh "$image"' in script
    builder = (TERRAFORM / "build_image.sh").read_text()
    assert 'RDS_CA_BUNDLE_REQUIRED="$required" --tag "$image" "$repo_root"' in builder and "sha256sum" in builder
    assert "git clone" not in builder
    # The other paths build through the same script.
    assert 'build_image.sh" "$image"' in (TERRAFORM / "build_and_push.sh").read_text()
    assert 'terraform/build_image.sh "$image"' in (ROOT / ".github/workflows/deploy.yml").read_text()
    assert spec["artifacts"]["files"] == ["imagedefinitions.json"]
    names = {mode: resolve(LOCALS["image_containers"][mode]).split() for mode in MODES}
    for mode in MODES:
        running_the_image = {n for n, c in containers(mode).items() if c["image"] == "${local.image}"}
        assert set(names[mode]) == running_the_image, (mode, names[mode], running_the_image)
    project = RESOURCES["aws_codebuild_project"]["image"]
    assert resolve(project["source"][0]["buildspec"]) == "buildspec.yml"
    source = RESOURCES["aws_codepipeline"]["main"]["stage"][0]["action"][0]
    assert resolve(source["provider"]) == "CodeStarSourceConnection"
    assert resolve(source["configuration"]["OutputArtifactFormat"]) == "CODE_ZIP"
    deploy = RESOURCES["aws_codepipeline"]["main"]["stage"][2]["action"][0]
    assert resolve(deploy["provider"]) == "ECS"


def main():
    tests = [(name, fn) for name, fn in sorted(globals().items()) if name.startswith("test_")]
    failed = 0
    for name, test in tests:
        try:
            test()
            print(f"ok   {name}")
        except Exception as error:  # noqa: BLE001 - report every failure, then fail
            failed += 1
            print(f"FAIL {name}: {error!r}")
    print(f"terraform: {len(tests) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
