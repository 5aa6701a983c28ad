"""Static checks of the deployment files: the worker image, the CloudFormation stack and the
Kubernetes manifests. No network, no Docker, no cluster: the files are parsed and cross-checked
against each other and against the code they deploy (``infra.settings.Settings``, pyproject.toml).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from infra.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"
CFN_TEMPLATE = ROOT / "infra" / "deploy" / "cloudformation.yaml"
K8S_DIR = ROOT / "infra" / "deploy" / "kubernetes"

REQUIRED_OUTPUTS = {"QueueUrl", "DlqUrl", "TopicArn", "WorkerPolicyArn"}
GRACE_MARGIN_S = 10


# --------------------------------------------------------------------------------------------
# Helpers


def _field_default(name: str) -> Any:
    return Settings.model_fields[name].default


@cache
def _cfn() -> dict[str, Any]:
    from cfnlint.decode import decode_str

    template, matches = decode_str(CFN_TEMPLATE.read_text())
    assert not matches, [str(m) for m in matches]
    assert isinstance(template, dict)
    return template


def _cfn_resources(rtype: str) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in _cfn()["Resources"].items() if res.get("Type") == rtype}


def _jobs_queue() -> tuple[str, dict[str, Any]]:
    with_redrive = {
        name: res
        for name, res in _cfn_resources("AWS::SQS::Queue").items()
        if "RedrivePolicy" in res.get("Properties", {})
    }
    assert len(with_redrive) == 1, f"expected one queue with a RedrivePolicy: {list(with_redrive)}"
    return next(iter(with_redrive.items()))


def _cfn_sub_defaults(value: Any) -> str:
    """Resolve a ``!Sub "${Param}-x"`` (or a plain string) with the parameters' defaults."""
    if isinstance(value, str):
        return value
    assert isinstance(value, dict) and "Fn::Sub" in value, value
    params = _cfn().get("Parameters", {})
    return re.sub(
        r"\$\{([A-Za-z0-9]+)\}", lambda m: str(params[m.group(1)]["Default"]), value["Fn::Sub"]
    )


@cache
def _k8s_docs() -> dict[str, list[dict[str, Any]]]:
    docs: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(K8S_DIR.glob("*.y*ml")):
        docs[path.name] = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def _k8s(kind: str) -> list[dict[str, Any]]:
    return [
        doc
        for name, file_docs in _k8s_docs().items()
        if name != "kustomization.yaml"
        for doc in file_docs
        if doc.get("kind") == kind
    ]


def _one(kind: str) -> dict[str, Any]:
    found = _k8s(kind)
    assert len(found) == 1, f"expected exactly one {kind}, found {len(found)}"
    return found[0]


def _worker_container() -> dict[str, Any]:
    containers = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "the worker pod has one container"
    return containers[0]


def _configmap_data() -> dict[str, str]:
    return _one("ConfigMap")["data"]


# Dockerfile parsing: enough of the grammar for these checks (continuations, comments, stages,
# ARG defaults, exec-form JSON), not a general parser.


@cache
def _docker_instructions() -> list[tuple[str, str]]:
    logical: list[str] = []
    current = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # blank lines and comments, also inside continuations (as Docker does)
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        logical.append(current)
        current = ""
    assert not current, "Dockerfile ends inside a line continuation"
    out = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def _docker_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = [[]]  # stage 0: global ARGs before the first FROM
    for keyword, args in _docker_instructions():
        if keyword == "FROM":
            stages.append([])
        stages[-1].append((keyword, args))
    return stages


def _docker_arg_defaults() -> dict[str, list[str]]:
    defaults: dict[str, list[str]] = {}
    for keyword, args in _docker_instructions():
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            defaults.setdefault(name.strip(), []).append(value.strip().strip('"'))
    return defaults


def _docker_substitute(text: str) -> str:
    values = {name: vals[0] for name, vals in _docker_arg_defaults().items()}
    return re.sub(
        r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)",
        lambda m: values.get(m.group(1) or m.group(2), m.group(0)),
        text,
    )


def _final_stage() -> list[tuple[str, str]]:
    return _docker_stages()[-1]


