"""The ``accelerated-diffusion`` command: ``accelerated-diffusion <command> [options]``.

=====================  ==============================================================================
command                what
=====================  ==============================================================================
``train``              train the Fashion-MNIST DDPM (:func:`.train.main`)
``generate``           N samples per sampler and NFE, shardable with ``accelerate launch``
                       (:func:`.generate.main`)
``metrics``            Fréchet distance per sampler and NFE of a generate manifest
                       (:func:`.generate.metrics_main`)
``train-classifier``   train and ship the feature classifier (:func:`.classifier.main`)
``model-quality``      a model's Fréchet distance at many steps against the real-data floor
                       (:func:`.model_quality.main`)
``model-card``         (re)draw a model folder's loss curve and sample grid (:func:`.model_card.main`)
``run-chapter``        check a papermill parameter file against a chapter's ``parameters`` cell, then
                       run the chapter with it (:func:`.params.main`)
=====================  ==============================================================================

``accelerated-diffusion <command> --help`` shows a command's options.
"""

from __future__ import annotations

import sys

from . import classifier, generate, model_card, model_quality, params, train

__all__ = ["COMMANDS", "main"]

# command -> (function, one-line help)
COMMANDS = {
    "train": (train.main, "train the Fashion-MNIST DDPM"),
    "generate": (generate.main, "generate samples per sampler and NFE (accelerate-shardable)"),
    "metrics": (generate.metrics_main, "Fréchet distance per sampler/NFE of a manifest"),
    "train-classifier": (classifier.main, "train and ship the feature classifier"),
    "model-quality": (model_quality.main, "a model's FD at many steps against the data floor"),
    "model-card": (model_card.main, "draw a model folder's loss curve and samples"),
    "run-chapter": (params.main, "check a papermill parameter file, then run the chapter"),
}


def _usage() -> str:
    lines = ["usage: accelerated-diffusion <command> [options]", "", "commands:"]
    lines += [f"  {name:<18s}{help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv[0]`` to its command's ``main(argv[1:])``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"accelerated-diffusion: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    func, _ = COMMANDS[name]
    result = func(rest)
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
