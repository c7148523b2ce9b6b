"""Dataset adapters and suites; one import line per module registers its entries."""
from datasets import abdomen  # noqa: F401
from datasets import btcv  # noqa: F401
from datasets import smoke  # noqa: F401
