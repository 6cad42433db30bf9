"""`@param`, `Section`, `Param` and the config loader: `torchstrap_runtime.config`."""

from torchstrap_runtime.config import *  # noqa: F401,F403
from torchstrap_runtime.config import Param, Section, load_config, param  # noqa: F401
