"""Hostile input, found by a tool: `chexops.imaging.decode` under atheris (tests/fuzz_decode.py) for
a bounded time, and every kept regression input (tests/fuzz_corpus/) replayed.

CHEXOPS_FUZZ_SECONDS sets the fuzzing time (default 45; a longer run: see tests/fuzz_decode.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz_decode import REGRESSIONS, check, write_seeds
from support import ROOT

SECONDS = int(os.environ.get("CHEXOPS_FUZZ_SECONDS", "45"))


@pytest.mark.slow
def test_decode_survives_fuzzing(tmp_path):
    corpus = tmp_path / "corpus"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "training"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "fuzz_decode.py"),
            f"-max_total_time={SECONDS}",
            "-rss_limit_mb=3072",
            "-timeout=20",
            f"-artifact_prefix={tmp_path}/",
            "-print_final_stats=1",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=SECONDS + 240,
        cwd=ROOT,
    )
    found = sorted(p.name for p in tmp_path.glob("*-*") if p.name.split("-")[0] in ("crash", "timeout", "oom", "leak"))
    assert result.returncode == 0 and not found, (
        f"the fuzzer found a failing input ({found or 'exit ' + str(result.returncode)} in {tmp_path}): fix "
        f"chexops.imaging.decode, and keep the input in tests/fuzz_corpus/ if it is small.\n{result.stderr[-4000:]}"
    )
    runs = [line for line in result.stderr.splitlines() if line.startswith("stat::number_of_executed_units")]
    assert runs and int(runs[-1].split(":")[-1]) > 100, result.stderr[-2000:]  # it really ran


@pytest.mark.parametrize("path", sorted(p for p in REGRESSIONS.glob("*") if p.suffix != ".md"), ids=lambda p: p.name)
def test_fuzz_regressions_stay_fixed(path: Path):
    """Each kept input: decoded into a valid image, or refused with ImageInputError; nothing else.
    A file named refused-* must be refused (a 4xx), never decoded into something plausible."""
    from chexops.imaging.decode import ImageInputError, decode

    check(path.read_bytes())
    if path.name.startswith("refused-"):
        with pytest.raises(ImageInputError):
            decode(path.read_bytes())


def test_the_seeds_are_valid_images(tmp_path):
    from chexops.imaging.decode import decode

    seeds = write_seeds(tmp_path)
    generated = [p for p in seeds if p.parent == tmp_path and not (REGRESSIONS / p.name).exists()]
    assert {p.suffix for p in generated} == {".png", ".jpg", ".dcm"}
    for path in generated:
        decode(path.read_bytes())  # the fuzzer starts from inputs that decode
