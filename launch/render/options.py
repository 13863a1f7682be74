"""Typed options of ``kiln launch``: what a cluster job needs beyond the config.

Every field is named after its command-line flag (``gpus_per_node`` is ``--gpus-per-node``), so a
validation error becomes one line naming the flag, the value and what would be valid.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from launch.config import ConfigError

# SLURM's --time formats: minutes, minutes:seconds, hours:minutes:seconds, days-hours,
# days-hours:minutes, days-hours:minutes:seconds; 0, UNLIMITED or INFINITE for no limit.
SLURM_TIME = re.compile(r"[0-9]+(:[0-9]+){0,2}|[0-9]+-[0-9]+(:[0-9]+){0,2}|UNLIMITED|INFINITE")
SLURM_TIME_FORMATS = "minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"
# Partition, account and QOS names go into #SBATCH lines: no spaces, quotes or shell characters.
SLURM_NAME = r"^[A-Za-z0-9_.+-]+(,[A-Za-z0-9_.+-]+)*$"
# A Kubernetes object name (RFC 1123 label), as namespaces and Secrets need.
K8S_NAME = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
# An image reference: [registry[:port]/]path[:tag][@digest].
IMAGE_REFERENCE = r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$"
K8S_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"

HINTS = {
    "image": "the container image with Kiln installed, built from the Dockerfile",
    "gpus_per_node": "GPUs per node; 0 renders a CPU job",
}
SLURM_NAME_HELP = "a SLURM name: letters, digits and _.+- (a comma-separated list where SLURM allows one)"
K8S_NAME_HELP = "a Kubernetes name: lower-case letters, digits and '-', at most 63"
VALID_FORMS = {
    "partition": SLURM_NAME_HELP,
    "account": SLURM_NAME_HELP,
    "qos": SLURM_NAME_HELP,
    "namespace": K8S_NAME_HELP,
    "secret": K8S_NAME_HELP,
    "image": "an image reference: letters, digits and ._/:@- (registry/path:tag@digest)",
    "memory_per_node": "a Kubernetes quantity such as 64Gi",
}


class LaunchOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nodes: int = Field(default=1, ge=1, description="machines of the job")
    gpus_per_node: int = Field(ge=0, description="GPUs (= ranks) per node; 0: CPU ranks, train.nproc per node")


class SlurmOptions(LaunchOptions):
    partition: str | None = Field(default=None, pattern=SLURM_NAME)
    account: str | None = Field(default=None, pattern=SLURM_NAME)
    qos: str | None = Field(default=None, pattern=SLURM_NAME)
    time: str | None = Field(default=None, description="SLURM time limit")
    signal: Literal["USR1", "USR2", "TERM"] = Field(
        default="USR2", description="sent to the batch shell ahead of the time limit (NCCL may use USR1)"
    )
    signal_lead: int = Field(default=120, ge=1, le=65535, description="seconds before the time limit")
    ray: bool = Field(default=False, description="start a Ray cluster on the allocation and run `kiln run` on it")

    @field_validator("time")
    @classmethod
    def _slurm_time(cls, value: str | None) -> str | None:
        if value is not None and not SLURM_TIME.fullmatch(value):
            raise ValueError(f"{value!r} is not a SLURM time limit; use {SLURM_TIME_FORMATS}")
        return value


class KubernetesOptions(LaunchOptions):
    image: str = Field(min_length=1, pattern=IMAGE_REFERENCE)
    namespace: str = Field(default="default", pattern=K8S_NAME)
    secret: str | None = Field(default=None, pattern=K8S_NAME, description="Secret whose keys become environment variables")
    cpus_per_node: int = Field(default=8, ge=1, description="CPU request (and limit) of each worker pod")
    memory_per_node: str = Field(default="64Gi", pattern=K8S_QUANTITY, description="memory request (and limit) of each pod")


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def options_error(error: ValidationError) -> ConfigError:
    """The first validation error as one line naming the flag (``--nodes: must be at least 1 (got 0)``)."""
    first = error.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    flag, hint = _flag(field), f"; {HINTS[field]}" if field in HINTS else ""
    got = first.get("input")
    if first["type"] == "missing":
        return ConfigError(f"{flag} is required{hint}")
    if first["type"] == "value_error":
        return ConfigError(f"{flag}: {first['msg'].removeprefix('Value error, ')}")
    if first["type"] == "greater_than_equal":
        return ConfigError(f"{flag}: must be at least {first['ctx']['ge']} (got {got!r}){hint}")
    if first["type"] == "string_pattern_mismatch":
        return ConfigError(f"{flag}: {got!r} is not {VALID_FORMS[field]}")
    message = first["msg"][:1].lower() + first["msg"][1:]
    return ConfigError(f"{flag}: {message} (got {got!r}){hint}")


def validated(model: type[LaunchOptions], **values) -> LaunchOptions:
    """Build options from command-line values (None means not given); errors are one-line ConfigErrors."""
    try:
        return model.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as e:
        raise options_error(e) from None
