"""kaseg: compact, fast semantic segmentation by knowledge distillation.

Implements He et al., "Knowledge Adaptation for Efficient Semantic Segmentation" (CVPR 2019).
"""

from .errors import KasegError

__version__ = "0.1.0"
__all__ = ["KasegError", "__version__"]
