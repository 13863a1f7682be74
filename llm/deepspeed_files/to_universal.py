"""``python -m llm.deepspeed_files.to_universal STEP_DIR OUT_DIR``: DeepSpeed's universal conversion,
every load weights only.  Exit 3 (and one line on stderr) when a file holds more than weights."""

from __future__ import annotations

import sys

from llm.deepspeed_files.universal import UNSAFE_EXIT


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m llm.deepspeed_files.to_universal STEP_DIR OUT_DIR", file=sys.stderr)
        return 2
    from deepspeed.checkpoint import ds_to_universal

    from llm.checkpoint_files import CheckpointError
    from llm.deepspeed_files.safe_load import deepspeed_loads_weights_only

    sys.argv = [
        "ds_to_universal",
        "--input_folder",
        args[0],
        "--output_folder",
        args[1],
        "--inject_missing_state",
        "--num_extract_workers",
        "1",
        "--num_merge_workers",
        "1",
    ]
    try:
        with deepspeed_loads_weights_only():
            ds_to_universal.main(ds_to_universal.parse_arguments())
    except CheckpointError as error:
        print(error, file=sys.stderr)
        return UNSAFE_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
