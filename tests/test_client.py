"""hetsched.Client against the real daemon: numpy in, numpy out, over gRPC and HTTP."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from conftest import ADMIN

import hetsched
from hetsched import zoo
from partitioner.feeds import random_feeds


def expected(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


@pytest.fixture(params=["grpc", "http"])
def client(request, daemon):
    url = daemon.grpc if request.param == "grpc" else f"http://{daemon.http}"
    with hetsched.Client(url, headers=ADMIN) as made:
        yield made


def test_load_infer_async_and_unload(client, daemon) -> None:
    name = f"client-{client.protocol}"
    model = zoo.build("multi-io")
    client.load_model(name, model, ratios=(0.7, 0.3), max_batch_size=4, max_queue_delay_us=500, warmup=2)
    assert {"name": name, "version": "1", "state": "READY", "reason": ""} in client.models()
    assert client.is_ready(name)
    feeds = random_feeds(model, 2, seed=4)
    answer = client.infer(name, feeds)
    for output, value in expected(model, feeds).items():
        np.testing.assert_allclose(answer[output], value, rtol=1e-4, atol=1e-5)
    futures = [client.infer_async(name, random_feeds(model, 1, seed=s), outputs=["score"]) for s in range(8)]
    for seed, future in enumerate(futures):
        want = expected(model, random_feeds(model, 1, seed=seed))["score"]
        np.testing.assert_allclose(future.result(timeout=60)["score"], want, rtol=1e-4, atol=1e-5)
    config = client.metadata(name)
    assert {t["name"] for t in config["inputs"]} == {"features", "token_ids"}
    assert client.statistics(name)[0]["inference_stats"]["success"]["count"] >= 9
    client.unload_model(name)
    assert not client.is_ready(name)


def test_server_errors_raise_with_their_status(client) -> None:
    with pytest.raises(hetsched.ServerError, match="no-such-model") as caught:
        client.infer("no-such-model", {"x": np.zeros(1, np.float32)})
    assert caught.value.status in ("404", "NOT_FOUND")
    with pytest.raises(hetsched.ServerError, match="expected FP32") as caught:
        client.infer("lenet", {"input": np.zeros((1, 1, 32, 32), np.float64)})
    assert caught.value.status in ("400", "INVALID_ARGUMENT")
    with pytest.raises(hetsched.ServerError, match="ratios"):
        client.load_model("bad-ratios", zoo.build("lenet5"), ratios=(0.7, 0.7))


def test_a_bad_url_is_a_usage_error() -> None:
    with pytest.raises(hetsched.UsageError, match="grpc:// or http://"):
        hetsched.Client("ftp://localhost:1")
