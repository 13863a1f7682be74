"""``train.launcher=ray``: the ranks as Ray Train workers on the cluster ``cluster.address`` names
(or a private local Ray).  Ray Train restarts failed workers itself (``train.max_restarts``)."""

from __future__ import annotations

from cluster.config import ClusterConfig
from cluster.connect import ray_session
from launch.launchers.base import AttemptResult, Launcher
from llm.job import TrainJob


class RayTrainLauncher(Launcher):
    name = "ray"
    restarts_failed_attempts = False

    def __init__(self, job: TrainJob, cluster: ClusterConfig):
        super().__init__(job)
        self.cluster = cluster
        self.run = None

    @classmethod
    def from_config(cls, cfg) -> "RayTrainLauncher":
        return cls(cfg.train_job(), cfg.cluster)

    def session(self):
        """Connected before run_job installs its stop handlers: ray.init installs a SIGTERM handler of its own."""
        return ray_session(self.cluster)

    def run_attempt(self, attempt: int) -> AttemptResult:
        from cluster.ray_train import RayTrainRun

        self.run = RayTrainRun(self.job)
        failures = self.run.fit()
        return AttemptResult(exit_code=1 if failures else 0, failures=failures)

    def request_stop(self, reason: str) -> None:
        if self.run is not None:
            self.run.request_stop(reason)
