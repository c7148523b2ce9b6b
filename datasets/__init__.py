"""Dataset adapters and suites; one import line per module registers its entries."""
from datasets import smoke  # noqa: F401