def _final_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in _final_stage():
        if keyword == "ENV":
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def _pip_install_commands() -> list[list[str]]:
    """Every ``pip install`` in a RUN, as argument lists after ARG substitution."""
    commands = []
    for keyword, args in _docker_instructions():
        if keyword != "RUN":
            continue
        for segment in re.split(r"&&|\|\||;|\|", _docker_substitute(args)):
            try:
                tokens = shlex.split(segment)
            except ValueError:
                continue
            for i, token in enumerate(tokens[:-1]):
                if token.endswith("pip") and tokens[i + 1] == "install":
                    commands.append(tokens[i + 2 :])
                    break
    return commands


_PIP_OPTIONS_WITH_VALUE = {
    "-c", "--constraint", "-r", "--requirement", "-i", "--index-url", "--extra-index-url",
    "-f", "--find-links", "-t", "--target", "--prefix", "--root", "-e", "--editable",
}  # fmt: skip


def _pinned_by_name(args: list[str]) -> list[Requirement]:
    """The ``name==version`` requirements among pip's arguments (not URLs, paths, options)."""
    pinned = []
    skip_next = False
    for arg in args:
        if skip_next:
            skip_next = False
            continue
        if arg in _PIP_OPTIONS_WITH_VALUE:
            skip_next = True
            continue
        if arg.startswith("-") or "/" in arg or "$" in arg:
            continue
        try:
            req = Requirement(arg)
        except InvalidRequirement:
            continue
        if any(spec.operator in ("==", "===") for spec in req.specifier):
            pinned.append(req)
    return pinned


