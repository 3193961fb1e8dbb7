"""Directories and secrets no other user may touch (servicekit.private_files), and where an instance keeps
its metrics (servicekit.metrics_files). The suite runs as root: a directory given to `nobody` plays one
that another user made first."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from servicekit import metrics_files, private_files, stack
from servicekit.private_files import UnsafePath, private_dir, write_private
from servicekit.settings import Settings

NOBODY = pwd.getpwnam("nobody")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def base(tmp_path) -> Path:
    path = tmp_path / "run"
    path.mkdir(mode=0o700)
    return path


def test_the_directory_is_made_0700_and_taken_again_when_it_is_this_users(base):
    path = private_dir(base / "metrics" / "logging-service-h-8081")
    assert mode(path) == 0o700 and mode(path.parent) == 0o700
    assert os.lstat(path).st_uid == os.geteuid()
    (path / "counter_1.db").write_bytes(b"kept")
    assert private_dir(path) == path and (path / "counter_1.db").exists()


def test_a_directory_another_user_made_first_is_refused_and_left_alone(base):
    path = base / "logging-service-h-8081"
    path.mkdir(mode=0o700)
    os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    with pytest.raises(UnsafePath, match=r"belongs to nobody \(uid \d+\), not to this user"):
        private_dir(path)
    assert os.lstat(path).st_uid == NOBODY.pw_uid and list(path.iterdir()) == []


def test_a_symlink_in_its_place_is_refused_and_its_target_untouched(base, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (base / "logging-service-h-8081").symlink_to(target)
    with pytest.raises(UnsafePath, match="is a symbolic link"):
        private_dir(base / "logging-service-h-8081")
    assert list(target.iterdir()) == []


def test_a_directory_others_may_enter_is_refused(base):
    path = base / "logging-service-h-8081"
    path.mkdir(mode=0o755)
    path.chmod(0o755)
    with pytest.raises(UnsafePath, match="mode 0755, not 0700"):
        private_dir(path)


def test_a_parent_others_may_write_to_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # as /tmp: anyone could swap the directory for one of theirs
    with pytest.raises(UnsafePath, match="the parent of the directory .* is writable by others"):
        private_dir(shared / "logging-service-h-8081")
    assert list(shared.iterdir()) == []


def test_a_secret_is_0600_before_it_has_its_name_and_whole_when_it_has_it(tmp_path, monkeypatch):
    path = tmp_path / "acl.json"
    seen = []
    replace = os.replace

    def looking(src, dst):
        seen.append((mode(Path(src)), Path(src).read_text(), Path(dst).exists()))
        replace(src, dst)

    monkeypatch.setattr(private_files.os, "replace", looking)
    write_private(path, '{"management": "s3cret"}')
    assert seen == [(0o600, '{"management": "s3cret"}', False)]
    assert mode(path) == 0o600 and path.read_text() == '{"management": "s3cret"}'
    assert [p.name for p in tmp_path.iterdir()] == ["acl.json"]


def test_a_secret_is_given_to_its_user_before_it_has_its_name(tmp_path):
    path = tmp_path / "logging.token"
    write_private(path, "token", uid=NOBODY.pw_uid, gid=NOBODY.pw_gid)
    assert (os.lstat(path).st_uid, os.lstat(path).st_gid, mode(path)) == (NOBODY.pw_uid, NOBODY.pw_gid, 0o600)


def test_an_instance_keeps_its_metrics_under_the_run_directory_not_in_tmp(tmp_path):
    settings = Settings.from_env("logging-service", 8081, env={"INSTANCE_HOST": "h"})
    default = metrics_files.directory(settings, env={})
    assert default == stack.ROOT / "run" / "metrics" / "logging-service-h-8081"
    # Under the checkout's run directory, wherever the checkout is (CI clones it into /tmp): never in a
    # directory every local user shares.
    assert default.parent.parent == stack.ROOT / "run"
    moved = metrics_files.directory(settings, env={"STACK_RUN_DIR": str(tmp_path)})
    assert moved == tmp_path / "metrics" / "logging-service-h-8081"
    chosen = metrics_files.directory(settings, env={"METRICS_DIR": str(tmp_path / "m")})
    assert chosen == tmp_path / "m" / "logging-service-h-8081"
