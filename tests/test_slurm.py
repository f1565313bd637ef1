"""seglab on a real one-node SLURM cluster (tests/slurm_cluster.py): a sweep through
`hydra/launcher=submitit_slurm`, and what a user sees when SLURM is not there."""

from __future__ import annotations

import pytest

from seglab.tracking import tags
from tests.slurm_cluster import slurm_cluster  # noqa: F401
from tests.test_sweeps import SWEEP_TINY, empty_store, parent_and_children, sweep  # noqa: F401

# The launcher values that fit the test's small node (docs/sweeps.md): one job at a time, two cores each.
SMALL_NODE = (
    "hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=2",
    "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=10", "hydra.launcher.array_parallelism=1",
)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_sweep_on_slurm_is_one_parent_with_finished_children_tagged_with_their_job_ids(tmp_path, empty_store, slurm_cluster):  # noqa: F811
    uri, done = sweep(tmp_path, empty_store, "--multirun", *SMALL_NODE, *SWEEP_TINY, "model.base_filters=2,4")
    client, parent, children = parent_and_children(uri)
    assert parent.info.status == "FINISHED" and parent.data.tags["hydra.launcher"] == "submitit_slurm"
    assert [c.info.status for c in children] == ["FINISHED", "FINISHED"]
    job_ids = [c.data.tags[tags.JOB_ID] for c in children]
    assert len(set(job_ids)) == 2
    for job_id, task in zip(job_ids, ("0", "1")):  # SLURM's own record of the job that ran each child
        record = slurm_cluster.scontrol("show", "job", job_id)
        assert "JobState=COMPLETED" in record and f"ArrayTaskId={task}" in record, record
