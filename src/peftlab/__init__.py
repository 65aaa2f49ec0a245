"""peftlab: study and choose parameter-efficient fine-tuning of Hugging Face classifiers.

Heavy dependencies (torch, transformers, peft) are imported lazily by the submodules that need
them, so `import peftlab` and `peftlab --help` stay instant.
"""

__version__ = "0.1.0"
