"""Model configs, the repository layout and tensor encodings, without a server."""

from __future__ import annotations

import numpy as np
import pytest
from daemon_process import add_model, string_model

from hetsched import zoo
from hetsched.daemon import config as configs
from hetsched.daemon.repository import ModelRepository
from hetsched.daemon.tensors import TensorSpec, from_bytes, from_json, to_bytes, to_json
from hetsched.errors import InvalidInputError, ModelNotFoundError, UsageError


def test_autocompletion_batches_only_models_that_can_be_and_were_not_told_otherwise() -> None:
    model = zoo.build("lenet5")
    done = configs.complete(configs.parse_text("", "t"), model, "lenet")
    assert done.max_batch_size == 4 and done.HasField("dynamic_batching")
    assert [list(i.dims) for i in done.input] == [[1, 32, 32]] and done.platform == "onnxruntime_onnx"
    explicit_zero = configs.complete(
        configs.parse_text("max_batch_size: 0", "t"), model, "lenet", max_batch_size_given=True
    )
    assert explicit_zero.max_batch_size == 0 and not explicit_zero.HasField("dynamic_batching")
    assert [list(i.dims) for i in explicit_zero.input] == [[-1, 1, 32, 32]]
    dependent = configs.complete(configs.parse_text("", "t"), model, "lenet", rows_independent=False)
    assert dependent.max_batch_size == 0
    assert configs.settings(done).max_batch == 4 and configs.settings(explicit_zero).max_batch == 1


@pytest.mark.parametrize(
    "text, given",
    [
        ("max_batch_size: 0", True),
        ("name: 'a'\n  max_batch_size :8", True),
        ("name: 'max_batch_size'", False),
        ("", False),
    ],
)
def test_an_explicit_max_batch_size_is_seen_in_the_text(text, given) -> None:
    assert configs.sets_max_batch_size(text) is given


@pytest.mark.parametrize(
    "text, message",
    [
        ('parameters { key: "hetsched.ratio" value { string_value: "1" } }', "unknown parameters"),
        ('parameters { key: "hetsched.ratios" value { string_value: "0.7,0.7" } }', "sum to"),
        ('parameters { key: "hetsched.warmup" value { string_value: "many" } }', "integer >= 0"),
        ('input { name: "nope" data_type: TYPE_FP32 dims: [1] }', "the model takes"),
        ('input { name: "input" data_type: TYPE_INT64 dims: [1, 32, 32] }', "the model's is TYPE_FP32"),
        ('max_batch_size: 4\\ninput { name: "input" data_type: TYPE_FP32 dims: [1, 32, 33] }', "dims"),
        ('platform: "tensorrt_plan"', "ONNX models only"),
        ("max_batch_size: oops", "not a valid Triton model config"),
    ],
)
def test_bad_configs_name_the_problem(text, message) -> None:
    with pytest.raises(UsageError, match=message):
        configs.complete(configs.parse_text(text, "config.pbtxt"), zoo.build("lenet5"), "lenet")


def test_settings_come_from_parameters_and_triton_fields() -> None:
    text = (
        "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 1500 "
        "default_queue_policy { max_queue_size: 9 } }\n"
        'parameters { key: "hetsched.ratios" value { string_value: "0.75,0.25" } }\n'
        'parameters { key: "hetsched.policy" value { string_value: "eager" } }\n'
    )
    settings = configs.settings(configs.complete(configs.parse_text(text, "t"), zoo.build("lenet5"), "lenet"))
    assert settings.ratios == (0.75, 0.25) and settings.profile  # profiled because there are two parts
    assert settings.max_batch == 8 and settings.max_queue_delay_s == pytest.approx(0.0015)
    assert settings.max_queue == 9 and settings.policy == "eager" and settings.workers is None


def test_config_json_keeps_64_bit_integers_as_numbers() -> None:
    doc = configs.to_dict(configs.parse_text("input { name: 'x' dims: [-1, 3] data_type: TYPE_FP32 }", "t"))
    assert doc["input"][0]["dims"] == [-1, 3] and doc["max_batch_size"] == 0


def test_repository_versions_and_uploads(tmp_path) -> None:
    for version in (1, 2, 3):
        add_model(tmp_path, "m", string_model(), version=version)
    repository = ModelRepository(tmp_path)
    assert repository.names() == ["m"] and list(repository.read("m").versions) == [3]
    (tmp_path / "m" / "config.pbtxt").write_text("version_policy { specific { versions: [1, 3] } }")
    assert list(repository.read("m").versions) == [1, 3]
    (tmp_path / "m" / "config.pbtxt").write_text("version_policy { all { } }\nmax_batch_size: 0")
    source = repository.read("m")
    assert list(source.versions) == [1, 2, 3] and source.max_batch_size_given
    with pytest.raises(ModelNotFoundError, match="no model 'x'"):
        repository.read("x")
    blob = string_model().SerializeToString()
    repository.write_upload("up", '{"max_batch_size": 0}', {"file:2/model.onnx": blob})
    uploaded = repository.read("up")
    assert list(uploaded.versions) == [2] and uploaded.max_batch_size_given
    for key in ("file:../escape.onnx", "file:/abs.onnx", "other"):
        with pytest.raises(UsageError, match="file"):
            repository.write_upload("bad", "{}", {key: blob})
    assert not (tmp_path / "bad").exists() and not (tmp_path / "escape.onnx").exists()
    with pytest.raises(UsageError, match="no 'config'"):
        repository.write_upload("bad", None, {"file:1/model.onnx": blob})


@pytest.mark.parametrize(
    "value",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array([[True, False]]),
        np.arange(6, dtype=np.int64),
        np.array([1.5, -2], dtype=np.float16),
        np.array([[b"a", b""], ["é".encode(), b"x" * 70000]], dtype=object),
    ],
)
def test_tensors_round_trip_in_binary_and_json(value) -> None:
    datatype = {
        "f": "FP32" if value.dtype == np.float32 else "FP16",
        "b": "BOOL",
        "i": "INT64",
        "O": "BYTES",
    }[value.dtype.kind]
    decoded = from_bytes("t", to_bytes(value), datatype, list(value.shape))
    assert decoded.tolist() == value.tolist() and decoded.shape == value.shape
    if datatype != "BYTES":
        assert from_json("t", to_json(value), datatype, list(value.shape)).tolist() == value.tolist()


def test_tensor_decoding_errors_say_what_was_expected() -> None:
    with pytest.raises(InvalidInputError, match="12 bytes of data, expected 16"):
        from_bytes("x", b"\0" * 12, "FP32", [2, 2])
    with pytest.raises(InvalidInputError, match="runs past the data"):
        from_bytes("s", b"\x09\0\0\0abc", "BYTES", [1])
    with pytest.raises(InvalidInputError, match="3 values, expected 4"):
        from_json("x", [1, 2, 3], "FP32", [2, 2])
    with pytest.raises(InvalidInputError, match="negative"):
        from_json("x", [], "FP32", [-1])
    spec = TensorSpec("x", "FP32", (-1, 3))
    with pytest.raises(InvalidInputError, match="exceeds the model's max_batch_size 2"):
        spec.check(np.zeros((3, 3), np.float32), "FP32", max_batch_size=2)
