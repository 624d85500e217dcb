"""`python -m dynexport sweep --ray` (issue #28) on a local Ray instance (2 CPUs, loopback): the
same table as the local pool for a tiny zoo, and a task whose worker is killed is retried once
and then reported with the worker's error, not lost."""

import json
import os

import pytest
from helpers import REPO

# Ray on Linux binds a node to its network address even when given 127.0.0.1; read before ray
# is imported, this keeps the test's instance on loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray", reason="needs the ray extra: pip install -e .[ray]")

from dynexport.__main__ import main  # noqa: E402
from dynexport.sweep.table import columns  # noqa: E402

# Runs dynexport on a tiny model in both backends (about a minute on 2 cores).
pytestmark = pytest.mark.slow

FIXTURES = REPO / "tests" / "fixtures" / "sweep"
ZOO = """
[defaults]
options = ["--to", "openvino"]

[[scripts]]
path = "tiny_linear.py"

[[scripts]]
path = "no_model.py"
"""


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """The tiny zoo swept by the local pool and by Ray (with, in Ray's, a script that kills
    its worker on every try): (local rows, Ray rows, the Ray sweep's folder, attempts file)."""
    zoo = tmp_path_factory.mktemp("zoo")
    for name in ("tiny_linear.py", "no_model.py", "kills_ray_worker.py"):
        (zoo / name).write_text((FIXTURES / name).read_text())
    attempts = zoo / "attempts.txt"
    (zoo / "zoo.toml").write_text(ZOO)
    (zoo / "ray.toml").write_text(ZOO + '\n[[scripts]]\npath = "kills_ray_worker.py"\n'
                                  f'args = ["{attempts}"]\n')
    local, remote = zoo / "local", zoo / "ray"
    with pytest.MonkeyPatch.context() as patch:
        # Workers import dynexport from this checkout, also where it is installed elsewhere.
        patch.setenv("PYTHONPATH", os.pathsep.join(
            filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1")
        try:
            assert main(["sweep", str(zoo / "ray.toml"), "--out", str(remote), "--ray", "auto",
                         "--memory-per-run", "0.5", "--timeout", "600"]) == 1
        finally:
            ray.shutdown()
    assert main(["sweep", str(zoo / "zoo.toml"), "--out", str(local), "--jobs", "2",
                 "--timeout", "600"]) == 1
    rows = [json.loads((folder / "sweep.json").read_text())["rows"] for folder in (local, remote)]
    return rows[0], rows[1], remote, attempts


def _without_times(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_ray_gives_the_local_table(sweeps):
    local, remote, folder, _ = sweeps
    assert [r["exit"] for r in local] == [0, 2]
    assert _without_times(remote[:2]) == _without_times(local)
    head, local_cells = columns(local, links=True)
    _, remote_cells = columns(remote[:2], links=True)
    seconds = head.index("seconds")
    for cells in (*local_cells, *remote_cells):
        cells[seconds] = "?"
    assert remote_cells == local_cells
    # The reports and artifacts came back from the workers.
    assert json.loads((folder / remote[0]["report"]).read_text())["ok"] is True
    assert (folder / "tiny_linear" / "dynexport" / "openvino" / "model.xml").is_file()


def test_a_killed_worker_is_retried_once_then_reported(sweeps):
    _, remote, _, attempts = sweeps
    killed = remote[2]
    assert (killed["script"], killed["exit"], killed["report"]) == (
        "kills_ray_worker.py", None, None)
    assert killed["error"].startswith("Ray task failed after 2 tries: WorkerCrashedError")
    tries = attempts.read_text().splitlines()
    assert len(tries) == 2 and all(line.startswith("ray::") for line in tries)
