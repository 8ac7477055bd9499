"""Takeovers of a stale run lock never remove a lock another run took meanwhile."""

import json
import os
import socket

from trgl_hf.training.run_lock import LOCK_FILE, RunLock


def dead_record() -> str:
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)  # a pid of this host that is no longer alive
    return json.dumps({"host": socket.gethostname(), "pid": child, "since": 0.0, "token": "dead"})


def test_a_second_takeover_of_the_same_stale_lock_leaves_the_new_owner_alone(tmp_path):
    stale = dead_record()
    (tmp_path / LOCK_FILE).write_text(stale)
    first, second = RunLock(tmp_path), RunLock(tmp_path)
    first.acquire()  # took over the dead run's lock and wrote its own
    second._remove(stale, "judged stale before the first run took over")  # the race: same judgement, later
    assert json.loads((tmp_path / LOCK_FILE).read_text())["token"] == first.token
    first.release()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_torn_lock_younger_than_the_grace_is_not_removed(tmp_path):
    (tmp_path / LOCK_FILE).write_text("")  # a run between creating its lock and writing it (no hard links)
    RunLock(tmp_path, grace=60.0)._remove("", "judged torn")
    assert (tmp_path / LOCK_FILE).exists()
