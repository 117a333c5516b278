"""The ``accelerated-diffusion`` command: ``accelerated-diffusion <command> [options]``.

=====================  ==============================================================================
command                what (module, imported only when the command runs)
=====================  ==============================================================================
``train``              train the Fashion-MNIST DDPM (:func:`accelerated_diffusion.train.main`)
``generate``           N samples per sampler and NFE, shardable with ``accelerate launch``
                       (:func:`accelerated_diffusion.generate.main`)
``metrics``            Fréchet distance per sampler and NFE of a generate manifest
                       (:func:`accelerated_diffusion.generate.metrics_main`)
``train-classifier``   train and ship the feature classifier (:func:`accelerated_diffusion.classifier.main`)
=====================  ==============================================================================

``accelerated-diffusion <command> --help`` shows a command's options.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["COMMANDS", "main"]

# command -> (module, function, one-line help)
COMMANDS = {
    "train": ("accelerated_diffusion.train", "main", "train the Fashion-MNIST DDPM"),
    "generate": ("accelerated_diffusion.generate", "main", "generate samples per sampler and NFE (accelerate-shardable)"),
    "metrics": ("accelerated_diffusion.generate", "metrics_main", "Fréchet distance per sampler/NFE of a manifest"),
    "train-classifier": ("accelerated_diffusion.classifier", "main", "train and ship the feature classifier"),
}


def _usage() -> str:
    lines = ["usage: accelerated-diffusion <command> [options]", "", "commands:"]
    lines += [f"  {name:<18s}{help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv[0]`` to its module's ``main(argv[1:])`` (lazy import); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"accelerated-diffusion: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    result = getattr(importlib.import_module(module), func)(rest)
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
