"""The PyTorch example's parts that do not need PyTorch: its data glue and its wiring into the loop.

The example itself needs ``torch==2.13.0`` (examples/pytorch/requirements.txt), which the default
commands do not install; its training runs in the quickstart's loop, tested in test_quickstart.
"""

from __future__ import annotations

import numpy as np
import pytest

from .support import EXAMPLES, load_example


def test_features_become_nchw_images():
    images = load_example("pytorch/images.py", "pytorch_images")
    x = np.arange(2 * 64, dtype=np.float64).reshape(2, 64) / 128
    batch = images.as_images(x)
    assert batch.shape == (2, 1, 8, 8)
    assert batch.dtype == np.float32
    assert batch.flags.c_contiguous
    assert batch[1, 0, 2, 3] == np.float32(x[1, 2 * 8 + 3])  # row-major: pixel (row 2, column 3)
    with pytest.raises(ValueError, match=r"expected \(N, 64\)"):
        images.as_images(np.zeros((2, 63)))


def test_the_example_runs_the_quickstart_loop_with_the_cnn_and_its_own_defaults():
    example = load_example("pytorch/run.py", "pytorch_run")
    quickstart = example.quickstart()
    args = quickstart.parse([], example.DEFAULTS)
    assert (args.model, args.rounds, args.epochs, args.lr) == ("cnn", 20, 2, 0.05)
    assert str(args.out) == "out/pytorch"
    overridden = quickstart.parse(["--rounds", "3", "--aggregator", "median"], example.DEFAULTS)
    assert (overridden.rounds, overridden.aggregator, overridden.model) == (3, "median", "cnn")
    assert (EXAMPLES / "pytorch" / "cnn.py").is_file()


def test_torch_is_optional_and_pinned_to_the_cpu_build_version():
    pinned = (EXAMPLES / "pytorch" / "requirements.txt").read_text().split()
    assert "torch==2.13.0" in pinned
    root = (EXAMPLES.parent / "requirements.txt").read_text().lower()
    assert "torch" not in root  # make run / make test never install it
