"""The test servers are real: SeaweedFS answers S3 as pyarrow uses it (ranged reads, listings),
and the MLflow server stores artifacts in it for clients that hold no S3 credentials."""
import os
import uuid

import pyarrow.fs as pafs
import pytest

pytestmark = pytest.mark.slow


def test_object_store_and_mlflow_artifacts(object_store, mlflow_http, monkeypatch):
    bucket, prefix = object_store["bucket"], f"test_servers/{uuid.uuid4().hex}"  # bucket is shared
    for name, value in object_store["env"].items():
        monkeypatch.setenv(name, value)
    fs, root = pafs.FileSystem.from_uri(f"s3://{bucket}/{prefix}")
    data = bytes(range(256)) * 64
    with fs.open_output_stream(f"{root}/blob.bin") as out:
        out.write(data)
    with fs.open_input_file(f"{root}/blob.bin") as blob:
        assert blob.size() == len(data)
        assert blob.read_at(100, 1000) == data[1000:1100]  # a ranged GET
    assert [info.path for info in fs.get_file_info(pafs.FileSelector(root, recursive=True))] == [f"{root}/blob.bin"]

    # The MLflow client holds no S3 settings at all: artifacts go through the server.
    for name in [name for name in os.environ if name.startswith("AWS_")] + ["MLFLOW_S3_ENDPOINT_URL"]:
        monkeypatch.delenv(name, raising=False)
    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=mlflow_http)
    run = client.create_run(client.create_experiment(prefix.replace("/", "-")))
    run_id = run.info.run_id
    client.log_metric(run_id, "loss", 0.25, step=1)
    client.log_text(run_id, "hello", "notes/hello.txt")
    client.set_terminated(run_id)
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [0.25]
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")

    store = pafs.S3FileSystem(endpoint_override=object_store["endpoint"], region="us-east-1",
                              access_key=object_store["access_key"], secret_key=object_store["secret_key"])
    found = [info.path for info in store.get_file_info(pafs.FileSelector(f"{bucket}/mlflow", recursive=True))
             if info.path.endswith(f"{run_id}/artifacts/notes/hello.txt")]
    assert len(found) == 1, found
    with store.open_input_stream(found[0]) as artifact:
        assert artifact.read() == b"hello"
