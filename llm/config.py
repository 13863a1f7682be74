"""Typed model and training configs (the `model:` and `train:` sections of a Kiln config)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ops.scalar_logs import missing_backend_message, missing_backends


class ModelConfig(BaseModel):
    """Shape of a Llama-style decoder."""

    model_config = ConfigDict(extra="forbid")

    dim: int = Field(default=256, ge=8)
    layers: int = Field(default=4, ge=1)
    heads: int = Field(default=4, ge=1)
    kv_heads: int | None = Field(default=None, ge=1, description="grouped-query attention; None means heads")
    seq_len: int = Field(default=256, ge=2)
    ffn_hidden: int | None = Field(default=None, ge=1, description="None: 8/3 * dim rounded up to multiple_of")
    multiple_of: int = Field(default=64, ge=1)
    norm_eps: float = Field(default=1e-5, gt=0)
    rope_theta: float = Field(default=10000.0, gt=0)
    tie_embeddings: bool = False
    init_std: float = Field(default=0.02, gt=0)
    activation_checkpointing: bool = False

    @model_validator(mode="after")
    def _check_shape(self) -> "ModelConfig":
        if self.dim % self.heads:
            raise ValueError(f"model.dim={self.dim} must be divisible by model.heads={self.heads}")
        if (self.dim // self.heads) % 2:
            raise ValueError(f"model.dim / model.heads = {self.dim // self.heads} must be even for rotary embeddings")
        if self.heads % self.n_kv_heads:
            raise ValueError(f"model.heads={self.heads} must be a multiple of model.kv_heads={self.n_kv_heads}")
        return self

    @property
    def architecture(self) -> str:
        """The decoder family ``llm/model.py`` builds: the key of its Hugging Face adapter."""
        return "llama"

    @property
    def n_kv_heads(self) -> int:
        return self.kv_heads or self.heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def hidden_dim(self) -> int:
        """SwiGLU width: Llama's 2/3 of 4*dim, rounded up to ``multiple_of``."""
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        hidden = int(2 * 4 * self.dim / 3)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    def parameter_counts(self, vocab_size: int) -> dict[str, int]:
        """Parameters of the decoder ``llm/model.py`` builds (tied weights counted once).  ``norms`` are the
        RMSNorm gains, the only parameters tensor parallelism does not split; ``largest_module`` is what
        ZeRO-3 gathers at a time; ``matmul`` is what a token multiplies through (the output layer included,
        the embedding lookup not)."""
        dim, kv_dim, hidden = self.dim, self.n_kv_heads * self.head_dim, self.hidden_dim
        attention = dim * dim * 2 + dim * kv_dim * 2  # wq, wo; wk, wv
        ffn = 3 * dim * hidden
        block = attention + ffn + 2 * dim  # two RMSNorm weights
        embedding = vocab_size * dim
        head = dim + (0 if self.tie_embeddings else vocab_size * dim)
        return {
            "total": embedding + self.layers * block + head,
            "embedding": embedding,
            "per_block": block,
            "head": head,
            "largest_module": max(embedding, dim * hidden, dim * dim),
            "matmul": self.layers * (attention + ffn) + vocab_size * dim,
            "norms": (2 * self.layers + 1) * dim,
        }

    def flops_per_token(self, vocab_size: int, seq_len: int | None = None) -> float:
        """Training FLOPs (forward + backward) per token at ``seq_len`` (the model's own by default).

        6 per matmul parameter plus attention over the context: QK^T and AV are 2*T*dim each per layer
        forward, tripled for the backward pass, with no discount for causal masking (the convention of
        PaLM's MFU).
        """
        context = seq_len or self.seq_len
        return 6.0 * self.parameter_counts(vocab_size)["matmul"] + 12.0 * self.layers * self.dim * context


