"""The public surface: a sorted __all__ whose names all exist."""

import hetsched


def test_all_is_sorted_and_complete() -> None:
    assert list(hetsched.__all__) == sorted(hetsched.__all__)
    for name in hetsched.__all__:
        assert hasattr(hetsched, name), name


def test_scheduler_core_and_perf_models_never_import_onnxruntime() -> None:
    """STYLE: only the worker/session layer touches ONNX Runtime."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['onnxruntime'] = None\n"
            "import hetsched.scheduler, hetsched.policies, hetsched.simulate, hetsched.perf, hetsched.trace\n"
            "import perfmodels.history, perfmodels.regression, perfmodels.transfer, perfmodels.composition\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
