"""Transfer protocols; one import line per module registers it."""
from bench.protocols import segmentation  # noqa: F401
