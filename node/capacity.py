"""What GPUs this node really has: NVML, then `nvidia-smi`, then what the config declares.

Detection sits at the edge (it runs a subprocess or loads a driver library); everything it
reads goes through pure parsers (`parse_nvidia_smi_csv`, `parse_utilisation_csv`) so the odd
outputs seen in the wild can be tested on canned text. The report says where the inventory
came from, because peers weigh a "declared" inventory (unverified) below a detected one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from p2p.announcements import GpuSpec
from p2p.errors import InvalidRecord

DETECT_MODES = ("auto", "nvidia-smi", "declared")
"""auto: NVML or nvidia-smi if they find GPUs, else the declared list; nvidia-smi: the
binary must find GPUs (an error otherwise); declared: trust the config (tests, CPU boxes)."""

SOURCES = ("nvml", "nvidia-smi", "declared")
INVENTORY_QUERY = ("--query-gpu=name,memory.total", "--format=csv,noheader,nounits")
UTILISATION_QUERY = ("--query-gpu=utilization.gpu", "--format=csv,noheader,nounits")
MODEL_BYTES_MAX = 64
"""What an announcement's GpuSpec.model may carry (p2p.announcements), like the two below."""
GPU_COUNT_MAX = 1024
GPU_MEMORY_MIB_MAX = 2**24
_REAP_TIMEOUT_S = 2.0
_SHOWN_CHARS_MAX = 200


class CapacityError(Exception):
    """GPU detection failed; the message names the cause (missing binary, exit code, timeout,
    the output line that did not parse)."""


@dataclass(frozen=True)
class CapacityReport:
    """The inventory the node will announce, where it came from, and a line for the logs."""

    gpus: tuple[GpuSpec, ...]
    source: str
    """"nvml", "nvidia-smi" or "declared"."""
    detail: str


# ---------------------------------------------------------------------------------------------
# pure parsing


def parse_nvidia_smi_csv(text: str) -> tuple[GpuSpec, ...]:
    """Parse `nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits`.

    One line per GPU ("NVIDIA GeForce RTX 4090, 24564"); blank lines are skipped. Identical
    model names are grouped into one GpuSpec (an announcement lists each model once), keeping
    the smallest memory seen so the node never promises more than its weakest card has.
    Raises CapacityError naming the first line that does not parse.
    """
    memory: dict[str, int] = {}
    count: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        model, mib = _parse_inventory_line(line, number)
        memory[model] = min(mib, memory.get(model, mib))
        count[model] = count.get(model, 0) + 1
    try:
        return tuple(GpuSpec(model, count[model], memory[model]) for model in count)
    except InvalidRecord as exc:  # e.g. more cards of one model than an announcement carries
        raise CapacityError(f"nvidia-smi output does not fit an announcement: {exc}") from None


def _parse_inventory_line(line: str, number: int) -> tuple[str, int]:
    name, sep, mib_text = line.rpartition(",")
    model = name.strip()
    mib = _parse_uint(mib_text)
    if not sep or not model or mib is None or not 1 <= mib <= GPU_MEMORY_MIB_MAX:
        raise CapacityError(f"unparsable nvidia-smi output on line {number}: {_show(line)}")
    if len(model.encode()) > MODEL_BYTES_MAX or not model.isprintable():
        raise CapacityError(
            f"nvidia-smi line {number}: model name {_show(model)} is not printable text "
            f"of at most {MODEL_BYTES_MAX} bytes"
        )
    return model, mib


