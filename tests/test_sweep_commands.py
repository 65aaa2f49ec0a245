"""`study`, `bench` and `adalora run` build sweep specs and run them through `peftlab.sweep` (local or Ray).

The specs are checked key by key; `--backend ray` is followed to the Ray backend with a stand-in that records
its arguments (the real local-vs-Ray equality and ASHA runs are in test_sweep.py). One tiny AdaLoRA run goes
through the whole CLI path.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from peftlab.cli import main
from peftlab.errors import PeftlabError
from peftlab.io import read_json
from peftlab.runs import is_finished, run_dir_for

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def run_cli(args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


# ---------------------------------------------------------------- the specs each command builds


def test_study_spec_is_its_grid_with_the_profile_as_preset():
    from peftlab.study import StudyPlan, profile_settings, study_spec
    from peftlab.sweep.spec import expand

    plan = StudyPlan("SST-2", ["fft", "lora"], [1, 2], [4, 8], "quick", out="o", overrides=["epochs=2"],
                     model="/m", data_dir="/d")
    spec = study_spec(plan, profile_settings("quick", "SST-2"))
    assert spec.axes == {"method": ["fft", "lora"], "seed": [1, 2], "rank": [4, 8]}
    assert spec.fixed == {"task": "SST-2", "model": "/m", "data_dir": "/d", "epochs": "2"}
    assert spec.preset == "quick,quick-sst2" and spec.by_method == {"fft": {"lr": 1e-4}, "lora": {"lr": 2e-3}}
    runs = expand(spec, "o")
    # fft ignores rank: 2 seeds × (1 fft + 2 lora ranks) = 6 runs, in the study's order
    assert [r.run_dir.as_posix() for r in runs] == [
        "o/FFT/SST-2/seed1", "o/FFT/SST-2/seed2", "o/LoRA/SST-2/seed1_r4", "o/LoRA/SST-2/seed1_r8",
        "o/LoRA/SST-2/seed2_r4", "o/LoRA/SST-2/seed2_r8"]
    assert [r.cfg.lr for r in runs] == [1e-4, 1e-4, 2e-3, 2e-3, 2e-3, 2e-3] and runs[0].cfg.epochs == 2
    assert runs[0].cfg.rank == 8  # the fft config does not take the first rank point (4)
    # a user lr replaces the profile's per-method lr; a grid key cannot be overridden
    user = study_spec(StudyPlan("SST-2", ["lora"], [1], [8], "quick", overrides=["lr=3e-4"]),
                      profile_settings("quick", "SST-2"))
    assert user.by_method == {} and expand(user, "o")[0].cfg.lr == 3e-4
    with pytest.raises(PeftlabError, match=r"^study: the override 'seed=\.\.\.' would replace the grid's own seed; "
                                           r"pass --seeds instead$"):
        study_spec(StudyPlan("RTE", ["lora"], [1], [8], "quick", overrides=["seed=3"]), profile_settings("quick", "RTE"))


def test_bench_spec_names_the_grid_and_keeps_the_cell_run_roots(tmp_path):
    from peftlab.bench.run import bench_spec, plan

    overrides = ["max_steps=2", "seed=9", "lr=1e-3"]  # seed is the grid's own: the grid wins (as before)
    bench_dir, configs = plan("rte", ["fft", "lora", "adapter"], [2, 4], ["q,v"], [1, 2], "quick", str(tmp_path),
                              overrides)
    spec, runs = bench_spec("rte", ["fft", "lora", "adapter"], [2, 4], ["q,v"], [1, 2], "quick", overrides, configs,
                            bench_dir)
    assert spec.axes == {"method": ["fft", "lora", "adapter"], "rank": [2, 4], "targets": ["q,v"], "seed": [1, 2]}
    assert spec.fixed == {"task": "rte", "max_steps": "2", "lr": "1e-3"} and spec.preset == "quick"
    assert spec.expanded_by.startswith("peftlab bench")
    # 2 seeds × (fft + lora r2, r4 + adapter b2, b4) = 10 runs, each in its cell's own run root
    assert len(runs) == 10 and [r.cfg for r in runs] == [cfg for _, cfg in configs]
    rel = [r.run_dir.relative_to(bench_dir / "runs").as_posix() for r in runs]
    # non-default method options name the run dir too (runs.run_dir_for): targets q,v is not LoRA's default
    assert rel[:4] == ["fft/FFT/RTE/seed1", "fft/FFT/RTE/seed2", "lora_r2_q-v/LoRA/RTE/seed1_r2__targets-q-v",
                       "lora_r2_q-v/LoRA/RTE/seed2_r2__targets-q-v"]
    adapter = runs[-1]
    assert adapter.axes == {"method": "adapter", "rank": 4, "seed": 2} and adapter.cfg.adapter_bottleneck == 4
    assert all(r.run_dir == run_dir_for(r.cfg) and r.cfg.seed in (1, 2) for r in runs)


def test_adalora_spec_keeps_the_signal_run_dirs(tmp_path):
    from peftlab.commands.adalora import adalora_spec
    from peftlab.sweep.spec import expand

    spec = adalora_spec("RTE", ["combo", "baseline_adalora"], [1, 2], None, ["init_r=6"])
    assert spec.axes == {"signal": ["combo", "baseline_adalora"], "seed": [1, 2]}
    assert spec.fixed == {"method": "adalora", "targets": "q,k,v,o,ffn_in,ffn_out", "task": "RTE", "init_r": "6"}
    runs = expand(spec, tmp_path)
    # signal names a run-dir level of AdaLoRA, so it adds no `signal-<value>/` output root
    assert [r.run_dir.relative_to(tmp_path).as_posix() for r in runs] == [
        "ADALORA/RTE/combo/seed1", "ADALORA/RTE/combo/seed2",
        "ADALORA/RTE/baseline_adalora/seed1", "ADALORA/RTE/baseline_adalora/seed2"]
    assert runs[0].cfg.init_r == 6 and runs[0].cfg.targets == ("q", "k", "v", "o", "ffn_in", "ffn_out")


# ---------------------------------------------------------------- --backend reaches the sweep runner


class Reached(Exception):
    """Raised by the stand-in runner: the command got as far as the sweep."""


@pytest.fixture
def recorded_sweep(monkeypatch):
    import peftlab.sweep.runner as runner

    calls: list[dict] = []

    def fake_run_sweep(spec, **kwargs):
        calls.append({"spec": spec, **kwargs})
        raise Reached()

    monkeypatch.setattr(runner, "run_sweep", fake_run_sweep)
    return calls


@pytest.mark.parametrize("args", [
    ["study", "--task", "rte", "--methods", "fft,lora", "--seeds", "1", "2", "--ranks", "4"],
    ["bench", "--task", "rte", "--methods", "fft,lora", "--ranks", "4", "--seeds", "1", "2", "--no-isolate"],
    ["adalora", "run", "--task", "RTE", "--signal", "combo", "--signal", "baseline_adalora", "--seeds", "1,2"],
])
def test_commands_hand_their_grid_and_backend_to_the_sweep_runner(recorded_sweep, tmp_path, args):
    with pytest.raises(Reached):
        main([*args, "--out", str(tmp_path), "--backend", "ray", "--ray-address", "10.0.0.1:6379",
              "--max-concurrent", "2", "--cpus-per-run", "1"])
    (call,) = recorded_sweep
    assert call["backend"] == "ray" and call["ray_address"] == "10.0.0.1:6379"
    assert call["spec"].resources.max_concurrent == 2 and call["spec"].resources.cpus_per_run == 1
    assert len(call["runs"]) == 4 and call["spec"].axes["seed"] == [1, 2]
    assert all(str(r.run_dir).startswith(str(tmp_path)) for r in call["runs"])


def test_adalora_run_cli_goes_through_the_ray_backend(monkeypatch, tmp_path, capsys):
    """`--backend ray` reaches `run_ray` (a stand-in that trains locally), and sweep.json says ray."""
    import peftlab.sweep.ray_backend as ray_backend
    from peftlab.sweep.local import run_local
    from peftlab.testing import save_tiny_model_dir, write_generated_rte

    reached = {}

    def fake_run_ray(runs, resources, sweep_dir, fail_fast=False, address=None, echo=print, asha=None,
                     isolate=False):
        reached.update(address=address, n=len(runs), max_concurrent=resources.max_concurrent)
        return run_local(runs, resources, fail_fast=fail_fast, echo=echo), {"ray": {"address": address}}

    monkeypatch.setattr(ray_backend, "require_ray", lambda: None)
    monkeypatch.setattr(ray_backend, "run_ray", fake_run_ray)
    model = save_tiny_model_dir(tmp_path / "tiny", "bert")
    data = write_generated_rte(tmp_path / "data", 16, 8)
    common = ["adalora", "run", "--task", "RTE", "--out", tmp_path / "out", f"model={model}", f"data_dir={data}",
              "max_steps=2", "batch_size=8", "eval_batch_size=8", "max_len=16", "max_train_samples=16",
              "tinit=0", "tfinal=0", "deltaT=1"]
    code, out, err = run_cli([*common, "--backend", "ray", "--ray-address", "auto"], capsys)
    assert code in (0, None), err
    run_dir = tmp_path / "out" / "ADALORA" / "RTE" / "baseline_adalora" / "seed1"
    assert reached == {"address": "auto", "n": 1, "max_concurrent": 1}
    assert is_finished(run_dir) and out.splitlines()[0] == str(run_dir)
    (sweep_json,) = (tmp_path / "out" / "SWEEP").glob("adalora_*/sweep.json")
    meta = read_json(sweep_json)
    assert meta["backend"] == "ray" and meta["counts"]["finished"] == 1 and meta["ray"]["address"] == "auto"
    # --force re-trains here, in this process: refused on Ray with one line, before anything runs
    code, _, err = run_cli([*common, "--backend", "ray", "--force"], capsys)
    assert code == 2 and err.startswith("error: --force re-trains finished runs on the local backend only")
