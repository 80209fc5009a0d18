"""`torchrun ... -m vaebm_fast sample`: the processes share the shards and write one output in
sample order, the same images as one process (gloo on the CPU)."""
import numpy as np
import pytest

from tests.cli.test_official_sample import RUN, files, first_run, images  # noqa: F401
from tests.training.test_distributed import _torchrun

# torchrun reads "--n" as an abbreviation of its own options: --num-samples is the same flag.
TORCHRUN_RUN = tuple("--num-samples" if a == "--n" else a for a in RUN)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("nproc", [2, 3])
def test_several_processes_write_the_images_of_one(files, first_run, tmp_path, nproc):  # noqa: F811
    out, x = first_run
    nvae, ebm = files
    run = _torchrun(nproc, "sample", "--nvae", nvae, "--ebm", ebm, "--ebm-arch", "cifar32",
                    "--out", tmp_path, *TORCHRUN_RUN)
    assert run.returncode == 0, run.stderr[-2000:]
    # The same shards (--batch 2) drawn by other processes: the same numbers, bit for bit.
    np.testing.assert_array_equal(images(tmp_path), x)
    assert sorted(p.name for p in (tmp_path / "shards").glob("*.npy")) == sorted(
        p.name for p in (out / "shards").glob("*.npy"))
    assert run.stdout.count("wrote") == 1  # rank 0 alone writes and prints


def test_a_job_resumes_at_another_number_of_processes(files, first_run, tmp_path):  # noqa: F811
    _, x = first_run
    nvae, ebm = files
    argv = ("sample", "--nvae", nvae, "--ebm", ebm, "--ebm-arch", "cifar32", "--out", tmp_path,
            *TORCHRUN_RUN)
    assert _torchrun(2, *argv).returncode == 0
    shards = sorted((tmp_path / "shards").glob("*.npy"))
    kept = {p: p.stat().st_mtime_ns for p in shards[1:]}
    shards[0].unlink()
    (tmp_path / "samples.npz").unlink()
    run = _torchrun(3, *argv)
    assert run.returncode == 0, run.stderr[-2000:]
    np.testing.assert_array_equal(images(tmp_path), x)
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # not redrawn
