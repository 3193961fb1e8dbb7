"""The front door's configuration for one facade (stackctl/front_door.py over conf/nginx.conf.tmpl)."""

from __future__ import annotations

import subprocess

from stackctl import front_door


def test_a_facade_on_a_host_address_gets_nginx_on_it_and_on_loopback_passing_to_gunicorn_on_loopback(tmp_path):
    env = {"SERVICE_HOST": "127.100.0.21", "APP_PORT": "12080", "MAX_BODY_BYTES": "1000"}
    door = front_door.for_facade(8080, tmp_path / "nginx", env=env)
    assert list(door.listen) == ["127.100.0.21:8080", "127.0.0.1:8080"]
    assert door.upstream == "127.0.0.1:12080"
    config = door.config()
    assert "listen 127.100.0.21:8080;" in config and "listen 127.0.0.1:8080;" in config
    assert "server 127.0.0.1:12080;" in config
    assert "client_max_body_size 1000;" in config
    assert f"pid {tmp_path / 'nginx'}/nginx.pid;" in config
    assert "/var/lib/nginx" not in config and "/run/" not in config


def test_the_gunicorn_behind_a_facade_listens_2000_above_its_port_by_default(tmp_path):
    assert front_door.for_facade(8080, tmp_path, env={}).upstream == "127.0.0.1:10080"


def test_nginx_accepts_the_rendered_configuration(tmp_path):
    door = front_door.for_facade(18080, tmp_path / "nginx", env={"APP_PORT": "18081"})
    door.write()
    done = subprocess.run([*door.command(), "-t"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
