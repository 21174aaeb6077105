"""Who owns a run: real processes, alive, killed, and a pid that now belongs to another process."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from trainwise.tracking.liveness import TAG_HEARTBEAT, TAG_SUSPECT, Owner, confirmed_silent, is_remote, owner_gone, suspect_mark


def owner_tags(process: subprocess.Popen, **changes: object) -> dict[str, str]:
    me = Owner.this_process()
    owner = Owner(me.host, me.boot, process.pid, psutil.Process(process.pid).create_time(), me.pidns)
    tags = owner.tags()
    tags.update({k: str(v) for k, v in changes.items()})
    return tags


def test_a_live_owner_is_not_gone_and_a_killed_one_is() -> None:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tags = owner_tags(process)
        assert owner_gone(tags) is None
        process.kill()
        time.sleep(0.2)  # not yet reaped: a zombie is gone too
        assert "killed (SIGKILL" in (owner_gone(tags) or "")
        process.wait()
        assert "killed (SIGKILL" in (owner_gone(tags) or "")
    finally:
        process.kill()
        process.wait()


def test_a_recycled_pid_is_not_mistaken_for_the_owner() -> None:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tags = owner_tags(process, **{"trainwise.owner.started": f"{time.time() - 3600:.2f}"})  # the owner started an hour ago
        assert "belongs to another process" in (owner_gone(tags) or "")
    finally:
        process.kill()
        process.wait()


def test_another_hosts_owner_is_judged_by_its_heartbeat() -> None:
    tags = {**Owner("elsewhere", "other-boot", 1, time.time() - 1000).tags(), TAG_HEARTBEAT: f"{time.time() - 400:.0f}"}
    assert "no heartbeat" in (owner_gone(tags, timeout=300) or "")
    assert owner_gone(tags, timeout=600) is None
    tags[TAG_HEARTBEAT] = f"{time.time():.0f}"
    assert owner_gone(tags, timeout=300) is None


def test_another_boot_or_pid_namespace_is_judged_by_the_heartbeat_not_the_pid() -> None:
    me = Owner.this_process()
    # Our own pid, but from another boot or another container's pid namespace: not this process.
    for other in (Owner(me.host, "an-earlier-boot", me.pid, me.started, me.pidns), Owner(me.host, me.boot, me.pid, me.started, "other-ns")):
        tags = other.tags()
        assert is_remote(tags) and owner_gone(tags) is None  # a fresh heartbeat: alive as far as we can tell
        tags[TAG_HEARTBEAT] = f"{time.time() - 1000:.0f}"
        assert "no heartbeat" in (owner_gone(tags, timeout=300) or "")


def test_a_stale_heartbeat_is_confirmed_only_after_a_second_look() -> None:
    tags = {**Owner("elsewhere", "b", 1, 0.0).tags(), TAG_HEARTBEAT: "1000"}
    assert not confirmed_silent(tags)  # never marked
    tags[TAG_SUSPECT] = suspect_mark(tags)
    assert not confirmed_silent(tags)  # marked just now
    tags[TAG_SUSPECT] = f"1000@{time.time() - 3600:.0f}"
    assert confirmed_silent(tags)  # marked an hour ago, no beat since
    tags[TAG_HEARTBEAT] = f"{time.time():.0f}"
    assert not confirmed_silent(tags)  # it beat after the server came back: alive


def test_runs_without_an_owner_are_left_alone() -> None:
    assert owner_gone({"mlflow.user": "someone"}) is None
