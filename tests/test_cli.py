"""The CLI contract: bad input ends with one line naming the problem and the fix, exit 2, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from test_acyclic import chain


def hetsched(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "hetsched", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("m") / "chain.onnx"
    onnx.save(chain(6), str(path))
    return path


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    "ratios, needles",
    [
        ("0.9,-0.1", ("not positive",)),
        ("0.5,0.6", ("sum to 1.1", "0.8,0.2")),
        (",".join(["0.125"] * 8), ("8 parts", "at most 6")),
        ("a,b", ("not numbers",)),
    ],
)
def test_partition_rejects_bad_ratios(
    model_file: Path, tmp_path: Path, ratios: str, needles: tuple[str]
) -> None:
    assert_one_line_error(hetsched("partition", str(model_file), "--ratios", ratios, "--out", str(tmp_path)),
                          *needles)


def test_partition_rejects_missing_and_non_onnx_files(tmp_path: Path) -> None:
    assert_one_line_error(hetsched("partition", str(tmp_path / "none.onnx"), "--ratios", "1", "--out",
                                   str(tmp_path)), "no such model file")
    junk = tmp_path / "junk.onnx"
    junk.write_text("hello, I am a text file\n" * 20)
    assert_one_line_error(hetsched("partition", str(junk), "--ratios", "1", "--out", str(tmp_path)),
                          "junk.onnx", "re-export")


def test_partition_writes_plan_and_parts(model_file: Path, tmp_path: Path) -> None:
    result = hetsched("partition", str(model_file), "--ratios", "0.5,0.5", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["format"] == "hetsched.plan/1" and plan["ratios"] == [0.5, 0.5]
    assert [p["file"] for p in plan["parts"]] == ["part_0.onnx", "part_1.onnx"]
    for p in plan["parts"]:
        onnx.checker.check_model(str(tmp_path / p["file"]))


def test_costs_file_that_is_garbage_is_refused(model_file: Path, tmp_path: Path) -> None:
    costs = tmp_path / "costs.json"
    costs.write_text("garbage")
    assert_one_line_error(hetsched("partition", str(model_file), "--ratios", "1", "--out", str(tmp_path),
                                   "--costs", str(costs)), "hetsched profile")


def test_truncated_model_is_refused(model_file: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(model_file.read_bytes()[:40])
    result = hetsched("partition", str(cut), "--ratios", "1", "--out", str(tmp_path))
    assert_one_line_error(result, "cut.onnx")


def test_costs_of_another_model_are_refused(model_file: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.onnx"
    onnx.save(chain(7), str(other))
    costs = tmp_path / "costs.json"
    assert hetsched("profile", str(other), "--out", str(costs)).returncode == 0
    result = hetsched("partition", str(model_file), "--ratios", "0.5,0.5", "--out", str(tmp_path),
                      "--costs", str(costs))
    assert_one_line_error(result, "another model", "hetsched profile")


def test_demo_runs_the_main_job_end_to_end(tmp_path: Path) -> None:
    """Build, profile, partition, check, then plain ORT, the runtime and the daemon under load."""
    result = hetsched("demo", "--model", "lenet5", "--ratios", "0.5,0.5", "--seconds", "0.6", "--no-triton",
                      "--out", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "[OK]" in out and "(Triton skipped: --no-triton)" in out
    rows = {line.split("  ")[0] for line in out.splitlines()}
    assert {"plain ONNX Runtime", "hetsched.Runtime (0.5,0.5)", "hetsched serve (0.5,0.5)"} <= rows
    assert (tmp_path / "plan" / "plan.json").is_file() and (tmp_path / "repository" / "lenet5").is_dir()
    assert "plot: " in out or "(plot skipped" in out


def test_serve_takes_accelerators_by_provider_with_their_options() -> None:
    from hetsched.cli import _parser

    assert not _parser().parse_args(["serve", "--model-repository", "repo"]).numa_copies
    args = _parser().parse_args(["serve", "--model-repository", "repo", "--gpu-streams", "0", "--numa-copies",
                                 "--accelerator", "AzureExecutionProvider",
                                 "--accelerator", "VitisAIExecutionProvider:config_file=vaip.json,target=X"])
    assert args.gpu_streams == 0 and args.numa_copies
    assert args.accelerator == [("AzureExecutionProvider", {}),
                                ("VitisAIExecutionProvider", {"config_file": "vaip.json", "target": "X"})]
    for bad in (["--accelerator", "VitisAIExecutionProvider:config_file"], ["--gpu-streams", "-1"]):
        with pytest.raises(SystemExit):
            _parser().parse_args(["serve", "--model-repository", "repo", *bad])
