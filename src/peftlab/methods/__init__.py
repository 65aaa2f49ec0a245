"""Fine-tuning methods, registered by name: `fft`, `lora` (peftlab's own), `peft-lora`, `adalora`.

    from peftlab.methods import get_method
    method = get_method("lora")
    model = method.apply(model, cfg)              # cfg: rank, alpha, dropout, targets, seed
    params = method.trainable_parameters(model)   # exactly what the optimizer gets

A new method is one file with a `@register_method` class (see `base.Method`), imported below.
"""

from peftlab.methods.base import METHODS, Method, get_method, register_method
from peftlab.methods import fft, lora, peft_lora  # noqa: E402,F401  (registers the built-in methods)
from peftlab.methods import adalora  # noqa: E402,F401  (AdaLoRA, issue 9)

__all__ = ["METHODS", "Method", "get_method", "register_method"]
