"""Ray Jobs API: submit, follow, list, inspect and stop jobs on a cluster's dashboard address.

Every failure a user can cause (a wrong address, a cluster that is down, a missing or wrong
token, a job id that does not exist) is a :class:`JobsError` with one line that says what to do.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from typing import TextIO
from urllib.parse import urlparse

from ray.exceptions import AuthenticationError
from ray.job_submission import JobDetails, JobStatus, JobSubmissionClient

from cluster.auth import auth_headers, plain_http_refusal, token_locations

TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
POLL_S = 1.0


class JobsError(Exception):
    """A Jobs API request that cannot succeed as asked; the message is one line."""


def check_address(address: str) -> str:
    """The dashboard URL ``http(s)://HOST:PORT`` without a trailing slash; JobsError for anything else."""
    parsed = urlparse(address)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise JobsError(
            f"--address {address!r} is not a Ray dashboard URL: give http://HEAD:8265 "
            "(the head's dashboard; not ray://, not the GCS port 6379)"
        )
    return address.rstrip("/")


@dataclass
class Jobs:
    """A connection to one cluster's Jobs API, authenticated with the token Ray clients would use."""

    address: str
    client: JobSubmissionClient

    @classmethod
    def connect(cls, address: str, allow_insecure_token: bool = False) -> "Jobs":
        """Connect to ``address``; the token goes over plain http only to a loopback address, or when allowed."""
        address = check_address(address)
        headers = auth_headers()
        refusal = None if allow_insecure_token or not headers else plain_http_refusal(address)
        if refusal:
            raise JobsError(refusal)
        try:
            client = JobSubmissionClient(address, headers=headers)
        except AuthenticationError:
            found = "refused the token Kiln found" if headers else "requires a token and Kiln found none"
            raise JobsError(f"the Ray cluster at {address} {found}; Kiln looked in {', '.join(token_locations())}") from None
        except ConnectionError:
            raise JobsError(
                f"cannot reach a Ray dashboard at {address}: is the cluster up, and is this its dashboard address "
                "(port 8265 by default; from outside the cluster, through an SSH tunnel)?"
            ) from None
        return cls(address, client)

    def _request(self, what: str, job_id: str | None, call):
        try:
            return call()
        except RuntimeError as e:
            if job_id is not None and "404" in str(e):
                raise JobsError(
                    f"no job {job_id!r} on the Ray cluster at {self.address} (`kiln jobs list` shows them)"
                ) from None
            raise JobsError(f"{what} failed on {self.address}: {str(e).strip().splitlines()[0]}") from None
        except ConnectionError:
            raise JobsError(f"lost the connection to the Ray dashboard at {self.address}") from None

    def submit(
        self,
        *,
        entrypoint: str,
        runtime_env: dict,
        metadata: dict[str, str],
        submission_id: str,
        entrypoint_num_cpus: float | None,
        entrypoint_num_gpus: float | None,
    ) -> str:
        return self._request(
            "submitting the job",
            None,
            lambda: self.client.submit_job(
                entrypoint=entrypoint,
                runtime_env=runtime_env,
                metadata=metadata,
                submission_id=submission_id,
                entrypoint_num_cpus=entrypoint_num_cpus,
                entrypoint_num_gpus=entrypoint_num_gpus,
            ),
        )

    def details(self, job_id: str) -> JobDetails:
        return self._request("reading the job", job_id, lambda: self.client.get_job_info(job_id))

    def list_jobs(self) -> list[JobDetails]:
        return self._request("listing jobs", None, self.client.list_jobs)

    def logs(self, job_id: str) -> str:
        return self._request("reading the job's logs", job_id, lambda: self.client.get_job_logs(job_id))

    def stop(self, job_id: str) -> bool:
        return self._request("stopping the job", job_id, lambda: self.client.stop_job(job_id))

    def follow(self, job_id: str, out: TextIO = sys.stdout) -> JobDetails:
        """Stream the job's logs to ``out`` until it ends; returns its final details."""
        self.details(job_id)  # a missing job is a clear error, not an empty stream

        async def tail() -> None:
            async for lines in self.client.tail_job_logs(job_id):
                out.write(lines)
                out.flush()

        asyncio.run(tail())
        info = self.details(job_id)
        while info.status not in TERMINAL:  # the log stream can close a moment before the status is final
            asyncio.run(asyncio.sleep(POLL_S))
            info = self.details(job_id)
        return info


def exit_code(info: JobDetails) -> int:
    """0 for a job that succeeded; its driver's exit code (75: saved, resubmit to resume) or 1 otherwise."""
    if info.status == JobStatus.SUCCEEDED:
        return 0
    code = getattr(info, "driver_exit_code", None)
    return code if isinstance(code, int) and code != 0 else 1
