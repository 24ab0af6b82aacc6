"""Structural tests of terraform/: the wiring between the ALB, the service and
the app that breaks silently when one side changes. Parses the HCL with
python-hcl2 and the app's defaults from its Rust source, so a change to either
side that breaks the other fails here.

Run: python tests/terraform/test_wiring.py   (needs python-hcl2)
"""

import pathlib
import re
import sys

import hcl2

ROOT = pathlib.Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "terraform"


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


def test_deployments_keep_a_single_journal_writer():
    assert number(SERVICE["desired_count"]) == 1
    assert number(SERVICE["deployment_minimum_healthy_percent"]) == 0
    assert number(SERVICE["deployment_maximum_percent"]) == 100
    breaker = SERVICE["deployment_circuit_breaker"][0]
    assert resolve(breaker["enable"]) is True and resolve(breaker["rollback"]) is True


def test_deregistration_is_shorter_than_the_stop_timeout():
    stop_timeout_s = number(CONTAINER["stopTimeout"])
    grace_s = number(LOCALS["shutdown_grace_s"])
    assert number(TARGET_GROUP["deregistration_delay"]) < stop_timeout_s
    assert grace_s < stop_timeout_s <= 120
    environment = {resolve(e["name"]): resolve(e["value"]) for e in CONTAINER["environment"]}
    assert environment["SALDOS_SHUTDOWN_GRACE"] == "${local.shutdown_grace_s}s" or environment[
        "SALDOS_SHUTDOWN_GRACE"
    ] == f"{grace_s}s"


def test_alb_idle_timeout_is_below_the_apps_keep_alive():
    assert number(LOCALS["app_keepalive_idle_s"]) == APP_IDLE_S
    alb_idle_s = number(RESOURCES["aws_lb"]["main"]["idle_timeout"])
    assert alb_idle_s < APP_IDLE_S, (alb_idle_s, APP_IDLE_S)
    condition = VARIABLES["alb_idle_timeout_s"]["validation"][0]["condition"]
    assert f"< {APP_IDLE_S}" in str(condition), condition


def test_container_is_locked_down():
    assert resolve(CONTAINER["readonlyRootFilesystem"]) is True
    assert resolve(CONTAINER["user"]) == "65532:65532"
    assert [resolve(c) for c in CONTAINER["linuxParameters"]["capabilities"]["drop"]] == ["ALL"]
    access_point = RESOURCES["aws_efs_access_point"]["journal"]
    assert number(access_point["posix_user"][0]["uid"]) == 65532
    volume = RESOURCES["aws_ecs_task_definition"]["app"]["volume"][0]["efs_volume_configuration"][0]
    assert resolve(volume["transit_encryption"]) == "ENABLED"
    assert resolve(volume["authorization_config"][0]["iam"]) == "ENABLED"
    mount = CONTAINER["mountPoints"][0]
    assert resolve(mount["containerPath"]) == "/data"


def test_dockerfile_matches_the_task():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"EXPOSE {APP_PORT}" in dockerfile
    assert "USER 65532:65532" in dockerfile
    assert "SALDOS_DATA_DIR=/data" in dockerfile
    assert 'ENTRYPOINT ["/usr/local/bin/saldos"]' in dockerfile


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
