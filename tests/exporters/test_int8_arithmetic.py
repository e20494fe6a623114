"""int8 arithmetic per CPU: the saturation probe runs ONNX Runtime's own kernels, and the
settings an export uses are exact on the CPU it is for. The no-VNNI case is also run
on an emulated CPU (QEMU's user mode, -cpu Haswell: AVX2 without AVX-512 or VNNI), so
a VNNI build machine tests it too; bench/int8_saturation.py has the figures."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys

import pytest

from adapt.exporters import int8_arithmetic
from adapt.exporters.int8_arithmetic import saturation_probe, settings

X86 = platform.machine().lower() in ("x86_64", "amd64")
QEMU = shutil.which("qemu-x86_64")


def test_seven_bit_weights_are_exact_here_and_the_auto_setting_follows_the_probe():
    probe = saturation_probe()
    assert set(probe) == {"int8", "uint8"}
    for activation in probe.values():
        assert activation["7bit"], activation  # 7-bit weights cannot saturate on any CPU
        assert activation["want"] > 32767 * 2  # the worst case does pass a 16-bit lane
    chosen = settings("auto")
    assert chosen["reduce_range"] == {a: not probe[a]["8bit"] for a in probe}
    assert "probe" in chosen and chosen["measurable"]


@pytest.mark.parametrize(("target", "seven"), [("x86", True), ("x86-vnni", False), ("arm", False)])
def test_a_named_target_gets_the_weights_that_are_exact_there(target, seven):
    chosen = settings(target)
    assert chosen["reduce_range"] == {"int8": seven, "uint8": seven}
    assert chosen["measurable"] == (target.split("-")[0] == int8_arithmetic.machine_family())
    assert target in chosen["why"]


@pytest.mark.skipif(not (X86 and QEMU), reason="needs x86 and QEMU's user mode (Debian's qemu-user; .ci/run installs it)")
def test_on_an_avx2_cpu_without_vnni_the_probe_finds_saturation_and_auto_uses_seven_bit_weights():
    """The CPU the issue met (AVX2, no VNNI), emulated: 8-bit weights saturate, 7-bit ones
    are exact, and an export for this machine (auto) uses 7-bit weights for both types."""
    code = "import json; from adapt.exporters.int8_arithmetic import settings; s = settings('auto'); print(json.dumps({'reduce_range': s['reduce_range'], 'probe': s['probe'], 'why': s['why']}))"
    done = subprocess.run([QEMU, "-cpu", "Haswell", sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["reduce_range"] == {"int8": True, "uint8": True}, found
    assert all(not row["8bit"] and row["7bit"] for row in found["probe"].values()), found
    assert "saturate" in found["why"] and "U8S8 gave" in found["why"]
