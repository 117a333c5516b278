"""Progress bars without the notebook warning of ``tqdm.auto``.

``tqdm.auto`` (imported by diffusers through huggingface_hub when this package loads, and by the experiments'
training and model-quality loops) warns ``IProgress not found. Please update jupyter and ipywidgets.`` in a
Jupyter kernel without ipywidgets, with a path of the machine, and then shows the plain text bar: nothing a user
has to act on.  Importing this module (the package does so before anything else) silences that one warning;
every other warning stays.
"""

import warnings

from tqdm import TqdmWarning

#: The start of the message of the silenced warning (``tqdm.notebook.WARN_NOIPYW``).
IPROGRESS_MESSAGE = "IProgress not found"

warnings.filterwarnings("ignore", message=IPROGRESS_MESSAGE, category=TqdmWarning)
