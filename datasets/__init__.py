"""Dataset adapters and suites; one import line per module registers its entries."""

from datasets import abdomen  # noqa: F401
from datasets import amos  # noqa: F401
from datasets import brats  # noqa: F401
from datasets import brain  # noqa: F401
from datasets import btcv  # noqa: F401
from datasets import chest_xray  # noqa: F401
from datasets import chestxray14  # noqa: F401
from datasets import colon  # noqa: F401
from datasets import folder  # noqa: F401
from datasets import lits  # noqa: F401
from datasets import luna16  # noqa: F401
from datasets import medmnist  # noqa: F401
from datasets import metaimage  # noqa: F401
from datasets import msd  # noqa: F401
from datasets import smoke  # noqa: F401
