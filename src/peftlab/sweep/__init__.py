"""Sweeps: a YAML grid of training runs (spec.py), run one after another (local.py) or as Ray Tune
trials (ray_backend.py); runner.py plans, dispatches and writes `<out>/SWEEP/<name>/sweep.{csv,json}`."""
