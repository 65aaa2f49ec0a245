"""Pieces of the one training loop (`peftlab.train`): data preparation, sampler, Trainer subclass, callbacks."""
