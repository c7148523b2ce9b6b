"""Pretraining methods; one import line per method registers it (timm style)."""

from methods import random_init  # noqa: F401
from methods import simmim3d  # noqa: F401
from methods import asa  # noqa: F401
from methods import swinunetr_ssl  # noqa: F401
from methods import saca  # noqa: F401
from methods import external  # noqa: F401
from methods import lls  # noqa: F401
from methods import ace  # noqa: F401
from methods import dino  # noqa: F401
from methods import mae  # noqa: F401
from methods import supervised  # noqa: F401
