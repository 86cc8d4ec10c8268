"""cluster.yaml, checked without a cloud account.

1. Ray's own cluster-launcher code (`prepare_config` + `validate_config`, what `ray up` runs
   before it touches AWS) accepts the file, and the file keeps its promises: CPU-only head, GPU
   worker types that scale from zero, the project installed with its pins, an MLflow server on
   the head, token auth, no secrets, every placeholder explained in docs/cluster.md.
2. Its shell commands parse, and the parts that can run here do what they claim (the environment
   file, the MLflow server's restart logic, the `ray start` and `mlflow server` flags).
3. Ray's fake multi-node provider (the autoscaler's local simulator) runs the autoscaler with the
   file's GPU node types: a study's GPU runs, submitted with `ray job submit` and the auth token
   as docs/cluster.md describes, bring GPU nodes up from zero, and the nodes go away when idle.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from pipeline.raycluster import LOCAL_RAY_ENV
from ray_head import alive, free_port, ray_head

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
CLUSTER_DOC = ROOT / "docs" / "cluster.md"

# Instance families with accelerators on AWS (p*, g*, Trainium, Inferentia, DL1).
AWS_ACCELERATOR_FAMILY = re.compile(r"^(p\d|g\d|trn\d|inf\d|dl\d)")


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def prepared(raw) -> dict:
    """The config as `ray up` sees it after filling in defaults and merging setup commands."""
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


def worker_types(config: dict) -> dict:
    return {
        name: node_type
        for name, node_type in config["available_node_types"].items()
        if name != config["head_node_type"]
    }


# ---------------------------------------------------------------------------------------------
# 1. Ray accepts the file, and the file keeps its promises


def test_ray_cluster_launcher_accepts_cluster_yaml(prepared):
    assert prepared["provider"]["type"] == "aws"
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0


def test_validation_rejects_a_misspelled_key(raw):
    """The schema is strict, so the test above means something."""
    broken = copy.deepcopy(raw)
    gpu_type = next(iter(worker_types(broken).values()))
    gpu_type["min_worker"] = gpu_type.pop("min_workers")
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        validate_config(prepare_config(broken))


def test_head_node_is_cpu_only(raw):
    head = raw["available_node_types"][raw["head_node_type"]]
    assert head["resources"].get("GPU") == 0, "the head must advertise GPU: 0"
    instance_type = head["node_config"]["InstanceType"]
    assert not AWS_ACCELERATOR_FAMILY.match(instance_type), instance_type
    assert "worker_image" in raw["docker"] and "cpu" in raw["docker"]["head_image"]


def test_gpu_worker_types_scale_from_zero(raw):
    workers = worker_types(raw)
    gpus = {name: node_type["resources"].get("GPU", 0) for name, node_type in workers.items()}
    assert sorted(gpus.values())[0] == 1 and max(gpus.values()) == 8, gpus
    for name, node_type in workers.items():
        assert gpus[name] >= 1, f"{name}: every worker type is a GPU type"
        assert node_type["min_workers"] == 0, f"{name} must scale from zero"
        assert node_type["max_workers"] >= 1, name
        assert AWS_ACCELERATOR_FAMILY.match(node_type["node_config"]["InstanceType"]), name
        # Worker nodes write checkpoints and artifacts to S3, so they need an instance profile.
        assert "IamInstanceProfile" in node_type["node_config"], name
    assert 0 < raw["idle_timeout_minutes"] <= 30
    assert "gpu" in raw["docker"]["worker_image"]


def test_setup_installs_this_project_with_its_constraints(raw, prepared):
    project_dir = next(remote for remote, local in raw["file_mounts"].items() if local == ".")
    assert (ROOT / "pyproject.toml").is_file() and (ROOT / "constraints.txt").is_file()
    install = f"cd {project_dir.replace('/home/ray', '~')} && pip install -c constraints.txt -e ."
    # prepare_config merges setup_commands into the head's and the workers' command lists.
    assert install in prepared["head_setup_commands"]
    assert install in prepared["worker_setup_commands"]
    for pattern in (".git", "mlflow.db", "mlruns"):
        assert pattern in raw["rsync_exclude"]


def test_head_runs_the_mlflow_server(raw):
    (command,) = [c for c in raw["head_start_ray_commands"] if "mlflow server" in c]
    args = mlflow_server_args(command)
    assert args[args.index("--port") + 1] == "5000"
    assert args[args.index("--host") + 1] == "0.0.0.0"
    backend = args[args.index("--backend-store-uri") + 1]
    assert backend.startswith(("sqlite:////", "postgresql://")), backend
    assert args[args.index("--artifacts-destination") + 1].startswith("s3://")
    assert not any("mlflow server" in c for c in raw["worker_start_ray_commands"])


def test_nodes_get_the_pipeline_environment_and_token_auth(raw):
    env_line = environment_file_command(raw)
    assert "RAY_AUTH_MODE=token" in env_line
    assert "VIT_SCALING_STORAGE=s3://" in env_line
    assert re.search(r'MLFLOW_TRACKING_URI=http://.+:5000"', env_line)
    for commands in (raw["head_start_ray_commands"], raw["worker_start_ray_commands"]):
        (start,) = [c for c in commands if "ray start" in c]
        assert start.index("source ~/vit-scaling.env") < start.index("ray start")
    # The token travels as a file (made by `ray get-auth-token --generate`), never in this file.
    assert raw["file_mounts"].get("/home/ray/.ray") == "~/.ray"


SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key name": re.compile(r"(?i)aws_secret_access_key|aws_session_token"),
    "40-character secret": re.compile(
        r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]*[A-Z])(?=[A-Za-z0-9/+]*[a-z])(?=[A-Za-z0-9/+]*\d)"
        r"[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"
    ),
    "hex token (Ray's are 64 hex digits)": re.compile(r"\b[0-9a-f]{32,}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "password in a URL": re.compile(r"://[^/\s:@]+:[^/\s@]+@"),
    "token or password assigned": re.compile(
        r"(?i)\b(RAY_AUTH_TOKEN|password|passwd|secret)\s*[:=]\s*['\"]?[^\s'\"$]{8,}"
    ),
}


def secret_findings(text: str) -> list[str]:
    return [name for name, pattern in SECRET_PATTERNS.items() if pattern.search(text)]


def test_no_secrets_in_cluster_yaml():
    assert secret_findings(CLUSTER_YAML.read_text()) == []


@pytest.mark.parametrize(
    "planted",
    [
        "aws_access_key_id: AKIAIOSFODNN7EXAMPLE",  # AWS's documented example key
        "key: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        f"token: {hashlib.sha256(b'planted').hexdigest()}",  # fixed: test ids the same in every process
        "--backend-store-uri postgresql://mlflow:hunter2hunter2@db:5432/mlflow",
        "RAY_AUTH_TOKEN=abcdefgh12345678",
    ],
)
def test_secret_scan_catches_planted_secrets(planted):
    assert secret_findings(CLUSTER_YAML.read_text() + "\n# " + planted + "\n")


def test_every_placeholder_is_explained_in_the_docs():
    placeholders = set(re.findall(r"YOUR_[A-Z0-9_]+", CLUSTER_YAML.read_text()))
    assert {"YOUR_REGION", "YOUR_BUCKET", "YOUR_AMI_ID"} <= placeholders
    doc = CLUSTER_DOC.read_text()
    missing = sorted(p for p in placeholders if p not in doc)
    assert not missing, f"docs/cluster.md does not explain {missing}"


# ---------------------------------------------------------------------------------------------
# 2. The shell commands parse, and what can run here does what it claims


def all_commands(raw: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands",
            "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
    return [command for key in keys for command in raw[key]]


def environment_file_command(raw: dict) -> str:
    (command,) = [c for c in raw["setup_commands"] if "vit-scaling.env" in c]
    return command


def mlflow_server_args(command: str) -> list[str]:
    inner = re.search(r"exec mlflow server ([^']*)'", command)
    assert inner, f"no `exec mlflow server ...` in {command!r}"
    return shlex.split(inner.group(1))


def test_every_command_is_valid_bash(raw):
    for command in all_commands(raw):
        result = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
        assert result.returncode == 0, f"{command!r}: {result.stderr}"


def test_ray_start_and_mlflow_server_accept_these_flags(raw):
    from mlflow.cli import cli as mlflow_cli
    from ray.scripts.scripts import start as ray_start

    for commands in (raw["head_start_ray_commands"], raw["worker_start_ray_commands"]):
        (command,) = [c for c in commands if "ray start" in c]
        args = shlex.split(command[command.index("ray start"):].replace("$RAY_HEAD_IP", "10.0.0.1"))
        ray_start.make_context("ray start", args[2:])  # click raises on an unknown flag
    (command,) = [c for c in raw["head_start_ray_commands"] if "mlflow server" in c]
    params = mlflow_cli.commands["server"].make_context("server", mlflow_server_args(command)).params
    assert params["port"] == 5000 and params["serve_artifacts"]


def run_bash(command: str, home: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": str(home), **env})


def test_environment_file_points_workers_at_the_head(raw, tmp_path):
    command = environment_file_command(raw)
    (tmp_path / ".bashrc").write_text("# existing\n")
    for _ in range(2):  # `ray up` reruns setup commands: the .bashrc line must not pile up
        result = run_bash(command, tmp_path, RAY_HEAD_IP="10.1.2.3")
        assert result.returncode == 0, result.stderr
    assert (tmp_path / ".bashrc").read_text().count("vit-scaling.env") == 1
    shown = run_bash("source ~/vit-scaling.env && echo $RAY_AUTH_MODE $VIT_SCALING_STORAGE "
                     "$MLFLOW_TRACKING_URI", tmp_path)
    assert shown.stdout.split() == ["token", "s3://YOUR_BUCKET/vit-scaling", "http://10.1.2.3:5000"]

    # On the head (no RAY_HEAD_IP) the URI carries the head's own address.
    env = {k: v for k, v in os.environ.items() if k != "RAY_HEAD_IP"}
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                            env={**env, "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    uri = run_bash("source ~/vit-scaling.env && echo $MLFLOW_TRACKING_URI", tmp_path).stdout
    assert re.fullmatch(r"http://[0-9a-f.:]+:5000\n", uri), uri


def test_mlflow_server_restart_stops_the_previous_server(raw, tmp_path):
    """The start command, with the server replaced by a sleeping Python process: the pid file
    names a session of its own, and running the command again stops that session first."""
    (command,) = [c for c in raw["head_start_ray_commands"] if "mlflow server" in c]
    sleeper = f'{sys.executable} -c "import time; time.sleep(600)"'
    command = command.replace("mlflow server", sleeper)
    (tmp_path / "mlflow").mkdir()
    pid_file = tmp_path / "mlflow" / "server.pid"
    started = []
    try:
        for _ in range(2):
            previous = pid_file.read_text() if pid_file.exists() else None
            assert run_bash(command, tmp_path).returncode == 0
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (not pid_file.exists()
                                                   or pid_file.read_text() == previous):
                time.sleep(0.1)
            pid = int(pid_file.read_text())
            started.append(pid)
            assert os.getsid(pid) == pid and os.getpgid(pid) == pid
        assert not alive(started[0]), "the restart left the previous server running"
        assert alive(started[1])
    finally:
        for pid in started:
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# 3. Scale from zero and back, on Ray's fake multi-node provider
#
# ray.cluster_utils.AutoscalingCluster would do this, but in the Ray 2.60 wheel it fails with
# FileNotFoundError: the fake provider's example.yaml it loads is not packaged, and its start()
# and shutdown() run `ray stop --force`, which would kill every Ray process on the machine. So the
# head is started here directly, on its own ports and temp dir, and only its processes are ended.

JOB_SCRIPT = '''
import json, time, ray

ray.init(log_to_driver=False)

def gpu_nodes():
    return sorted(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0))

def report(**fields):
    print("TIMELINE " + json.dumps(fields), flush=True)

report(event="submitted", gpu_nodes=gpu_nodes(), head=ray.get_runtime_context().get_node_id())

@ray.remote(num_gpus=1, num_cpus=1)   # one run of a study started with --gpus-per-run 1
def run(index):
    time.sleep(3)
    node = ray.get_runtime_context().get_node_id()
    gpus = next(n["Resources"]["GPU"] for n in ray.nodes() if n["NodeID"] == node)
    return {"run": index, "node": node, "node_gpus": gpus, "gpu_ids": ray.get_gpu_ids()}

runs = [run.remote(i) for i in range(2)]
seen, start = set(), time.time()
while time.time() - start < 90:
    seen.update(gpu_nodes())
    if len(ray.wait(runs, num_returns=len(runs), timeout=0.5)[0]) == len(runs):
        break
report(event="ran", runs=ray.get(runs, timeout=10), gpu_nodes_seen=sorted(seen))
start = time.time()
while gpu_nodes() and time.time() - start < 90:
    time.sleep(0.5)
report(event="idle", gpu_nodes=gpu_nodes(), seconds=round(time.time() - start, 1))
'''


def fake_autoscaling_config(raw: dict, gcs_address: str) -> dict:
    """cluster.yaml's node types on the fake provider: the same GPU counts and min/max workers
    (max capped at 2 to fit this machine), one fake CPU per node, a 3-second idle timeout."""
    head = raw["available_node_types"][raw["head_node_type"]]
    node_types = {
        "ray.head.default": {  # the fake provider's fixed name for the head
            "resources": {"CPU": 1, "GPU": head["resources"]["GPU"]},
            "node_config": {}, "max_workers": 0,
        }
    }
    for name, node_type in worker_types(raw).items():
        node_types[name] = {
            "resources": {"CPU": 1, "GPU": node_type["resources"]["GPU"]},
            "node_config": {},
            "min_workers": node_type["min_workers"],
            "max_workers": min(node_type["max_workers"], 2),
        }
    return {
        "cluster_name": "fake-" + raw["cluster_name"],
        "max_workers": 4,
        "upscaling_speed": raw["upscaling_speed"],
        "idle_timeout_minutes": 0.05,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "auth": {}, "docker": {},
        "available_node_types": node_types,
        "head_node_type": "ray.head.default",
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [],
        "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


@pytest.fixture
def fake_cluster(raw):
    """A head node with the autoscaler on the fake multi-node provider and token auth on."""
    temp_dir = Path(tempfile.mkdtemp(prefix="vitc-", dir="/tmp"))  # short: socket paths
    gcs_port = free_port()
    config_path = temp_dir / "autoscaling.json"
    config_path.write_text(json.dumps(fake_autoscaling_config(raw, f"127.0.0.1:{gcs_port}")))
    with ray_head(num_cpus=1, temp_dir=temp_dir, gcs_port=gcs_port,
                  extra_args=(f"--autoscaling-config={config_path}",),
                  extra_env={"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}) as head:
        yield head


def ray_job_submit(cluster: dict, job_dir: Path, token: str, timeout: float):
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "ray.scripts.scripts", "job", "submit",
               "--address", cluster["dashboard"], "--working-dir", str(job_dir),
               "--", sys.executable, "gpu_runs.py"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_gpu_runs_scale_gpu_nodes_up_from_zero_and_back(raw, fake_cluster):
    job_dir = fake_cluster["dir"] / "job"
    job_dir.mkdir()
    (job_dir / "gpu_runs.py").write_text(JOB_SCRIPT)

    # Without the cluster's token the job server refuses the job.
    refused = ray_job_submit(fake_cluster, job_dir, "not-the-token", timeout=60)
    assert refused.returncode != 0
    assert "Authentication" in refused.stderr + refused.stdout

    job = ray_job_submit(fake_cluster, job_dir, fake_cluster["token"], timeout=240)
    output = job.stdout + job.stderr
    assert job.returncode == 0, output[-4000:]
    timeline = {event["event"]: event for event in (
        json.loads(line.split("TIMELINE ", 1)[1]) for line in output.splitlines()
        if "TIMELINE " in line)}
    assert set(timeline) == {"submitted", "ran", "idle"}, output[-4000:]

    assert timeline["submitted"]["gpu_nodes"] == [], "GPU nodes must start from zero"
    ran = timeline["ran"]
    head = timeline["submitted"]["head"]
    assert len(ran["gpu_nodes_seen"]) >= 1
    for result in ran["runs"]:
        assert result["node"] != head, "a GPU run landed on the CPU-only head"
        assert result["node"] in ran["gpu_nodes_seen"]
        assert result["gpu_ids"] == [0]
        # The autoscaler picks the smallest type that fits: one-GPU runs go to 1-GPU nodes.
        assert result["node_gpus"] == 1, result
    assert timeline["idle"]["gpu_nodes"] == [], "GPU nodes were not released after idling"


CHAIN_ON_RAY = '''
import ray
from pipeline.raycluster import ensure_ray, unplaceable
ensure_ray(log_to_driver=False)

@ray.remote(num_cpus=0)
def chain():   # where a study's run chains ask before pretraining (pipeline.pretrain.launch)
    from pipeline.raycluster import on_local_ray, unplaceable
    return on_local_ray(), unplaceable({"GPU": 1000})   # more than any one machine has

print("DRIVER", unplaceable({"GPU": 1000}))
print("CHAIN", *ray.get(chain.remote()), sep="|")
'''


@pytest.mark.slow
def test_gpu_runs_are_refused_on_a_local_ray_without_gpus_but_not_on_a_cluster_that_may_add_them():
    """A chain's task on a cluster has no RAY_ADDRESS (Ray does not pass it to workers): a check
    for resources that an autoscaler may add, made from it, must still see a cluster. It once
    refused every --gpus-per-run chain on a cluster whose GPU nodes start from zero."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", LOCAL_RAY_ENV)}
    local = subprocess.run([sys.executable, "-c", CHAIN_ON_RAY], env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert local.returncode == 0, local.stderr[-3000:]
    assert "DRIVER 1 x 1000 GPU (this machine's Ray has " in local.stdout, local.stdout
    assert "CHAIN|True|1 x 1000 GPU (this machine's Ray has " in local.stdout, local.stdout
    with ray_head(num_cpus=1) as head:
        on_cluster = subprocess.run([sys.executable, "-c", CHAIN_ON_RAY], cwd=ROOT, capture_output=True, text=True,
                                    env={**head["env"], "RAY_ADDRESS": head["address"]}, timeout=120)
    assert on_cluster.returncode == 0, on_cluster.stderr[-3000:]
    assert "DRIVER None" in on_cluster.stdout and "CHAIN|False|None" in on_cluster.stdout, on_cluster.stdout
