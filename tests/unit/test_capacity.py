"""node.capacity: parsers on canned nvidia-smi output, and detection against a real fake binary.

The fake `nvidia-smi` is a small shell script in tmp_path, so the subprocess handling (exit
codes, garbage, hangs) is exercised for real. NVML is blocked for every test (see the autouse
fixture) unless a test installs its own fake `pynvml`, so the machine's GPUs never leak in.
"""

from __future__ import annotations

import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from node.capacity import (
    CapacityError,
    CapacityReport,
    describe,
    detect_capacity,
    parse_nvidia_smi_csv,
    parse_utilisation_csv,
    read_gpu_utilisation,
)
from p2p.announcements import GpuSpec

DECLARED = (GpuSpec("RTX 4090", 2, 24_576),)
TWO_MODELS = (
    "NVIDIA H100 80GB HBM3, 81559\n"
    "NVIDIA H100 80GB HBM3, 81559\n"
    "NVIDIA GeForce RTX 4090, 24564\n"
    "NVIDIA H100 80GB HBM3, 81559\n"
)
FakeSmi = Callable[[str], str]


@pytest.fixture(autouse=True)
def no_real_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """`import pynvml` fails in every test unless the test installs a fake one."""
    monkeypatch.setitem(sys.modules, "pynvml", None)


@pytest.fixture
def fake_smi(tmp_path: Path) -> FakeSmi:
    """Writes an executable `nvidia-smi` script with the given body; returns its path."""
    counter = iter(range(1000))

    def make(body: str) -> str:
        path = tmp_path / f"nvidia-smi-{next(counter)}"
        path.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
        path.chmod(0o755)
        return str(path)

    return make


def inventory_script(output: str) -> str:
    """A fake that answers only the exact inventory query, as the real one would."""
    return (
        'if [ "$1" != "--query-gpu=name,memory.total" ] || '
        '[ "$2" != "--format=csv,noheader,nounits" ]; then\n'
        '  echo "unexpected arguments: $*" >&2; exit 64\nfi\n'
        f"cat <<'EOF'\n{output}EOF"
    )


# ---------------------------------------------------------------------------------------------
# pure parsers


def test_parse_groups_identical_models_in_order_of_first_appearance() -> None:
    assert parse_nvidia_smi_csv(TWO_MODELS) == (
        GpuSpec("NVIDIA H100 80GB HBM3", 3, 81_559),
        GpuSpec("NVIDIA GeForce RTX 4090", 1, 24_564),
    )


def test_parse_tolerates_odd_spacing_blank_lines_and_crlf() -> None:
    text = "\n  Tesla T4 ,   15360  \r\n\r\nTesla T4,15360\n\n"
    assert parse_nvidia_smi_csv(text) == (GpuSpec("Tesla T4", 2, 15_360),)


def test_parse_keeps_commas_inside_the_model_name() -> None:
    assert parse_nvidia_smi_csv("Odd, Inc. GPU, 1024\n") == (GpuSpec("Odd, Inc. GPU", 1, 1024),)


def test_parse_keeps_the_smallest_memory_of_one_model() -> None:
    text = "A100, 81920\nA100, 40960\n"
    assert parse_nvidia_smi_csv(text) == (GpuSpec("A100", 2, 40_960),)


def test_parse_of_no_output_is_no_gpus() -> None:
    assert parse_nvidia_smi_csv("") == ()
    assert parse_nvidia_smi_csv("\n\n") == ()


@pytest.mark.parametrize(
    ("text", "bad_line"),
    [
        ("A100, 81920\nNo devices were found\n", "line 2: 'No devices were found'"),
        ("A100, [N/A]\n", "line 1: 'A100, [N/A]'"),
        ("A100, 80 GiB\n", "line 1"),
        ("A100, -1\n", "line 1"),
        ("A100, 0\n", "line 1"),
        (", 1024\n", "line 1"),
        ("A100, 99999999999\n", "line 1"),
        ("A100, \uff13\uff12\n", "line 1"),  # full-width digits: isdigit() but not ASCII
    ],
)
def test_parse_rejects_garbage_naming_the_line(text: str, bad_line: str) -> None:
    with pytest.raises(CapacityError, match="unparsable nvidia-smi output on ") as caught:
        parse_nvidia_smi_csv(text)
    assert bad_line in str(caught.value)


def test_parse_rejects_a_model_name_an_announcement_cannot_carry() -> None:
    with pytest.raises(CapacityError, match="line 1: model name"):
        parse_nvidia_smi_csv("X" * 65 + ", 1024\n")


def test_parse_rejects_more_cards_of_one_model_than_an_announcement_carries() -> None:
    with pytest.raises(CapacityError, match="does not fit an announcement"):
        parse_nvidia_smi_csv("A100, 1\n" * 1025)