class LossGuardConfig(BaseModel):
    """What the training loop does with a step whose loss is not finite, or spikes above the recent mean."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["skip", "stop"] = Field(
        default="stop",
        description="skip: leave weights and optimizer state as they were and go on; stop: end the run with an error",
    )
    spike_factor: float | None = Field(
        default=None,
        gt=1,
        description="also act on a loss above this many times the mean of the last `window` kept losses; "
        "None: only on a non-finite loss",
    )
    window: int = Field(default=50, ge=1, description="kept losses the spike check averages (it starts once it has them)")


class TrainConfig(BaseModel):
    """How the per-rank training loop runs."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(default=100, ge=1)
    micro_batch: int = Field(default=4, ge=1)
    global_batch: int = Field(default=8, ge=1)
    lr: float = Field(default=3e-4, gt=0)
    min_lr: float = Field(default=3e-5, ge=0)
    warmup_steps: int = Field(default=10, ge=0)
    weight_decay: float = Field(default=0.1, ge=0)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.95, ge=0, lt=1)
    eps: float = Field(default=1e-8, gt=0)
    grad_clip: float = Field(default=1.0, ge=0, description="0 disables clipping")
    zero_stage: int = Field(default=2, ge=0, le=3)
    pipeline_stages: int = Field(default=1, ge=1)
    sequence_parallel: int = Field(default=1, ge=1, description="ranks that split each sequence (Ulysses attention)")
    tensor_parallel: int = Field(default=1, ge=1, description="ranks that split each layer's projections")
    nodes: int = Field(default=1, ge=1, description="nodes the ranks run on; world size = nodes x nproc")
    nproc: int = Field(default=2, ge=1, description="ranks per node, under every launcher")
    launcher: Literal["local", "ray", "none"] = "local"
    checkpoint_every: int = Field(default=50, ge=1)
    checkpoint_at_end: bool = Field(default=True, description="also save after the last step (benchmarks turn it off)")
    keep_checkpoints: int = Field(default=3, ge=1)
    max_restarts: int = Field(default=0, ge=0)
    log_every: int = Field(default=1, ge=1)
    heartbeat_s: float = Field(default=10.0, gt=0, description="seconds between a rank's heartbeats (kiln monitor's health)")
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    peak_tflops: float | None = Field(default=None, gt=0, description="per-device peak for MFU; None uses the GPU table")
    compile: bool = Field(default=False, description="torch.compile each block (any ZeRO stage, no pipeline)")
    schedule: Literal["cosine", "wsd", "constant"] = Field(
        default="cosine", description="cosine to min_lr at train.steps; wsd: warmup, stable, decay; constant after warmup"
    )
    decay_steps: int | None = Field(default=None, ge=1, description="wsd: the last decay_steps steps decay to min_lr")
    decay_shape: Literal["linear", "cosine", "1-sqrt"] = Field(default="1-sqrt", description="wsd: shape of the decay")
    init_from: str | None = Field(
        default=None, description="RUN_URL[@STEP]: start from that run's weights (its newest committed step by default)"
    )
    init_optimizer: bool = Field(default=False, description="with init_from: also carry the source's optimizer state")
    loss_guard: LossGuardConfig = Field(default_factory=LossGuardConfig)
    log_to: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=list,
        description="copies of rank 0's scalars: TensorBoard event files under RUN_URL/tensorboard/, a wandb offline run",
    )

    @field_validator("log_to")
    @classmethod
    def _check_log_to(cls, backends: list[str]) -> list[str]:
        for backend in missing_backends(backends):
            raise ValueError(missing_backend_message(backend))
        return backends

    @model_validator(mode="after")
    def _check_parallelism(self) -> "TrainConfig":
        if self.pipeline_stages > 1 and self.zero_stage > 1:
            raise ValueError(
                f"train.zero_stage={self.zero_stage} cannot be combined with train.pipeline_stages={self.pipeline_stages}: "
                "DeepSpeed pipeline parallelism supports ZeRO stage 0 or 1"
            )
        if self.tensor_parallel > 1 and self.zero_stage > 2:
            raise ValueError(
                f"train.tensor_parallel={self.tensor_parallel} cannot be combined with train.zero_stage={self.zero_stage}: "
                "tensor parallelism runs with ZeRO stage 0, 1 or 2"
            )
        split = {"sequence_parallel": self.sequence_parallel, "tensor_parallel": self.tensor_parallel}
        if self.pipeline_stages > 1 and any(n > 1 for n in split.values()):
            named = ", ".join(f"train.{k}={v}" for k, v in split.items() if v > 1)
            raise ValueError(f"{named} cannot be combined with train.pipeline_stages={self.pipeline_stages}")
        if self.loss_guard.action == "skip" and self.pipeline_stages > 1:
            raise ValueError(
                f"train.loss_guard.action=skip needs train.pipeline_stages=1 (it is {self.pipeline_stages}): a pipelined "
                "step updates the weights before its loss is known; use train.loss_guard.action=stop"
            )
        if self.compile and self.pipeline_stages > 1:
            raise ValueError(
                "train.compile=true needs train.pipeline_stages=1: pipeline stages hook into every layer call, "
                "which torch.compile cannot trace"
            )
        if self.min_lr > self.lr:
            raise ValueError(f"train.min_lr={self.min_lr} must not exceed train.lr={self.lr}")
        if self.schedule == "wsd" and self.decay_steps is None:
            raise ValueError("train.schedule=wsd needs train.decay_steps: how many of the last steps decay to train.min_lr")
        if self.schedule == "wsd" and self.warmup_steps + self.decay_steps > self.steps:
            raise ValueError(
                f"train.warmup_steps={self.warmup_steps} + train.decay_steps={self.decay_steps} must not exceed "
                f"train.steps={self.steps}"
            )
        if self.init_optimizer and not self.init_from:
            raise ValueError("train.init_optimizer=true needs train.init_from: the run whose optimizer state to carry")
        if self.global_batch % self.micro_batch:
            raise ValueError(
                f"train.global_batch={self.global_batch} must be a multiple of train.micro_batch={self.micro_batch}"
            )
        return self

    @property
    def world_size(self) -> int:
        return self.nodes * self.nproc
