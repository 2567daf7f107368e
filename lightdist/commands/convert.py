"""`lightdist convert checkpoint=<file or directory> [output=<file>]`: a checkpoint (a file, an FSDP
sharded directory or a DeepSpeed ZeRO directory) as one file with the full model weights, loadable
on one device. The older `lightdist convert <checkpoint> -o <file>` works too."""

from dataclasses import dataclass

from lightdist.config.compose import command_args


@dataclass
class ConvertOptions:
    checkpoint: str  # checkpoint file or sharded checkpoint directory
    output: str | None = None  # default: <checkpoint>.consolidated.ckpt


def run(argv: list[str]) -> None:
    from lightdist.checkpoints import consolidate

    args = command_args(argv, "convert", ConvertOptions, aliases={"-o": "output", "--output": "output"},
                        positional="checkpoint")
    print(consolidate(args.options.checkpoint, args.options.output))
