"""CPU and memory facts of this machine, as a process in its container sees them: threads, AMX, memory.

A container limited to 2 CPUs of a 64-core host still reports 64 in /proc/cpuinfo and os.cpu_count();
what it may use is its CPU affinity (cpuset, taskset) and its cgroup CPU quota. llama.cpp with more
threads than that waits at every step for threads that are not running, so every count here is of the
CPUs this process may use. Each reader takes the roots of /proc and /sys so tests can hand it a fake tree.
"""

from __future__ import annotations

import math
import os
import platform
import sys
from pathlib import Path
from typing import Any

PROC = Path("/proc")
SYSFS = Path("/sys")


def affinity_cpus() -> frozenset[int]:
    """The logical CPUs this process may run on (its affinity mask: cpuset, taskset)."""
    if hasattr(os, "sched_getaffinity"):
        return frozenset(os.sched_getaffinity(0))
    return frozenset(range(os.cpu_count() or 1))


def cgroup_cpu_limit(proc: Path = PROC, sysfs: Path = SYSFS) -> int | None:
    """CPUs the cgroup CPU quota allows, rounded up (cgroup v2 cpu.max, v1 cpu.cfs_quota_us); the
    tightest of this process's cgroup and its ancestors. None when there is no quota or it is unknown."""
    limits = []
    for directory in _cgroup_dirs("cpu", proc, sysfs):
        quota_period = _read_words(directory / "cpu.max")  # v2: "quota period" or "max period"
        if quota_period is None:
            quota_period = (_read_words(directory / "cpu.cfs_quota_us") or []) + \
                           (_read_words(directory / "cpu.cfs_period_us") or [])  # v1: quota -1 = none
        limits.append(_quota_cpus(quota_period))
    known = [limit for limit in limits if limit is not None]
    return min(known) if known else None


def usable_cpus(affinity: frozenset[int] | None = None, proc: Path = PROC, sysfs: Path = SYSFS) -> int:
    """Logical CPUs this process can keep busy at once: its affinity, capped by the cgroup quota."""
    count = len(affinity if affinity is not None else affinity_cpus()) or 1
    quota = cgroup_cpu_limit(proc, sysfs)
    return max(1, min(count, quota) if quota is not None else count)


def physical_cores(affinity: frozenset[int] | None = None, proc: Path = PROC, sysfs: Path = SYSFS) -> int:
    """Physical cores among the CPUs this process may run on (hyper-thread siblings count once).
    A CPU whose topology is unknown counts as a core of its own."""
    cpus = affinity if affinity is not None else affinity_cpus()
    from_cpuinfo = _cpuinfo_cores(proc)
    return max(1, len({_core_of(cpu, sysfs, from_cpuinfo) for cpu in cpus}))


def default_threads(affinity: frozenset[int] | None = None, proc: Path = PROC, sysfs: Path = SYSFS) -> int:
    """llama.cpp threads when none are asked for: one per physical core this process may use (hyper-threads
    make llama.cpp slower), and no more than the cgroup quota lets run at once."""
    cores = physical_cores(affinity, proc, sysfs)
    quota = cgroup_cpu_limit(proc, sysfs)
    return max(1, min(cores, quota) if quota is not None else cores)


def cpu_has_amx(proc: Path = PROC) -> bool:
    """Intel AMX (amx_tile, amx_int8, ...): llama.cpp's weight repacking crashes llama_decode there."""
    return any(flag.startswith("amx") for block in _cpuinfo_blocks(proc) for flag in block.get("flags", "").split())


def cpu_model(proc: Path = PROC) -> str:
    """The CPU's name as /proc/cpuinfo gives it, else what the platform module knows."""
    for block in _cpuinfo_blocks(proc):
        if block.get("model name"):
            return block["model name"]
    return platform.processor() or platform.machine()


def machine_info(proc: Path = PROC, sysfs: Path = SYSFS) -> dict[str, Any]:
    """The machine's entry in a run's manifest."""
    return {"platform": platform.platform(), "python": sys.version.split()[0], "cpu": cpu_model(proc),
            "machine": platform.machine(), "usable_cpus": usable_cpus(proc=proc, sysfs=sysfs),
            "physical_cores": physical_cores(proc=proc, sysfs=sysfs)}


