"""`lightdist convert checkpoint=<file or directory> [output=<file>]`: a checkpoint (a file, an FSDP or
FSDP2 sharded directory or a DeepSpeed ZeRO directory) as one file with the full model weights, loadable
on one device. The older `lightdist convert <checkpoint> -o <file>` works too.

`lightdist convert checkpoint=<ZeRO directory> to=universal` writes DeepSpeed's universal form of a
ZeRO checkpoint beside it (<checkpoint>.universal), which a resume at another world size then uses
instead of converting on its own (lightdist/distributed/zero_universal.py)."""

from dataclasses import dataclass
from typing import Literal

from lightdist.config.compose import command_args


@dataclass
class ConvertOptions:
    checkpoint: str  # checkpoint file or sharded checkpoint directory
    output: str | None = None  # default: <checkpoint>.consolidated.ckpt
    to: Literal["file", "universal"] = "file"  # universal: a ZeRO directory's universal form, for another world size


def run(argv: list[str]) -> None:
    from lightdist.checkpoints import consolidate

    args = command_args(argv, "convert", ConvertOptions, aliases={"-o": "output", "--output": "output"},
                        positional="checkpoint")
    if args.options.to == "universal":
        from lightdist.distributed.zero_universal import convert_to_universal
        from lightdist.errors import ConfigError

        if args.options.output:  # a resume looks for the universal form beside its checkpoint only
            raise ConfigError("to=universal writes <checkpoint>.universal, where a resume finds it",
                              hint="drop output=")
        print(convert_to_universal(args.options.checkpoint))
        return
    print(consolidate(args.options.checkpoint, args.options.output))