@pytest.mark.parametrize(
    ("text", "permille"),
    [("0\n", 0), ("100\n", 1000), ("37\n", 370), (" 10 \n30\n\n", 200), ("1\n2\n", 15)],
)
def test_utilisation_is_the_mean_in_permille(text: str, permille: int) -> None:
    assert parse_utilisation_csv(text) == permille


@pytest.mark.parametrize("text", ["", "\n", "[N/A]\n", "101\n", "-3\n", "50 %\n"])
def test_utilisation_garbage_is_an_error(text: str) -> None:
    with pytest.raises(CapacityError):
        parse_utilisation_csv(text)


def test_describe() -> None:
    assert describe(()) == "no GPUs"
    assert describe((*DECLARED, GpuSpec("A100", 1, 81_920))) == (
        "2 x RTX 4090 (24576 MiB), 1 x A100 (81920 MiB)"
    )


# ---------------------------------------------------------------------------------------------
# detection with a fake nvidia-smi binary


def test_nvidia_smi_mode_reports_what_the_binary_found(fake_smi: FakeSmi) -> None:
    smi = fake_smi(inventory_script(TWO_MODELS))
    report = detect_capacity("nvidia-smi", DECLARED, nvidia_smi=smi, use_nvml=False)
    assert report == CapacityReport(
        parse_nvidia_smi_csv(TWO_MODELS),
        "nvidia-smi",
        "nvidia-smi: 3 x NVIDIA H100 80GB HBM3 (81559 MiB), 1 x NVIDIA GeForce RTX 4090 "
        "(24564 MiB)",
    )


def test_auto_prefers_detected_gpus_over_declared(fake_smi: FakeSmi) -> None:
    smi = fake_smi(inventory_script("Tesla T4, 15360\n"))
    report = detect_capacity("auto", DECLARED, nvidia_smi=smi, use_nvml=False)
    assert (report.source, report.gpus) == ("nvidia-smi", (GpuSpec("Tesla T4", 1, 15_360),))


FAILURES = [
    # (script body, what the error says)
    (
        'echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."\n'
        "exit 9",
        "exited with code 9: \"NVIDIA-SMI has failed because it couldn't communicate",
    ),
    ("echo 'driver/library version mismatch' >&2; exit 18", "code 18: 'driver/library version"),
    ("exit 1", "exited with code 1: no output"),
    ("echo 'this is not csv at all'", "unparsable nvidia-smi output on line 1"),
    ("echo 'A100, 81920'; echo '%%garbage%%'", "line 2: '%%garbage%%'"),
    ("true", "ran but reported no GPUs"),
]


@pytest.mark.parametrize(("body", "cause"), FAILURES)
def test_nvidia_smi_mode_raises_naming_the_cause(fake_smi: FakeSmi, body: str, cause: str) -> None:
    with pytest.raises(CapacityError) as caught:
        detect_capacity("nvidia-smi", DECLARED, nvidia_smi=fake_smi(body), use_nvml=False)
    assert cause in str(caught.value)


@pytest.mark.parametrize(("body", "cause"), FAILURES)
def test_auto_falls_back_to_declared_saying_why(fake_smi: FakeSmi, body: str, cause: str) -> None:
    report = detect_capacity("auto", DECLARED, nvidia_smi=fake_smi(body), use_nvml=False)
    assert (report.source, report.gpus) == ("declared", DECLARED)
    assert report.detail.startswith("no GPUs detected (nvidia-smi: ")
    assert cause in report.detail
    assert report.detail.endswith("using declared: 2 x RTX 4090 (24576 MiB)")


def test_a_hung_nvidia_smi_times_out_without_waiting_for_it(fake_smi: FakeSmi) -> None:
    smi = fake_smi("sleep 5")  # the fake binary hangs; the test itself never sleeps
    started = time.monotonic()
    with pytest.raises(CapacityError, match=r"did not answer within 0\.5 s"):
        detect_capacity("nvidia-smi", (), nvidia_smi=smi, timeout_s=0.5, use_nvml=False)
    report = detect_capacity("auto", DECLARED, nvidia_smi=smi, timeout_s=0.5, use_nvml=False)
    assert report.source == "declared" and "did not answer within 0.5 s" in report.detail
    # Both calls return near their timeout: the hung script and its `sleep` child were killed
    # together, rather than the wait lasting until `sleep 5` let go of the pipes.
    assert time.monotonic() - started < 4.0


def test_a_missing_binary(tmp_path: Path) -> None:
    absent = str(tmp_path / "no-such-nvidia-smi")
    with pytest.raises(CapacityError, match="not found"):
        detect_capacity("nvidia-smi", (), nvidia_smi=absent, use_nvml=False)
    report = detect_capacity("auto", DECLARED, nvidia_smi=absent, use_nvml=False)
    assert report.source == "declared" and "not found" in report.detail


