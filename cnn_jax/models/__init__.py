"""The model zoo: one module per family; importing this package registers every variant."""

from cnn_jax.models.registry import create_model, get_constructor, list_models, register_model

# Importing a family module registers its variants.
from cnn_jax.models import lenet  # noqa: F401,E402
from cnn_jax.models import convnext, roadmap  # noqa: F401,E402
from cnn_jax.models import alexnet, resnet  # noqa: F401,E402
from cnn_jax.models import vit  # noqa: F401,E402
from cnn_jax.models import hybrid  # noqa: F401,E402

__all__ = ["create_model", "get_constructor", "list_models", "register_model"]
