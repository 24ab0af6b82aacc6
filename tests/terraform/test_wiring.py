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


def test_health_checks_are_liveness_so_a_database_failover_replaces_no_task():
    """The load balancer checks /health/live, not /health. While RDS fails over
    (60-120 s) readiness (/health) fails on every task at once: ECS would stop
    and replace the whole fleet, whose new tasks wait for the same database,
    so the outage would outlast the failover (SPEC section 3: a database
    failover does not restart every task). Liveness stays 200 while the
    database is away and fails only for a broken task. The container's check,
    `saldos healthcheck`, probes /health/live too (its default URL in the
    service's source)."""
    health_check = TARGET_GROUP["health_check"][0]
    assert resolve(health_check["path"]) == "/health/live", health_check["path"]
    assert resolve(health_check["matcher"]) == "200"
    command = [resolve(part) for part in CONTAINER["healthCheck"]["command"]]
    assert command == ["CMD", "/usr/local/bin/saldos", "healthcheck"], command
    assert '"/health/live" => Some(Self::Live)' in (SOURCE_ROOT / "router.rs").read_text()
    assert "/health/live\", args.port" in (SOURCE_ROOT / "main.rs").read_text()


def test_migrate_waits_out_a_failover_within_the_task_timeouts():
    """A task started while RDS fails over: `saldos migrate` retries for
    SALDOS_DB_WAIT (longer than a 60-120 s failover, within the service's
    0-900 s range) rather than failing the task, nothing gives up on it sooner
    (no startTimeout: Fargate caps it at 120 s), and ECS ignores the health
    checks for at least that long after the task starts."""
    migrate = containers("postgres")["migrate"]
    assert environment(migrate, "postgres")["SALDOS_DB_WAIT"] == "${local.migrate_db_wait_s}s"
    wait_s = number(LOCALS["migrate_db_wait_s"])
    assert 120 < wait_s <= 900, wait_s
    for name, container in containers("postgres").items():
        assert "startTimeout" not in container, name
    assert resolve(SERVICE["health_check_grace_period_seconds"]) == "${local.health_check_grace[var.storage]}"
    assert LOCALS["health_check_grace"]["postgres"] == "${local.migrate_db_wait_s + var.health_check_grace_s}"
    assert LOCALS["health_check_grace"]["journal"] == "${var.health_check_grace_s}"


def test_terraform_leaves_the_count_to_autoscaling_and_the_revision_to_the_pipeline():
    """Terraform creates the service with the first revision and the mode's
    count; after that autoscaling owns desired_count and the pipeline owns
    task_definition, so an apply after a scale-out or a deploy changes
    neither (tests/terraform/apply.sh plays both against the emulator). The
    revisions Terraform registers stay registered for whoever still runs them."""
    lifecycle = SERVICE["lifecycle"][0]
    assert sorted(lifecycle["ignore_changes"]) == ["desired_count", "task_definition"], lifecycle
    assert resolve(SERVICE["task_definition"]) == "${aws_ecs_task_definition.app.arn}"
    assert resolve(RESOURCES["aws_ecs_task_definition"]["app"]["skip_destroy"]) is True


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
    assert resolve(target["count"]) == "${local.postgres && !var.emulator_unsupported_off ? 1 : 0}"
    assert number(target["min_capacity"]) >= 2
    assert "var.autoscaling_min_tasks >= 2" in str(VARIABLES["autoscaling_min_tasks"]["validation"])
    assert "var.desired_count >= 2" in str(VARIABLES["desired_count"]["validation"])
    assert LOCALS["scaling_policies"].endswith("if length(aws_appautoscaling_target.app) == 1}}"), LOCALS["scaling_policies"]
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


def test_the_database_waits_for_its_monitoring_role_policy():
    """CreateDBInstance names the Enhanced Monitoring role; until its policy is
    attached RDS refuses it ("IAM role ARN value is invalid"). Referring to the
    role orders the instance after the role only: the attachment must be an
    explicit dependency."""
    assert "aws_iam_role.rds_monitoring" in str(DB["monitoring_role_arn"])
    assert "${aws_iam_role_policy_attachment.rds_monitoring}" in DB["depends_on"], DB["depends_on"]


def test_log_connections_is_set_as_each_allowed_engine_version_takes_it():
    """PostgreSQL 18 made log_connections a list of stages: every version the
    variable allows has its own value, a boolean only below 18."""
    condition = VARIABLES["db_engine_major_version"]["validation"][0]["condition"]
    allowed = re.fullmatch(r'\$\{contains\(\[([^\]]*)\], var\.db_engine_major_version\)\}', condition)
    assert allowed, condition
    versions = [unquote(v.strip()) for v in allowed.group(1).split(",")]
    values = {unquote(k): resolve(v) for k, v in LOCALS["log_connections"].items()}
    assert sorted(values) == sorted(versions), (values, versions)
    for version, value in values.items():
        if int(version) >= 18:
            assert set(value.split(",")) <= {"receipt", "authentication", "authorization", "setup_durations", "all"}, value
        else:
            assert value in ("1", "0", "on", "off"), value
    parameters = {resolve(p["name"]): resolve(p["value"]) for p in RESOURCES["aws_db_parameter_group"]["main"]["parameter"]}
    assert parameters["log_connections"] == "${local.log_connections[var.db_engine_major_version]}"


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


