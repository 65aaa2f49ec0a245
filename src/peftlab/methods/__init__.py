"""Fine-tuning methods, registered by name: `fft`, `lora` (peftlab's own), `peft-lora`, `adalora`, `adapter`
(own Houlsby), `bitfit` (own), and through PEFT `dora`, `rslora`, `pissa`, `vera`, `ia3`, `prompt-tuning`,
`ln-tuning` (`prefix-tuning` is refused: see `base.REFUSED_METHODS`).

    from peftlab.methods import get_method
    method = get_method("lora")
    model = method.apply(model, cfg)              # cfg: rank, alpha, dropout, targets, seed
    params = method.trainable_parameters(model)   # exactly what the optimizer gets

A new method is one file with a `@register_method` class (see `base.Method`), imported below.
"""

from peftlab.methods.base import METHODS, Method, get_method, register_method
# Importing a method module registers it.
from peftlab.methods import fft, lora, peft_lora  # noqa: E402,F401
from peftlab.methods import adalora  # noqa: E402,F401
from peftlab.methods import adapter, bitfit, dora, ia3, ln_tuning, pissa, prompt_tuning, rslora, vera  # noqa: E402,F401

__all__ = ["METHODS", "Method", "get_method", "register_method"]
