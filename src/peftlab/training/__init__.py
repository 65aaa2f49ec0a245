"""The one training loop (`loop.py`, re-exported as `peftlab.train`) and its pieces: data preparation,
sampler, Trainer subclass, callbacks, run-directory bookkeeping, provenance."""