def test_waf_logs_redact_credentials():
    """WAF logs keep request headers for log_retention_days: the bearer token
    and cookies are redacted before they are written."""
    logging = RESOURCES["aws_wafv2_web_acl_logging_configuration"]["main"]
    block = logging["dynamic"][0]['"redacted_fields"']
    assert block["for_each"] == "${local.waf_redacted_headers}"
    assert block["content"][0]["single_header"][0]["name"] == "${redacted_fields.value}"
    headers = [resolve(h) for h in LOCALS["waf_redacted_headers"]]
    assert {"authorization", "cookie"} <= set(headers), headers
    assert all(h == h.lower() for h in headers), headers  # WAF matches single_header names in lowercase


def test_alb_access_logs_are_writable_in_every_region():
    """Regions that existed before August 2022 (us-east-1, the default) deliver
    ALB access logs through their Elastic Load Balancing account, later ones
    through the log delivery service principal: the bucket grants both, the
    account wherever the provider knows it."""
    statement = DATA["aws_iam_policy_document"]["alb_logs"]["statement"][0]
    assert [resolve(a) for a in statement["actions"]] == ["s3:PutObject"]
    services = [resolve(i) for p in statement["principals"] for i in p["identifiers"] if resolve(p["type"]) == "Service"]
    assert services == ["logdelivery.elasticloadbalancing.amazonaws.com"], services
    account = statement["dynamic"][0]['"principals"']
    assert account["for_each"] == "${data.aws_elb_service_account.current}"
    assert resolve(account["content"][0]["type"]) == "AWS" and account["content"][0]["identifiers"] == ["${principals.value.arn}"]
    lookup = DATA["aws_elb_service_account"]["current"]
    assert resolve(lookup["count"]) == "${contains(local.elb_account_regions, var.region) ? 1 : 0}"
    regions = [resolve(r) for r in LOCALS["elb_account_regions"]]
    assert resolve(VARIABLES["region"]["default"]) in regions
    assert {"us-east-1", "us-west-2", "eu-west-1"} <= set(regions) and "ap-south-2" not in regions


def test_every_role_a_service_assumes_is_limited_to_this_account():
    """No confused deputy: each trust policy that lets an AWS service assume a
    role names this account (aws:SourceAccount, aws:SourceArn or, for
    Firehose, the external id)."""
    limits = {"aws:SourceAccount", "aws:SourceArn", "sts:ExternalId"}
    for name, document in DATA["aws_iam_policy_document"].items():
        for statement, _ in policy_statements(document):
            if "sts:AssumeRole" not in [resolve(a) for a in statement.get("actions", [])]:
                continue
            assert any(resolve(p["type"]) == "Service" for p in statement["principals"]), name
            conditions = {resolve(c["variable"]): c["values"] for c in statement.get("condition", [])}
            assert limits & set(conditions), f"{name}: no {sorted(limits)} condition"
            assert any("data.aws_caller_identity.current.account_id" in str(v) for v in conditions.values()), name


def test_history_objects_are_named_gz_as_they_are_written():
    """CloudWatch Logs delivers gzip'd batches; Firehose stores them as they
    come (no second compression), so the objects end in .gz."""
    firehose = RESOURCES["aws_kinesis_firehose_delivery_stream"]["logs"]["extended_s3_configuration"][0]
    assert resolve(firehose["compression_format"]) == "UNCOMPRESSED"
    assert resolve(firehose["file_extension"]) == ".gz"


def test_the_pipelines_deploy_action_has_what_it_needs_and_no_more():
    """The ECS deploy action's permissions (CodePipeline user guide): describe
    and update this service, register and describe revisions (and tag them as
    they are registered), watch this cluster's tasks, and pass exactly the
    two task roles to ECS tasks."""
    statements = {resolve(st["sid"]): st for st, _ in policy_statements(DATA["aws_iam_policy_document"]["codepipeline"])}
    granted = {resolve(a) for st in statements.values() for a in st["actions"]}
    needed = {"ecs:DescribeServices", "ecs:DescribeTaskDefinition", "ecs:DescribeTasks", "ecs:ListTasks",
              "ecs:RegisterTaskDefinition", "ecs:UpdateService", "ecs:TagResource", "iam:PassRole"}
    assert needed <= granted, sorted(needed - granted)
    assert not {a for a in granted if a.startswith(("ecs:", "iam:"))} - needed, sorted(granted)
    def resources(sid):
        return [unquote(r) for r in statements[sid]["resources"]]
    def conditions(sid):
        return {(resolve(c["test"]), resolve(c["variable"])): [unquote(v) for v in c["values"]] for c in statements[sid].get("condition", [])}
    assert resources("DeployTheService") == ["${aws_ecs_service.app.id}"]
    assert resources("WatchTheDeploymentsTasks")[0].endswith(":task/${aws_ecs_cluster.main.name}/*")
    assert conditions("ListTheClustersTasks") == {("ArnEquals", "ecs:cluster"): ["${aws_ecs_cluster.main.arn}"]}
    assert conditions("TagTheRevisionItRegisters") == {("StringEquals", "ecs:CreateAction"): ["RegisterTaskDefinition"]}
    assert resources("HandTheTaskItsRoles") == ["${local.execution_role}", "${local.task_role}"]
    assert conditions("HandTheTaskItsRoles") == {("StringEquals", "iam:PassedToService"): ["ecs-tasks.amazonaws.com"]}
    # A "*" only where ECS has no resource-level permission, or with a condition.
    for sid, statement in statements.items():
        if resources(sid) == ["*"]:
            assert sid == "RegisterTaskDefinitions" or conditions(sid), sid


