"""The reproduction: the experiments behind the book, kept apart from the library.

Installed with the ``experiments`` extra (``pip install 'accelerated-diffusion[experiments]'``: scipy,
matplotlib, accelerate, transformers); the sympy derivations need the ``book`` extra.

* :mod:`.paths` -- where the repository, its shipped data and the results live; atomic, strict-JSON writes;
* :mod:`.data` -- Fashion-MNIST (Debian package or checksummed download);
* :mod:`.train` -- training the Fashion-MNIST DDPM (``accelerated-diffusion train``);
* :mod:`.features`, :mod:`.classifier` -- the feature classifier and the Fréchet distance;
* :mod:`.generate` -- N samples per sampler and NFE, shardable, and their metrics;
* :mod:`.rates` -- the rate measurements with exact scores;
* :mod:`.exact_1d` -- exact total variation of every library sampler on one-dimensional Gaussian mixtures;
* :mod:`.score_error` -- the learned model's score error, how each sampler weights it, and causal hybrids;
* :mod:`.perturbations` -- controlled perturbations of exact scores: which errors each sampler amplifies;
* :mod:`.comparison_report`, :mod:`.rates_report`, :mod:`.figures` -- the evidence chapters' tables and figures;
* :mod:`.tables` -- their one table class and one number format (:func:`~.tables.interval`);
* :mod:`.derivations` -- the sympy derivations of every update rule;
* :mod:`.toy_pipelines` -- a tiny random Stable Diffusion pipeline, built offline;
* :mod:`.cli` -- the ``accelerated-diffusion`` command.
"""
