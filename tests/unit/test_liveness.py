"""Who owns a run: real processes, alive, killed, and a pid that now belongs to another process."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from trainwise.tracking.liveness import TAG_HEARTBEAT, Owner, owner_gone


def owner_tags(process: subprocess.Popen, **changes: object) -> dict[str, str]:
    me = Owner.this_process()
    owner = Owner(me.host, me.boot, process.pid, psutil.Process(process.pid).create_time())
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


def test_the_same_host_after_a_reboot_has_lost_the_owner() -> None:
    me = Owner.this_process()
    tags = Owner(me.host, "an-earlier-boot", me.pid, me.started).tags()  # even our own pid: it is another boot's
    assert "restarted" in (owner_gone(tags) or "")


def test_runs_without_an_owner_are_left_alone() -> None:
    assert owner_gone({"mlflow.user": "someone"}) is None
