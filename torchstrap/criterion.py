"""CoKe's criteria by their product names (torchstrap_runtime.methods.coke); any other loss:
`torchstrap_runtime.criteria.build_criterion(name, params)`."""

from torchstrap_runtime.criteria import build_criterion
from torchstrap_runtime.methods.coke import CoKeDoubleView as coke_double_view
from torchstrap_runtime.methods.coke import CoKeMultiView as coke_multi_view
from torchstrap_runtime.methods.coke import CoKeSingleView as coke_single_view

__all__ = ["build_criterion", "coke_single_view", "coke_double_view", "coke_multi_view"]