def available_memory_bytes(proc: Path = PROC, sysfs: Path = SYSFS) -> int | None:
    """Memory this process could still get: MemAvailable, or less under a cgroup (container) limit."""
    available = _meminfo_available(proc)
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    room = cgroup_memory_room(proc, sysfs)
    return min(available, room) if room is not None else available


def cgroup_memory_room(proc: Path = PROC, sysfs: Path = SYSFS) -> int | None:
    """Bytes left under the cgroup memory limits of this process and its ancestors (v2 memory.max,
    v1 memory.limit_in_bytes); None when unlimited or unknown."""
    rooms = []
    for directory in _cgroup_dirs("memory", proc, sysfs):
        for limit_file, usage_file in (("memory.max", "memory.current"),
                                       ("memory.limit_in_bytes", "memory.usage_in_bytes")):
            limit, usage = _read_words(directory / limit_file), _read_words(directory / usage_file)
            # v1 writes "no limit" as a huge number (9223372036854771712), v2 as "max".
            if limit and usage and limit[0].isdigit() and usage[0].isdigit() and int(limit[0]) < 2**60:
                rooms.append(max(0, int(limit[0]) - int(usage[0])))
    return min(rooms) if rooms else None


def _meminfo_available(proc: Path) -> int | None:
    try:
        with open(proc / "meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        pass
    return None


def _cgroup_dirs(controller: str, proc: Path, sysfs: Path) -> list[Path]:
    """Directories whose `controller` limits apply to this process: its own cgroup and every ancestor,
    under cgroup v2 (unified) and v1 alike. Without /proc/self/cgroup, the roots only. A path that
    is not mounted here (a container seeing the host's path) is skipped; its ancestors still count."""
    root = sysfs / "fs" / "cgroup"
    try:
        lines = (proc / "self" / "cgroup").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    paths = {} if lines else {root: "/", root / controller: "/"}
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if not controllers:
            paths[root] = path  # v2: "0::/path"
        elif controller in controllers.split(","):
            paths[root / controller] = path  # v1: "4:memory:/path", mounted at /sys/fs/cgroup/memory
            paths[root / controllers] = path  # ... or at /sys/fs/cgroup/cpu,cpuacct
    dirs = []
    for mount, path in paths.items():
        parts = [part for part in path.split("/") if part and part != ".."]
        dirs += [mount.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


def _quota_cpus(quota_period: list[str]) -> int | None:
    """ceil(quota / period) from ["200000", "100000"]; None for "max", -1, or anything unreadable."""
    try:
        quota, period = int(quota_period[0]), int(quota_period[1])
    except (IndexError, ValueError):
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def _read_words(path: Path) -> list[str] | None:
    try:
        return path.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError):
        return None


def _cpuinfo_blocks(proc: Path) -> list[dict[str, str]]:
    """/proc/cpuinfo as one dict per logical CPU ("processor" block)."""
    try:
        text = (proc / "cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    blocks = []
    for chunk in text.split("\n\n"):
        block = {}
        for line in chunk.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                block[key.strip()] = value.strip()
        if block:
            blocks.append(block)
    return blocks


def _cpuinfo_cores(proc: Path) -> dict[int, tuple[str, ...]]:
    """Logical CPU -> (physical id, core id) from /proc/cpuinfo, for CPUs that say both."""
    cores: dict[int, tuple[str, ...]] = {}
    for block in _cpuinfo_blocks(proc):
        if block.get("processor", "").isdigit() and "core id" in block:
            cores[int(block["processor"])] = ("cpuinfo", block.get("physical id", "0"), block["core id"])
    return cores


def _core_of(cpu: int, sysfs: Path, from_cpuinfo: dict[int, tuple[str, ...]]) -> tuple[object, ...]:
    """The physical core a logical CPU belongs to: sysfs topology first (package, die, core),
    then /proc/cpuinfo, else the CPU itself."""
    topology = sysfs / "devices" / "system" / "cpu" / f"cpu{cpu}" / "topology"
    package, core = _read_words(topology / "physical_package_id"), _read_words(topology / "core_id")
    if package and core:
        die = _read_words(topology / "die_id") or ["0"]  # core ids may repeat across the dies of a package
        return ("sysfs", package[0], die[0], core[0])
    return from_cpuinfo.get(cpu, ("cpu", cpu))