def test_no_image_build_pulls_from_docker_hub():
    """Docker Hub rate-limits anonymous pulls (CodeBuild's): no `# syntax=`
    frontend image, and every Docker Hub base the Dockerfile names by short
    name is taken from ECR Public by build_image.sh, which every build path
    runs (through bash: a source zip need not keep the exec bit)."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"^#\s*syntax=", dockerfile, re.M)
    builder = (TERRAFORM / "build_image.sh").read_text()
    assert "DOCKER_HUB_MIRROR=public.ecr.aws/docker/library" in builder
    assert '--build-context "$builder_base=docker-image://$DOCKER_HUB_MIRROR/$builder_base"' in builder
    stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile, re.M | re.I))
    for line in re.findall(r"^FROM\s+(\S+)", dockerfile, re.M):
        if line in stages or "." in line.split("/")[0]:  # an earlier stage, or a registry of its own (gcr.io)
            continue
        assert line.startswith("rust:") and "$NF == \"chef\"" in builder, line
    spec = yaml.safe_load((ROOT / "buildspec.yml").read_text())
    assert 'bash terraform/build_image.sh "$image"' in "\n".join(spec["phases"]["build"]["commands"])


def test_the_emulator_switch_leaves_out_only_what_it_lists_and_only_in_apply_sh():
    """emulator_unsupported_off (tests/terraform/apply.sh only) removes the
    resources local.emulator_unsupported lists, each with its reason, and
    nothing else: it appears only in their count, and no other file sets it."""
    listed = {unquote(k): resolve(v) for k, v in LOCALS["emulator_unsupported"].items()}
    assert all(len(reason) > 20 for reason in listed.values()), listed
    gated = set()
    for rtype, named in RESOURCES.items():
        for name, body in named.items():
            text = str(body)
            if "emulator_unsupported_off" in text:
                assert "emulator_unsupported_off" in str(body.get("count", "")), (rtype, name)
                assert "emulator_unsupported_off" not in text.replace(str(body["count"]), ""), (rtype, name)
                gated.add(f"{rtype}.{name}")
    for rtype, named in DATA.items():
        assert "emulator_unsupported_off" not in str(named), rtype
    assert "emulator_unsupported_off" not in str(LOCALS), "only resources' counts may read the switch"
    followers = {"aws_appautoscaling_policy.app"}  # for_each over the target, which is gated
    assert gated | followers == set(listed), (sorted(gated), sorted(listed))
    assert resolve(VARIABLES["emulator_unsupported_off"]["default"]) is False
    setters = sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                     if p.is_file() and ".git" not in p.parts and "target" not in p.parts and ".ci" not in p.parts[:1]
                     and p.suffix in (".sh", ".tf", ".tfvars", ".hcl", ".yml", ".yaml", ".py")
                     and "emulator_unsupported_off=true" in p.read_text(errors="ignore"))
    assert setters == ["tests/terraform/apply.sh", "tests/terraform/test_wiring.py"], setters  # this test names it


def test_cloudtrail_is_multi_region_write_only_encrypted_and_validated():
    trail = RESOURCES["aws_cloudtrail"]["main"]
    assert resolve(trail["is_multi_region_trail"]) is True
    assert resolve(trail["enable_log_file_validation"]) is True
    assert "aws_kms_key.main" in str(trail["kms_key_id"])
    assert 'aws_s3_bucket.history["trail"]' in str(trail["s3_bucket_name"])
    selector = trail["event_selector"][0]
    assert resolve(selector["read_write_type"]) == "WriteOnly"
    assert resolve(selector["include_management_events"]) is True
    assert resolve(trail["count"]) == "${var.emulator_unsupported_off ? 0 : 1}"  # always, but in apply.sh
    assert "count" not in RESOURCES["aws_s3_bucket"]["history"]


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
    assert 'bash terraform/build_image.sh "$image"' in script
    builder = (TERRAFORM / "build_image.sh").read_text()
    assert '--build-arg RDS_CA_BUNDLE_REQUIRED="$required"' in builder and '--tag "$image" "$repo_root"' in builder
    assert "sha256sum" in builder
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