def parse_utilisation_csv(text: str) -> int:
    """Parse `nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits` (one
    percentage per GPU) into the mean utilisation in permille, the unit announcements use."""
    percents: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        value = _parse_uint(line)
        if value is None or value > 100:
            raise CapacityError(f"unparsable utilisation on line {number}: {_show(line)}")
        percents.append(value)
    if not percents:
        raise CapacityError("nvidia-smi reported no GPUs")
    return (sum(percents) * 10 + len(percents) // 2) // len(percents)


def _parse_uint(text: str) -> int | None:
    stripped = text.strip()
    return int(stripped) if stripped.isascii() and stripped.isdigit() else None


def describe(gpus: Sequence[GpuSpec]) -> str:
    """'2 x RTX 4090 (24576 MiB), 1 x A100 (81920 MiB)' or 'no GPUs', for logs and tables."""
    if not gpus:
        return "no GPUs"
    return ", ".join(f"{g.count} x {g.model} ({g.memory_mib} MiB)" for g in gpus)


def _show(text: str) -> str:
    return repr(text if len(text) <= _SHOWN_CHARS_MAX else text[:_SHOWN_CHARS_MAX] + "...")


# ---------------------------------------------------------------------------------------------
# detection (I/O)


def detect_capacity(
    mode: str,
    declared: Sequence[GpuSpec],
    *,
    nvidia_smi: str = "nvidia-smi",
    timeout_s: float = 5.0,
    use_nvml: bool = True,
) -> CapacityReport:
    """The inventory to announce, per the config's `capacity.detect` mode.

    "auto" tries NVML (if `pynvml` is installed and `use_nvml`), then the nvidia-smi binary,
    and falls back to `declared` with a detail saying why. "nvidia-smi" uses only the binary
    and raises CapacityError if it finds nothing: an operator who asked for detection would
    rather not start than announce an inventory nobody checked. Tests pass `use_nvml=False`
    and a fake binary so the machine's own GPUs never leak in.
    """
    if mode not in DETECT_MODES:
        raise ValueError(f"detect mode must be one of {DETECT_MODES}, got {mode!r}")
    declared_gpus = tuple(declared)
    if mode == "declared":
        return CapacityReport(declared_gpus, "declared", f"declared: {describe(declared_gpus)}")
    if mode == "nvidia-smi":
        gpus = _detect_nvidia_smi(nvidia_smi, timeout_s)
        return CapacityReport(gpus, "nvidia-smi", f"nvidia-smi: {describe(gpus)}")
    return _detect_auto(declared_gpus, nvidia_smi, timeout_s, use_nvml)


def _detect_auto(
    declared: tuple[GpuSpec, ...], nvidia_smi: str, timeout_s: float, use_nvml: bool
) -> CapacityReport:
    reasons: list[str] = []
    if use_nvml:
        try:
            gpus = _detect_nvml()
            return CapacityReport(gpus, "nvml", f"NVML: {describe(gpus)}")
        except CapacityError as exc:
            reasons.append(f"NVML: {exc}")
    try:
        gpus = _detect_nvidia_smi(nvidia_smi, timeout_s)
        return CapacityReport(gpus, "nvidia-smi", f"nvidia-smi: {describe(gpus)}")
    except CapacityError as exc:
        reasons.append(f"nvidia-smi: {exc}")
    detail = f"no GPUs detected ({'; '.join(reasons)}); using declared: {describe(declared)}"
    return CapacityReport(declared, "declared", detail)


def _detect_nvidia_smi(nvidia_smi: str, timeout_s: float) -> tuple[GpuSpec, ...]:
    gpus = parse_nvidia_smi_csv(run_nvidia_smi(nvidia_smi, INVENTORY_QUERY, timeout_s))
    if not gpus:
        raise CapacityError(f"{nvidia_smi} ran but reported no GPUs")
    return gpus


def _detect_nvml() -> tuple[GpuSpec, ...]:
    """Ask the driver through NVML: no subprocess, and it is what nvidia-smi uses anyway."""
    try:
        import pynvml
    except ImportError:
        raise CapacityError("pynvml is not installed") from None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # pynvml raises its own NVMLError family, or OSError
        raise CapacityError(f"NVML did not initialise: {exc}") from None
    try:
        lines = [_nvml_line(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception as exc:
        raise CapacityError(f"NVML query failed: {exc}") from None
    finally:
        _nvml_shutdown(pynvml)
    gpus = parse_nvidia_smi_csv("\n".join(lines))
    if not gpus:
        raise CapacityError("NVML reported no GPUs")
    return gpus


def _nvml_line(pynvml: Any, index: int) -> str:
    """One GPU as a line of nvidia-smi's CSV, so both sources share one parser."""
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    name = pynvml.nvmlDeviceGetName(handle)
    if isinstance(name, bytes):  # older pynvml returns bytes
        name = name.decode("utf-8", "replace")
    total_bytes = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
    return f"{name}, {total_bytes // (1024 * 1024)}"


def _nvml_shutdown(pynvml: Any) -> None:
    with contextlib.suppress(Exception):  # nothing useful to do if the driver will not let go
        pynvml.nvmlShutdown()


def read_gpu_utilisation(*, nvidia_smi: str = "nvidia-smi", timeout_s: float = 5.0) -> int | None:
    """Mean GPU utilisation in permille for the node's load figure, or None when it cannot be
    read: load is advisory, so a missing or broken nvidia-smi must not stop the node."""
    try:
        return parse_utilisation_csv(run_nvidia_smi(nvidia_smi, UTILISATION_QUERY, timeout_s))
    except CapacityError:
        return None


def run_nvidia_smi(nvidia_smi: str, args: Sequence[str], timeout_s: float) -> str:
    """Run the binary and return its stdout; every failure becomes a CapacityError saying why.

    It runs in its own session so that on timeout the whole process group is killed: a hung
    driver call must not leave a child holding our pipes open (which would make the wait
    outlast the timeout).
    """
    try:
        proc = subprocess.Popen(
            [nvidia_smi, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
        )
    except FileNotFoundError:
        raise CapacityError(f"{nvidia_smi!r} not found") from None
    except OSError as exc:
        raise CapacityError(f"cannot run {nvidia_smi!r}: {exc.strerror or exc}") from None
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise CapacityError(f"{nvidia_smi!r} did not answer within {timeout_s:g} s") from None
    if proc.returncode != 0:
        said = _first_line(err) or _first_line(out) or "no output"
        raise CapacityError(f"{nvidia_smi!r} exited with code {proc.returncode}: {said}")
    return out


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.communicate(timeout=_REAP_TIMEOUT_S)
    except subprocess.TimeoutExpired:  # a grandchild escaped the group; stop waiting on it
        proc.kill()
        proc.wait()


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return _show(line.strip())
    return ""
