"""The one adapter over DeepSpeed's checkpoint files: everything that knows their names and private formats.

The rest of Kiln calls only what this package exports:

* ``names``        file names, and which files each rank reads back (``rank_files``);
* ``safe_load``    weights-only loading with the allow-list DeepSpeed's files need;
* ``engine_io``    DeepSpeed's save captured into a snapshot, its loads verified and weights only;
* ``universal``    the route a changed layout takes, and conversion to the universal form;
* ``reshard``      per-parameter state for fp32 stage-0 engines (behind ``universal``);
* ``consolidate``  fp32 weights in ``Transformer`` naming, for every layout.
"""

from llm.deepspeed_files.consolidate import consolidate, trained_weights
from llm.deepspeed_files.engine_io import (
    KilnCheckpointEngine,
    fresh_optimizer_state,
    load_as_saved,
    load_universal,
    repair_optimizer_groups,
    snapshot,
    use_kiln_checkpoint_engine,
)
from llm.deepspeed_files.names import MODEL_STATES, rank_files
from llm.deepspeed_files.reshard import load_universal_into_plain
from llm.deepspeed_files.safe_load import (
    SAFE_GLOBALS,
    UnsafeCheckpointError,
    deepspeed_loads_weights_only,
    load_weights_only,
)
from llm.deepspeed_files.universal import Route, reshape_route, to_universal

__all__ = [
    "MODEL_STATES",
    "SAFE_GLOBALS",
    "KilnCheckpointEngine",
    "Route",
    "UnsafeCheckpointError",
    "consolidate",
    "deepspeed_loads_weights_only",
    "fresh_optimizer_state",
    "load_as_saved",
    "load_universal",
    "load_universal_into_plain",
    "load_weights_only",
    "rank_files",
    "repair_optimizer_groups",
    "reshape_route",
    "snapshot",
    "to_universal",
    "trained_weights",
    "use_kiln_checkpoint_engine",
]
