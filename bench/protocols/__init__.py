"""Transfer protocols; one import line per module registers it."""

from bench.protocols import segmentation  # noqa: F401
from bench.protocols import classification  # noqa: F401
from bench.protocols import probes  # noqa: F401