@cache
def _pyproject_dependencies() -> dict[str, Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    return {canonicalize_name(r.name): r for r in reqs}


# --------------------------------------------------------------------------------------------
# CloudFormation


def test_cloudformation_template_parses_with_intrinsic_tags() -> None:
    """GIVEN the CloudFormation template, which uses !Ref/!GetAtt/!Sub/!If short forms
    WHEN cfn-lint's own decoder reads it
    THEN it decodes without parse errors into a template with resources, and the short-form
    tags come back as intrinsic functions (not as strings or unknown-tag errors)."""
    template = _cfn()

    assert template["AWSTemplateFormatVersion"] == "2010-09-09"
    assert _cfn_resources("AWS::SQS::Queue"), "no SQS queue in the template"
    _, queue = _jobs_queue()
    assert "Fn::GetAtt" in queue["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]


def test_jobs_queue_redrives_to_the_dlq_after_the_parameterised_receive_count() -> None:
    """GIVEN the template's jobs queue
    WHEN its RedrivePolicy is read
    THEN maxReceiveCount is a Ref to a Number parameter defaulting to 3, and the dead-letter
    target is the Arn of another queue of the same stack."""
    template = _cfn()
    _, queue = _jobs_queue()
    redrive = queue["Properties"]["RedrivePolicy"]

    assert redrive["maxReceiveCount"] == {"Ref": "MaxReceiveCount"}
    param = template["Parameters"]["MaxReceiveCount"]
    assert param["Type"] == "Number"
    assert int(param["Default"]) == 3
    assert int(param["MinValue"]) >= 1

    target, attribute = redrive["deadLetterTargetArn"]["Fn::GetAtt"]
    assert attribute == "Arn"
    assert target in _cfn_resources("AWS::SQS::Queue")
    assert target != _jobs_queue()[0]


def test_queues_are_encrypted_and_keep_messages_fourteen_days() -> None:
    """GIVEN both queues of the template
    WHEN their properties are read
    THEN SSE is on and retention is 14 days, and the jobs queue's visibility timeout is the
    worker's LORAQ_VISIBILITY_TIMEOUT default (the heartbeat extends it from there)."""
    queues = _cfn_resources("AWS::SQS::Queue")
    assert len(queues) == 2

    for name, queue in queues.items():
        props = queue["Properties"]
        assert props.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in props, name
        assert int(props["MessageRetentionPeriod"]) == 14 * 24 * 3600, name

    _, jobs = _jobs_queue()
    assert int(jobs["Properties"]["VisibilityTimeout"]) == _field_default("visibility_timeout")


def test_outputs_name_the_queue_dlq_topic_and_worker_policy() -> None:
    """GIVEN the template's Outputs
    WHEN they are read
    THEN QueueUrl, DlqUrl, TopicArn and WorkerPolicyArn exist and each refers to the resource
    its name promises (jobs queue, dead-letter queue, SNS topic, IAM managed policy)."""
    outputs = _cfn()["Outputs"]
    assert set(outputs) >= REQUIRED_OUTPUTS

    jobs_name, jobs = _jobs_queue()
    dlq_name = jobs["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
    assert outputs["QueueUrl"]["Value"] == {"Ref": jobs_name}
    assert outputs["DlqUrl"]["Value"] == {"Ref": dlq_name}
    assert outputs["TopicArn"]["Value"]["Ref"] in _cfn_resources("AWS::SNS::Topic")
    assert outputs["WorkerPolicyArn"]["Value"]["Ref"] in _cfn_resources("AWS::IAM::ManagedPolicy")


def test_worker_policy_grants_exactly_what_the_worker_calls() -> None:
    """GIVEN the worker managed policy (the one behind the WorkerPolicyArn output)
    WHEN its statements are read
    THEN the SQS consumer actions are allowed on the jobs queue, the dead-letter sweep's
    reads on the DLQ (no delete), sns:Publish on the topic,
    and S3 object access exists only behind the HasBucket condition (an optional bucket)."""
    template = _cfn()
    policy_name = template["Outputs"]["WorkerPolicyArn"]["Value"]["Ref"]
    statements = template["Resources"][policy_name]["Properties"]["PolicyDocument"]["Statement"]

    plain = [s for s in statements if "Fn::If" not in s]
    conditional = [s["Fn::If"] for s in statements if "Fn::If" in s]

    def actions(statement: dict[str, Any]) -> set[str]:
        action = statement["Action"]
        return {action} if isinstance(action, str) else set(action)

    jobs_name, _ = _jobs_queue()
    sqs = [s for s in plain if any(a.startswith("sqs:") for a in actions(s))]
    assert len(sqs) == 2
    # The dead-letter sweep reads the DLQ and hides what it has seen; it never deletes there.
    (sweep,) = [s for s in sqs if s["Sid"] == "SweepDeadLetters"]
    assert actions(sweep) == {
        "sqs:GetQueueUrl",
        "sqs:ReceiveMessage",
        "sqs:ChangeMessageVisibility",
    }
    dlq_name = template["Outputs"]["DlqUrl"]["Value"]["Ref"]
    assert sweep["Resource"] == {"Fn::GetAtt": [dlq_name, "Arn"]}
    sqs = [s for s in sqs if s is not sweep]
    assert {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:SendMessage",
        "sqs:GetQueueAttributes",
    } <= actions(sqs[0])
    assert sqs[0]["Resource"] == {"Fn::GetAtt": [jobs_name, "Arn"]}

    sns = [s for s in plain if "sns:Publish" in actions(s)]
    assert len(sns) == 1
    assert sns[0]["Resource"]["Ref"] in _cfn_resources("AWS::SNS::Topic")

    assert not any(a.startswith("s3:") for s in plain for a in actions(s)), "S3 must be optional"
    assert len(conditional) == 1
    condition, s3_statement, otherwise = conditional[0]
    assert condition == "HasBucket"
    assert {"s3:GetObject", "s3:PutObject"} <= actions(s3_statement)
    assert "${BucketName}" in s3_statement["Resource"]["Fn::Sub"]
    assert otherwise == {"Ref": "AWS::NoValue"}
    assert template["Parameters"]["BucketName"]["Default"] == ""


def test_alarms_watch_the_dlq_and_the_oldest_job() -> None:
    """GIVEN the template's CloudWatch alarms
    WHEN their metrics and dimensions are read
    THEN one fires when the dead-letter queue holds any message and one when the jobs queue's
    oldest message is older than a threshold."""
    jobs_name, jobs = _jobs_queue()
    dlq_name = jobs["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]

    def queue_of(alarm: dict[str, Any]) -> str:
        (dimension,) = alarm["Dimensions"]
        assert dimension["Name"] == "QueueName"
        return dimension["Value"]["Fn::GetAtt"][0]

    alarms = [a["Properties"] for a in _cfn_resources("AWS::CloudWatch::Alarm").values()]
    by_metric = {a["MetricName"]: a for a in alarms}

    dlq_alarm = by_metric["ApproximateNumberOfMessagesVisible"]
    assert queue_of(dlq_alarm) == dlq_name
    assert dlq_alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert int(dlq_alarm["Threshold"]) == 0

    age_alarm = by_metric["ApproximateAgeOfOldestMessage"]
    assert queue_of(age_alarm) == jobs_name
    assert age_alarm["ComparisonOperator"] == "GreaterThanThreshold"


@pytest.fixture(scope="module")
def cfn_lint_matches() -> list[Any]:
    from cfnlint.api import lint

    return lint(CFN_TEMPLATE.read_text(), regions=["us-east-1"])


def test_cfn_lint_reports_no_errors_or_warnings(cfn_lint_matches: list[Any]) -> None:
    """GIVEN the template
    WHEN cfn-lint (its Python API, the CLI's default rules) checks it for us-east-1
    THEN it reports no error and no warning."""
    problems = [
        f"{m.rule.id} {m.message} (line {m.linenumber})"
        for m in cfn_lint_matches
        if m.rule.id[0] in ("E", "W")
    ]
    assert problems == []


def test_cfn_lint_does_catch_a_broken_copy_of_the_template() -> None:
    """GIVEN a copy of the template with the visibility timeout above SQS's 12-hour maximum
    WHEN cfn-lint checks it
    THEN it reports an error: the clean result above comes from real checks, not from a
    linter that saw nothing."""
    from cfnlint.api import lint

    text = CFN_TEMPLATE.read_text()
    broken = re.sub(r"VisibilityTimeout: \d+", "VisibilityTimeout: 99999", text, count=1)
    assert broken != text

    errors = [m for m in lint(broken, regions=["us-east-1"]) if m.rule.id.startswith("E")]
    assert errors, "cfn-lint accepted an out-of-range VisibilityTimeout"


# --------------------------------------------------------------------------------------------
# Kubernetes


def test_every_kubernetes_manifest_parses_and_is_listed_in_the_kustomization() -> None:
    """GIVEN the YAML files under infra/deploy/kubernetes
    WHEN each is parsed with yaml.safe_load_all
    THEN every document has apiVersion, kind and metadata.name, and kustomization.yaml's
    resources are exactly the other files."""
    docs = _k8s_docs()
    assert "kustomization.yaml" in docs

    for name, file_docs in docs.items():
        assert file_docs, f"{name} is empty"
        for doc in file_docs:
            assert doc.get("apiVersion") and doc.get("kind"), name
            if name != "kustomization.yaml":
                assert doc["metadata"]["name"], name

    (kustomization,) = docs["kustomization.yaml"]
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(set(docs) - {"kustomization.yaml"})
    kinds = {doc["kind"] for file_docs in docs.values() for doc in file_docs}
    assert {
        "Deployment",
        "ScaledObject",
        "ConfigMap",
        "ServiceAccount",
        "PersistentVolumeClaim",
    } <= kinds


def test_termination_grace_covers_the_workers_graceful_stop() -> None:
    """GIVEN the worker Deployment and the shutdown grace the worker will use (the Settings
    default, or the ConfigMap's LORAQ_SHUTDOWN_GRACE_S if it sets a larger one)
    WHEN terminationGracePeriodSeconds is compared with it
    THEN the pod gets at least that grace plus a margin before the kubelet's SIGKILL."""
    default_grace = float(_field_default("shutdown_grace_s"))
    configured = float(_configmap_data().get("LORAQ_SHUTDOWN_GRACE_S", default_grace))
    grace = _one("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]

    assert isinstance(grace, int)
    assert grace >= default_grace + GRACE_MARGIN_S
    assert grace >= configured + GRACE_MARGIN_S


def test_worker_pod_requests_a_gpu_mounts_the_shared_volume_and_has_no_liveness_probe() -> None:
    """GIVEN the worker Deployment, the PVC and the ConfigMap
    WHEN the pod spec is read
    THEN it requests one nvidia.com/gpu (matching LORAQ_NUM_GPUS), mounts the ReadWriteMany PVC
    loraq-volume at LORAQ_VOLUME, takes its env from the ConfigMap, and has no liveness probe
    that could kill a long training step."""
    deployment = _one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = _worker_container()
    config = _configmap_data()

    resources = container["resources"]
    assert int(resources["requests"]["nvidia.com/gpu"]) == 1
    assert int(resources["limits"]["nvidia.com/gpu"]) == 1
    assert int(config["LORAQ_NUM_GPUS"]) == 1

    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    assert "livenessProbe" not in container

    pvc = _one("PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == "loraq-volume"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    volume_names = {
        v["name"]
        for v in pod["volumes"]
        if v.get("persistentVolumeClaim", {}).get("claimName") == "loraq-volume"
    }
    assert len(volume_names) == 1
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[volume_names.pop()] == config["LORAQ_VOLUME"] == str(_field_default("volume"))

    env_from = [e["configMapRef"]["name"] for e in container["envFrom"] if "configMapRef" in e]
    assert env_from == [_one("ConfigMap")["metadata"]["name"]]
    assert not any("secretRef" in e for e in container["envFrom"])


def test_worker_pod_uses_the_irsa_service_account_and_the_images_uid() -> None:
    """GIVEN the Deployment, the ServiceAccount and the Dockerfile
    WHEN the pod's identity is read
    THEN it runs under the ServiceAccount that carries the IRSA role annotation, and as the
    same non-root uid the image creates for its USER."""
    pod = _one("Deployment")["spec"]["template"]["spec"]
    account = _one("ServiceAccount")

    assert pod["serviceAccountName"] == account["metadata"]["name"]
    role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws[a-z-]*:iam::\d{12}:role/.+", role)

    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == _image_uid() != 0


def test_configmap_is_a_valid_worker_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN the ConfigMap's variables and the LORAQ_ variables the Deployment and Dockerfile set
    WHEN each LORAQ_ name is mapped to a Settings field and the ConfigMap is loaded as Settings
    THEN every name is a real field (Settings ignores unknown ones, so a typo would pass silently)
    and the values parse to what the ConfigMap says."""
    config = _configmap_data()
    deployment_env = [e["name"] for e in _worker_container().get("env", [])]
    names = [*config, *deployment_env, *_final_env()]

    unknown = [
        n for n in names if n.startswith("LORAQ_") and n[6:].lower() not in Settings.model_fields
    ]
    assert unknown == []

    for key in [k for k in os.environ if k.startswith("LORAQ_")]:
        monkeypatch.delenv(key)
    for key, value in config.items():
        if key.startswith("LORAQ_"):
            monkeypatch.setenv(key, value)
    settings = Settings()

    assert settings.queue_url == config["LORAQ_QUEUE_URL"]
    assert settings.topic_arn == config["LORAQ_TOPIC_ARN"]
    assert settings.num_gpus == int(config["LORAQ_NUM_GPUS"])
    assert settings.visibility_timeout == int(config["LORAQ_VISIBILITY_TIMEOUT"])
    assert str(settings.volume) == config["LORAQ_VOLUME"]
    assert "LORAQ_BUCKET" not in config or config["LORAQ_BUCKET"], "an empty bucket is not None"


def test_keda_scales_the_worker_deployment_on_the_workers_queue() -> None:
    """GIVEN the KEDA ScaledObject, its TriggerAuthentication, the ConfigMap and the stack
    WHEN the trigger is read
    THEN it is an aws-sqs-queue trigger on the same queue URL and region the workers poll (the
    stack's jobs queue name), one message per worker, in-flight jobs counted, scaling the
    worker Deployment between 0 and N, authenticated by a TriggerAuthentication that exists."""
    scaled = _one("ScaledObject")
    config = _configmap_data()
    spec = scaled["spec"]

    assert spec["scaleTargetRef"]["name"] == _one("Deployment")["metadata"]["name"]
    assert spec.get("scaleTargetRef", {}).get("kind", "Deployment") == "Deployment"
    assert spec["minReplicaCount"] == 0
    assert spec["maxReplicaCount"] >= 1

    (trigger,) = spec["triggers"]
    assert trigger["type"] == "aws-sqs-queue"
    meta = trigger["metadata"]
    assert meta["queueURL"] == config["LORAQ_QUEUE_URL"]
    assert meta["awsRegion"] == config["AWS_REGION"]
    assert f"sqs.{meta['awsRegion']}.amazonaws.com" in meta["queueURL"]
    _, jobs = _jobs_queue()
    assert meta["queueURL"].rsplit("/", 1)[1] == _cfn_sub_defaults(jobs["Properties"]["QueueName"])
    assert meta["queueLength"] == "1"
    assert meta.get("scaleOnInFlight", "true") == "true"

    auths = {a["metadata"]["name"]: a for a in _k8s("TriggerAuthentication")}
    assert trigger["authenticationRef"]["name"] in auths
    assert auths[trigger["authenticationRef"]["name"]]["spec"]["podIdentity"]["provider"] == "aws"


def test_queue_visibility_timeout_agrees_everywhere() -> None:
    """GIVEN the queue's VisibilityTimeout in the stack, the ConfigMap's LORAQ_VISIBILITY_TIMEOUT
    and the Settings default
    WHEN they are compared
    THEN they are one value, so a crashed worker's job reappears when the worker expects."""
    _, jobs = _jobs_queue()
    assert (
        int(jobs["Properties"]["VisibilityTimeout"])
        == int(_configmap_data()["LORAQ_VISIBILITY_TIMEOUT"])
        == _field_default("visibility_timeout")
    )


# --------------------------------------------------------------------------------------------
# Dockerfile


def _image_uid() -> int:
    for keyword, args in _final_stage():
        if keyword == "RUN" and "useradd" in args:
            match = re.search(r"--uid[ =](\d+)", args)
            assert match, "useradd without an explicit --uid"
            return int(match.group(1))
    raise AssertionError("the final stage creates no user")


def test_dockerfile_pins_diffusion_pipe_to_a_full_commit_sha() -> None:
    """GIVEN the Dockerfile
    WHEN its DIFFUSION_PIPE_COMMIT ARG defaults and the clone are read
    THEN every default is a full 40-hex sha (not a branch or a short sha), all agree, and the
    clone recurses into submodules and checks out that commit."""
    defaults = _docker_arg_defaults().get("DIFFUSION_PIPE_COMMIT", [])
    assert defaults, "no DIFFUSION_PIPE_COMMIT ARG with a default"
    for value in defaults:
        assert re.fullmatch(r"[0-9a-f]{40}", value), value
    assert len(set(defaults)) == 1

    runs = [args for keyword, args in _docker_instructions() if keyword == "RUN"]
    clone = [r for r in runs if "git clone" in r]
    assert len(clone) == 1
    assert "--recurse-submodules" in clone[0]
    assert re.search(r"git (-C \S+ )?checkout .*\$\{?DIFFUSION_PIPE_COMMIT\}?", clone[0])
    assert "submodule update --init --recursive" in clone[0]


def test_dockerfile_entrypoint_is_the_loraq_script_running_the_worker() -> None:
    """GIVEN the Dockerfile's final stage and pyproject's console scripts
    WHEN ENTRYPOINT, CMD and STOPSIGNAL are read
    THEN the exec-form entrypoint is ["loraq"] (a script pyproject defines), CMD is ["worker"],
    and the stop signal is SIGTERM, which the worker turns into a graceful stop."""
    final = dict(_final_stage())  # the last of each instruction wins, as in Docker
    assert json.loads(final["ENTRYPOINT"]) == ["loraq"]
    assert json.loads(final["CMD"]) == ["worker"]
    assert final["STOPSIGNAL"] == "SIGTERM"
    scripts = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]
    assert "loraq" in scripts


def test_dockerfile_runs_as_a_non_root_user() -> None:
    """GIVEN the Dockerfile's final stage
    WHEN its last USER instruction is read
    THEN it names the user the stage creates with a fixed non-zero uid, not root or 0."""
    users = [args for keyword, args in _final_stage() if keyword == "USER"]
    assert users, "the final stage never switches user"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert _image_uid() == 10001

    created = [args for keyword, args in _final_stage() if keyword == "RUN" and "useradd" in args]
    assert re.search(rf"useradd\b.*\b{re.escape(user)}\b", created[0])


def test_dockerfile_environment_matches_the_worker_settings() -> None:
    """GIVEN the Dockerfile's final stage
    WHEN its ENV and VOLUME are read
    THEN LORAQ_VOLUME is the declared volume and Settings' default volume, LORAQ_DIFFUSION_PIPE_DIR
    is where the clone goes and Settings' default, output is unbuffered, and the torch extensions
    directory is set (the venv's default location is root-owned in the image)."""
    env = _final_env()
    volumes = [args for keyword, args in _final_stage() if keyword == "VOLUME"]

    assert env["LORAQ_VOLUME"] == str(_field_default("volume")) == "/var/lib/loraq"
    assert volumes and env["LORAQ_VOLUME"] in volumes[-1]
    assert env["LORAQ_DIFFUSION_PIPE_DIR"] == str(_field_default("diffusion_pipe_dir"))
    clone = next(a for k, a in _docker_instructions() if k == "RUN" and "git clone" in a)
    assert env["LORAQ_DIFFUSION_PIPE_DIR"] in clone
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["TORCH_EXTENSIONS_DIR"]
    assert env["LORAQ_TORCH_EXTENSIONS_DIR"] == env["TORCH_EXTENSIONS_DIR"]


def test_dockerfile_cuda_base_and_torch_index_agree() -> None:
    """GIVEN the CUDA base image ARG and the torch index ARG
    WHEN their CUDA versions are compared
    THEN both are 12.8 (DeepSpeed refuses to JIT ops when nvcc and torch's CUDA differ), and the
    base is an Ubuntu 24.04 image (its python3 is the 3.12 the venv is built with)."""
    args = {name: values[0] for name, values in _docker_arg_defaults().items()}
    image = args["CUDA_IMAGE"]
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-[a-z-]*runtime-ubuntu24\.04", image)
    assert match, image
    assert args["TORCH_INDEX_URL"].rstrip("/").endswith(f"cu{match.group(1)}{match.group(2)}")


def test_dockerfile_pins_do_not_contradict_pyproject() -> None:
    """GIVEN every package the Dockerfile pip-installs by name with an exact pin (ARGs resolved)
    WHEN each pin is checked against pyproject.toml's dependency range for the same package
    THEN the pinned version is inside the range, so `pip install /src` keeps what the image
    installed; and torch, at least, was checked (the test cannot pass by finding nothing)."""
    deps = _pyproject_dependencies()
    commands = _pip_install_commands()
    assert commands, "no pip install found"

    checked = {}
    for req in (r for args in commands for r in _pinned_by_name(args)):
        name = canonicalize_name(req.name)
        if name not in deps:
            continue
        (pin,) = [s.version for s in req.specifier if s.operator in ("==", "===")]
        assert deps[name].specifier.contains(Version(pin), prereleases=True), (
            f"Dockerfile pins {req}, pyproject wants {deps[name]}"
        )
        checked[name] = pin

    assert "torch" in checked


def test_pinned_pip_package_check_would_catch_a_contradiction() -> None:
    """GIVEN a pin below pyproject's torch range, as the Dockerfile parser would extract it
    WHEN it is checked the same way as the real pins
    THEN it is rejected (the check above is not vacuous)."""
    (req,) = _pinned_by_name(["--index-url", "https://x/cu128", "torch==2.0.0", "/src", "-U"])
    assert req.name == "torch"
    assert not _pyproject_dependencies()["torch"].specifier.contains(Version("2.0.0"))


def test_dockerignore_keeps_local_state_out_and_the_package_in() -> None:
    """GIVEN .dockerignore
    WHEN its patterns are matched against paths in the repository
    THEN the virtualenv, .git and caches are excluded, and nothing `pip install /src` needs is."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]

    def ignored(path: str) -> bool:
        # Docker excludes a directory with everything below it, `**/` matches any depth and a
        # later `!pattern` re-includes; fnmatch's `*` also crosses `/`, which errs on "ignored".
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        result = False
        for pattern in patterns:
            pat = pattern.removeprefix("!").strip("/")
            variants = {pat, pat.removeprefix("**/")}
            if any(fnmatch.fnmatchcase(p, v) for p in prefixes for v in variants):
                result = not pattern.startswith("!")
        return result

    for path in (".venv/bin/python", ".git/HEAD", "infra/__pycache__/x.pyc", ".pytest_cache/v"):
        assert ignored(path), path
    needed = ["pyproject.toml", "README.md", "loraq/cli.py", "infra/settings.py"]
    needed += [f"{package}/__init__.py" for package in ("contracts", "stages", "consumer")]
    for path in needed:
        assert not ignored(path), path
