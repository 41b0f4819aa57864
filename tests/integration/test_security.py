"""Security by default: Redis AUTH and TLS from REDIS_URL, no secrets leaking into jobs or files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from support import Node, RedisServer, conductor, free_port, node_config, wait_until

SECRET = "s3cret-pw#1"
DUMP_ENV = "#!/bin/bash\nenv\n"


class ExtraRedis(RedisServer):
    """A redis-server with extra arguments (AUTH, TLS) and a URL to match."""

    def __init__(self, directory: Path, url: str, port: int, extra: tuple[str, ...], ping_args: dict) -> None:
        super().__init__(directory, extra=extra)
        self.port = port
        self._url = url
        self._ping_args = ping_args

    @property
    def url(self) -> str:
        return self._url

    def _answers(self) -> bool:
        from redis import Redis

        try:
            return bool(Redis.from_url(self._url, **self._ping_args).ping())
        except Exception:
            return False

    def client(self):
        from redis import Redis

        return Redis.from_url(self._url, decode_responses=True)


def run_a_job(tmp_path: Path, server: RedisServer) -> str:
    node = Node(tmp_path / "node", server, WORKER_CONCURRENCY=1, API_TOKEN="api-token-value")
    try:
        node.start_workers(1)
        job_id = node.submit(DUMP_ENV)
        node.wait_state(job_id, "COMPLETED")
        return (node.directory / "jobs" / str(job_id) / f"slurm-{job_id}.out").read_text()
    finally:
        node.stop()


@pytest.mark.reliability("security: Redis AUTH, secrets kept from jobs and output")
def test_redis_auth_works_and_the_password_never_reaches_jobs_or_output(tmp_path):
    port = free_port()
    server = ExtraRedis(tmp_path / "redis", f"redis://:{SECRET.replace('#', '%23')}@127.0.0.1:{port}/0", port,
                        ("--requirepass", SECRET), {})
    (tmp_path / "node").mkdir()
    server.start()
    try:
        output = run_a_job(tmp_path, server)
        assert SECRET not in output and "s3cret" not in output and "api-token-value" not in output
        check = conductor("check", config=tmp_path / "node" / "app.properties").stdout
        assert "s3cret" not in check and "api-token-value" not in check
        wrong = node_config(tmp_path / "node", server, REDIS_URL=f"redis://:wrong-pw@127.0.0.1:{port}/0")
        failed = conductor("jobs", config=wrong, check=False)
        assert failed.returncode == 1 and "wrong-pw" not in failed.stderr
    finally:
        server.stop()


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    directory.mkdir(parents=True)
    ca_key, ca, key, csr, cert = (directory / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=conductor-test-ca",
        "-keyout", str(ca_key), "-out", str(ca))
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(csr))
    extensions = directory / "san.cnf"
    extensions.write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "2",
        "-extfile", str(extensions), "-out", str(cert))
    return ca, cert, key


@pytest.mark.reliability("security: Redis over TLS")
def test_workers_talk_to_redis_over_tls(tmp_path):
    ca, cert, key = make_certificates(tmp_path / "tls")
    port = free_port()
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}&ssl_cert_reqs=required"
    server = ExtraRedis(tmp_path / "redis", url, port,
                        ("--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
                         "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"), {})
    (tmp_path / "node").mkdir()
    # RedisServer passes its own --port first; the later "--port 0" turns plain TCP off.
    server.start()
    try:
        assert "CONDUCTOR_JOB_ID" in run_a_job(tmp_path, server)
        plain = node_config(tmp_path / "node", server, REDIS_URL=f"redis://127.0.0.1:{port}/0")
        assert conductor("jobs", config=plain, check=False).returncode == 1
    finally:
        server.stop()


@pytest.mark.reliability("security: no secrets in rendered files")
def test_rendered_files_carry_no_secrets(tmp_path, redis_server):
    config = node_config(tmp_path, redis_server, API_ENABLED=True, API_TOKEN="api-token-value",
                         REDIS_URL=f"redis://:{SECRET.replace('#', '%23')}@127.0.0.1:1/0")
    out = tmp_path / "rendered"
    conductor("render", "supervisord", "--out", str(out), config=config)
    for path in out.iterdir():
        text = path.read_text()
        assert "api-token-value" not in text and "s3cret" not in text


@pytest.mark.reliability("bad input: job name trying to escape JOB_ROOT")
def test_job_names_never_shape_paths(make_node):
    node = make_node(WORKER_CONCURRENCY=1)
    node.start_workers(1)
    job_id = node.submit("#!/bin/bash\npwd\n", "--name", "../../../etc/evil")
    node.wait_state(job_id, "COMPLETED")
    directory = node.directory / "jobs" / str(job_id)
    assert (directory / f"slurm-{job_id}.out").read_text().strip() == str(directory)
    assert not (node.directory / "etc").exists()
    wait_until(lambda: node.job(job_id)["name"] == "../../../etc/evil")