def test_a_binary_that_cannot_be_executed(tmp_path: Path) -> None:
    path = tmp_path / "nvidia-smi"
    path.write_text("#!/bin/sh\n", encoding="utf-8")
    path.chmod(0o644)
    with pytest.raises(CapacityError, match="cannot run"):
        detect_capacity("nvidia-smi", (), nvidia_smi=str(path), use_nvml=False)


def test_declared_mode_runs_nothing(tmp_path: Path) -> None:
    report = detect_capacity("declared", DECLARED, nvidia_smi=str(tmp_path / "absent"))
    assert report == CapacityReport(DECLARED, "declared", "declared: 2 x RTX 4090 (24576 MiB)")


def test_an_unknown_mode_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="detect mode"):
        detect_capacity("cuda", DECLARED)


def test_read_gpu_utilisation(fake_smi: FakeSmi, tmp_path: Path) -> None:
    ok = fake_smi('[ "$1" = "--query-gpu=utilization.gpu" ] || exit 64\nprintf "10\\n30\\n"')
    assert read_gpu_utilisation(nvidia_smi=ok) == 200
    assert read_gpu_utilisation(nvidia_smi=fake_smi("exit 3")) is None
    assert read_gpu_utilisation(nvidia_smi=fake_smi("echo '[N/A]'")) is None
    assert read_gpu_utilisation(nvidia_smi=str(tmp_path / "absent")) is None
    assert read_gpu_utilisation(nvidia_smi=fake_smi("sleep 5"), timeout_s=0.2) is None


# ---------------------------------------------------------------------------------------------
# NVML, through a fake pynvml module


class FakeNvml(types.ModuleType):
    """Just the pynvml calls detection makes; `fail` names the call that raises."""

    def __init__(self, devices: list[tuple[Any, int]], fail: str = "") -> None:
        super().__init__("pynvml")
        self.devices, self.fail, self.shut_down = devices, fail, False

    def _maybe_fail(self, call: str) -> None:
        if self.fail == call:
            raise RuntimeError(f"{call}: NVML_ERROR_DRIVER_NOT_LOADED")

    def nvmlInit(self) -> None:
        self._maybe_fail("init")

    def nvmlShutdown(self) -> None:
        self.shut_down = True

    def nvmlDeviceGetCount(self) -> int:
        self._maybe_fail("count")
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> Any:
        return self.devices[handle][0]

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return types.SimpleNamespace(total=self.devices[handle][1])


GIB = 1024**3


def test_auto_uses_nvml_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    nvml = FakeNvml([("NVIDIA A100-SXM4-80GB", 80 * GIB), (b"NVIDIA A100-SXM4-80GB", 80 * GIB)])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    report = detect_capacity("auto", DECLARED, nvidia_smi=str(tmp_path / "absent"))
    assert report.source == "nvml"
    assert report.gpus == (GpuSpec("NVIDIA A100-SXM4-80GB", 2, 81_920),)
    assert nvml.shut_down


def test_use_nvml_false_skips_it(monkeypatch: pytest.MonkeyPatch, fake_smi: FakeSmi) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([("A100", 80 * GIB)]))
    smi = fake_smi(inventory_script("Tesla T4, 15360\n"))
    assert detect_capacity("auto", (), nvidia_smi=smi, use_nvml=False).source == "nvidia-smi"


def test_nvidia_smi_mode_never_consults_nvml(
    monkeypatch: pytest.MonkeyPatch, fake_smi: FakeSmi
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([("A100", 80 * GIB)]))
    smi = fake_smi(inventory_script("Tesla T4, 15360\n"))
    assert detect_capacity("nvidia-smi", (), nvidia_smi=smi).source == "nvidia-smi"


@pytest.mark.parametrize(
    ("fail", "devices", "cause"),
    [
        ("init", [("A100", GIB)], "NVML: NVML did not initialise: init: NVML_ERROR_DRIVER"),
        ("count", [("A100", GIB)], "NVML: NVML query failed: count: NVML_ERROR_DRIVER"),
        ("", [], "NVML: NVML reported no GPUs"),
    ],
)
def test_auto_falls_back_from_nvml_to_nvidia_smi_then_declared(
    monkeypatch: pytest.MonkeyPatch,
    fake_smi: FakeSmi,
    tmp_path: Path,
    fail: str,
    devices: list[tuple[Any, int]],
    cause: str,
) -> None:
    nvml = FakeNvml(devices, fail)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    smi = fake_smi(inventory_script("Tesla T4, 15360\n"))
    assert detect_capacity("auto", DECLARED, nvidia_smi=smi).source == "nvidia-smi"
    report = detect_capacity("auto", DECLARED, nvidia_smi=str(tmp_path / "absent"))
    assert report.source == "declared"
    assert cause in report.detail and "nvidia-smi: " in report.detail
    assert nvml.shut_down or fail == "init"


def test_without_pynvml_auto_says_so() -> None:
    report = detect_capacity("auto", DECLARED, nvidia_smi="/nonexistent/nvidia-smi")
    assert "NVML: pynvml is not installed" in report.detail
