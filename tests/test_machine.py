"""Machine facts read from fake /proc and /sys trees: threads under affinity and cgroup quotas, AMX, memory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from edgeeval.engine import machine
from edgeeval.engine.machine import (available_memory_bytes, cgroup_cpu_limit, cgroup_memory_room, cpu_has_amx,
                                     cpu_model, default_threads, physical_cores, usable_cpus)

GIB = 1024**3


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def fake_host(root: Path, cores: list[tuple[int, int]], flags: str = "fpu sse avx2",
              sysfs_topology: bool = True) -> tuple[Path, Path]:
    """root/proc and root/sys of a host whose logical CPU n sits on core `cores[n]` = (package, core id)."""
    proc, sysfs = root / "proc", root / "sys"
    blocks = [f"processor\t: {n}\nmodel name\t: Test CPU @ 2.0GHz\nphysical id\t: {package}\n"
              f"core id\t\t: {core}\nflags\t\t: {flags}\n" for n, (package, core) in enumerate(cores)]
    write(proc / "cpuinfo", "\n".join(blocks))
    if sysfs_topology:
        for n, (package, core) in enumerate(cores):
            topology = sysfs / "devices" / "system" / "cpu" / f"cpu{n}" / "topology"
            write(topology / "physical_package_id", f"{package}\n")
            write(topology / "core_id", f"{core}\n")
    return proc, sysfs


def hyper_threaded(n_cores: int, packages: int = 1) -> list[tuple[int, int]]:
    """Linux numbering: the first thread of every core, then their siblings."""
    first = [(p, c) for p in range(packages) for c in range(n_cores // packages)]
    return first + first


def every_cpu(cores: list) -> frozenset[int]:
    return frozenset(range(len(cores)))


# --- threads ------------------------------------------------------------------------------------------------


def test_a_container_limited_to_two_cpus_of_a_64_core_host_gets_two_threads(tmp_path):
    cores = hyper_threaded(32, packages=2)  # 64 logical CPUs
    proc, sysfs = fake_host(tmp_path, cores)
    write(proc / "self" / "cgroup", "0::/\n")
    write(sysfs / "fs" / "cgroup" / "cpu.max", "200000 100000\n")
    assert physical_cores(every_cpu(cores), proc, sysfs) == 32
    assert cgroup_cpu_limit(proc, sysfs) == 2
    assert usable_cpus(every_cpu(cores), proc, sysfs) == 2
    assert default_threads(every_cpu(cores), proc, sysfs) == 2


def test_physical_cores_are_counted_within_the_affinity_set(tmp_path):
    cores = hyper_threaded(4)  # CPUs 0-3 are cores 0-3, CPUs 4-7 their hyper-thread siblings
    proc, sysfs = fake_host(tmp_path, cores)
    assert physical_cores(every_cpu(cores), proc, sysfs) == 4
    assert physical_cores(frozenset({0, 4}), proc, sysfs) == 1  # a core and its sibling: one core
    assert physical_cores(frozenset({0, 1}), proc, sysfs) == 2
    assert default_threads(frozenset({0, 4, 1}), proc, sysfs) == 2
    assert usable_cpus(frozenset({0, 4, 1}), proc, sysfs) == 3  # no quota: every CPU of the affinity set


def test_hyper_thread_siblings_count_once_from_cpuinfo_alone(tmp_path):
    cores = hyper_threaded(2, packages=2)  # two packages with one core each, both hyper-threaded
    proc, sysfs = fake_host(tmp_path, cores, sysfs_topology=False)
    assert physical_cores(every_cpu(cores), proc, sysfs) == 2
    assert physical_cores(frozenset({1, 3}), proc, sysfs) == 1


def test_sysfs_topology_tells_the_dies_of_a_package_apart(tmp_path):
    proc, sysfs = fake_host(tmp_path, [(0, 0), (0, 0)])
    write(sysfs / "devices" / "system" / "cpu" / "cpu1" / "topology" / "die_id", "1\n")
    assert physical_cores(frozenset({0, 1}), proc, sysfs) == 2


def test_cgroup_v2_quota(tmp_path):
    proc, sysfs = fake_host(tmp_path, hyper_threaded(8))
    cpu_max = sysfs / "fs" / "cgroup" / "cpu.max"
    for text, cpus in (("200000 100000", 2), ("150000 100000", 2), ("50000 100000", 1), ("max 100000", None),
                       ("", None), ("garbage", None), ("0 100000", None)):
        write(cpu_max, text + "\n")
        assert cgroup_cpu_limit(proc, sysfs) == cpus, text
    write(cpu_max, "max 100000\n")
    assert default_threads(every_cpu(hyper_threaded(8)), proc, sysfs) == 8
    assert usable_cpus(every_cpu(hyper_threaded(8)), proc, sysfs) == 16


def test_cgroup_v2_quota_of_an_ancestor_applies(tmp_path):
    proc, sysfs = fake_host(tmp_path, hyper_threaded(8))
    write(proc / "self" / "cgroup", "0::/system.slice/edgeeval.service\n")
    cgroup = sysfs / "fs" / "cgroup"
    write(cgroup / "system.slice" / "cpu.max", "300000 100000\n")
    write(cgroup / "system.slice" / "edgeeval.service" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(proc, sysfs) == 3


def test_cgroup_v1_quota(tmp_path):
    proc, sysfs = fake_host(tmp_path, hyper_threaded(8))
    write(proc / "self" / "cgroup", "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    group = sysfs / "fs" / "cgroup" / "cpu,cpuacct" / "docker" / "abc"
    write(group / "cpu.cfs_quota_us", "300000\n")
    write(group / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(proc, sysfs) == 3
    assert default_threads(every_cpu(hyper_threaded(8)), proc, sysfs) == 3
    write(group / "cpu.cfs_quota_us", "-1\n")  # v1's "no quota"
    assert cgroup_cpu_limit(proc, sysfs) is None


def test_cgroup_v1_quota_of_the_root_when_the_path_is_not_mounted_here(tmp_path):
    # A container without a cgroup namespace sees the host's path in /proc/self/cgroup but its own
    # cgroup mounted at the root.
    proc, sysfs = fake_host(tmp_path, hyper_threaded(8))
    write(proc / "self" / "cgroup", "3:cpu:/kubepods/pod1/abc\n")
    write(sysfs / "fs" / "cgroup" / "cpu" / "cpu.cfs_quota_us", "400000\n")
    write(sysfs / "fs" / "cgroup" / "cpu" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(proc, sysfs) == 4


def test_missing_files_fall_back_to_the_affinity_set(tmp_path):
    proc, sysfs = tmp_path / "proc", tmp_path / "sys"  # nothing there at all
    assert physical_cores(frozenset({0, 1, 2}), proc, sysfs) == 3
    assert cgroup_cpu_limit(proc, sysfs) is None
    assert usable_cpus(frozenset({0, 1, 2}), proc, sysfs) == 3
    assert default_threads(frozenset({0, 1, 2}), proc, sysfs) == 3
    assert default_threads(frozenset(), proc, sysfs) == 1
    assert cpu_has_amx(proc) is False
    assert cpu_model(proc)  # the platform module's name
    assert available_memory_bytes(proc, sysfs) is None or available_memory_bytes(proc, sysfs) > 0


def test_this_machine_gives_sane_numbers():
    affinity = os.sched_getaffinity(0)
    assert 1 <= default_threads() <= usable_cpus() <= len(affinity)
    assert machine.machine_info()["usable_cpus"] == usable_cpus()
    assert available_memory_bytes() > 0


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 3)), min_size=1, max_size=12), st.data())
def test_physical_cores_is_the_number_of_distinct_cores_in_the_affinity_set(cores, data):
    affinity = frozenset(data.draw(st.sets(st.integers(0, len(cores) - 1), min_size=1)))
    with tempfile.TemporaryDirectory() as tmp:
        for sysfs_topology in (True, False):
            proc, sysfs = fake_host(Path(tmp) / str(sysfs_topology), cores, sysfs_topology=sysfs_topology)
            assert physical_cores(affinity, proc, sysfs) == len({cores[cpu] for cpu in affinity})


# --- CPU features ---------------------------------------------------------------------------------------------


def test_amx_detection(tmp_path):
    proc, _ = fake_host(tmp_path / "a", [(0, 0)], flags="fpu avx512f amx_bf16 amx_tile amx_int8")
    assert cpu_has_amx(proc) is True
    assert cpu_model(proc) == "Test CPU @ 2.0GHz"
    proc, _ = fake_host(tmp_path / "b", [(0, 0)], flags="fpu avx512f avx512_bf16 examx")
    assert cpu_has_amx(proc) is False


# --- memory ---------------------------------------------------------------------------------------------------


def test_memory_is_the_smaller_of_meminfo_and_the_cgroup_room(tmp_path):
    proc, sysfs = tmp_path / "proc", tmp_path / "sys"
    write(proc / "meminfo", f"MemTotal: {16 * GIB // 1024} kB\nMemAvailable: {8 * GIB // 1024} kB\n")
    assert available_memory_bytes(proc, sysfs) == 8 * GIB
    cgroup = sysfs / "fs" / "cgroup"
    write(proc / "self" / "cgroup", "0::/job\n")
    write(cgroup / "job" / "memory.max", f"{3 * GIB}\n")
    write(cgroup / "job" / "memory.current", f"{GIB}\n")
    assert cgroup_memory_room(proc, sysfs) == 2 * GIB
    assert available_memory_bytes(proc, sysfs) == 2 * GIB
    write(cgroup / "job" / "memory.max", "max\n")
    assert available_memory_bytes(proc, sysfs) == 8 * GIB


def test_memory_under_cgroup_v1(tmp_path):
    proc, sysfs = tmp_path / "proc", tmp_path / "sys"
    write(proc / "meminfo", f"MemAvailable: {8 * GIB // 1024} kB\n")
    write(proc / "self" / "cgroup", "4:memory:/process_api/abc\n")
    group = sysfs / "fs" / "cgroup" / "memory" / "process_api" / "abc"
    write(group / "memory.limit_in_bytes", "9223372036854771712\n")  # v1's "no limit"
    write(group / "memory.usage_in_bytes", f"{GIB}\n")
    assert cgroup_memory_room(proc, sysfs) is None
    write(group.parent / "memory.limit_in_bytes", f"{2 * GIB}\n")
    write(group.parent / "memory.usage_in_bytes", f"{GIB // 2}\n")
    assert available_memory_bytes(proc, sysfs) == GIB + GIB // 2
