"""Bad input gets one clear message naming the fix, exit code 2, and leaves no MLflow run behind."""
from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import types

import mlflow
import pytest

from conftest import REPO


def run_cli(tmp_path, *args, env_extra=None):
    """run_ablation.main in this process (torch is imported once for all of these): its exit code
    and what it printed to stderr, with $ALEXNET_DATA_ROOT unset and `env_extra` set meanwhile.
    One bad input is also checked as a separate command (test_config_errors_are_answered_...)."""
    import run_ablation
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    argv = ["--profile", "smoke", "--tracking-uri", uri, "--cache-dir", str(tmp_path / "cache"), *args]
    saved_env = dict(os.environ)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    os.environ.pop("ALEXNET_DATA_ROOT", None)
    os.environ.update(env_extra or {})
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = run_ablation.main(argv)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return types.SimpleNamespace(returncode=code, stderr=err.getvalue()), uri


def no_runs(uri: str) -> bool:
    if not os.path.exists(uri[len("sqlite:///"):]):
        return True                    # not even a store
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(search_all_experiments=True).empty


def error_line(res) -> str:
    lines = [l for l in res.stderr.splitlines() if l.startswith("error: ")]
    assert len(lines) == 1, res.stderr[-2000:]
    return lines[0]


def test_unknown_grid_lists_choices(tmp_path, tiny_imagefolder):
    res, uri = run_cli(tmp_path, "--grid", "nope", "--data-root", str(tiny_imagefolder))
    assert res.returncode == 2
    assert "unknown grid 'nope'" in error_line(res) and "deviations" in error_line(res)
    assert no_runs(uri)


def test_unknown_profile_lists_choices(tmp_path, tiny_imagefolder):
    res, uri = run_cli(tmp_path, "--grid", "deviations", "--profile", "huge", "--data-root", str(tiny_imagefolder))
    assert res.returncode == 2 and "unknown profile 'huge'" in error_line(res) and "smoke" in error_line(res)


@pytest.mark.parametrize("text, expected", [
    ("baseline: {lrn: maybe}\nprofiles: {smoke: {}}\ngrids: {g: {}}\n", "invalid value 'maybe' for toggle 'lrn'"),
    ("baseline: {colour: red}\nprofiles: {smoke: {}}\ngrids: {g: {}}\n", "unknown toggle 'colour'"),
    ("profiles: {smoke: {width: [1}\n", "not valid YAML"),
    ("profiles: {smoke: {widht: 0.5}}\ngrids: {g: {}}\n", "unknown key(s) ['widht'] in profiles.smoke"),
    ("profiles: {smoke: {}}\ngrids: {g: {one_at_a_time: {init: xavier}}}\n", "invalid value 'xavier' for toggle 'init'"),
])
def test_bad_experiments_yaml(tmp_path, tiny_imagefolder, text, expected):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    res, uri = run_cli(tmp_path, "--grid", "g", "--config", str(cfg), "--data-root", str(tiny_imagefolder))
    assert res.returncode == 2
    assert expected in error_line(res)
    assert no_runs(uri)


def test_missing_dataset_says_how_to_get_it(tmp_path):
    res, uri = run_cli(tmp_path, "--grid", "deviations", "--data-root", str(tmp_path / "nowhere"))
    assert res.returncode == 2
    msg = error_line(res)
    assert "--data-root" in msg and "ALEXNET_DATA_ROOT" in msg and "Imagenette" in msg
    assert no_runs(uri)


def test_empty_dataset(tmp_path):
    for split in ("train", "val"):
        (tmp_path / "empty" / split / "cls").mkdir(parents=True)
    res, uri = run_cli(tmp_path, "--grid", "deviations", "--data-root", str(tmp_path / "empty"))
    assert res.returncode == 2 and "holds no images" in error_line(res)
    assert no_runs(uri)


def test_broken_image_is_named_and_nothing_is_logged(tmp_path, tiny_imagefolder):
    broken = tiny_imagefolder / "train" / "bird" / "broken.JPEG"
    broken.write_bytes(b"\xff\xd8 this is not a jpeg")
    res, uri = run_cli(tmp_path, "--grid", "deviations", "--data-root", str(tiny_imagefolder))
    assert res.returncode == 2
    assert str(broken) in error_line(res) and "Remove or replace" in error_line(res)
    assert no_runs(uri)
    assert not any(p.name.startswith(".") for p in (tmp_path / "cache").iterdir())   # no half-written cache


def test_interrupted_grid_marks_run_killed_and_resumes(tmp_path, tiny_imagefolder):
    """SIGTERM while a cell trains: the cell and the parent end KILLED (none left RUNNING), the
    message says how to resume, and the same command then trains only what is missing, the
    killed cell from its checkpoint into its own run."""
    import time
    cfg = tmp_path / "exp.yaml"             # smoke at 9 epochs a cell: seconds to land in
    cfg.write_text("profiles:\n  slow: {image_size: 32, width: 0.125, stem: [5, 2, 1], batch_size: 32, "
                   "lr: 0.01, epoch_scale: 0.1, max_per_class: 12, eval_batch_size: 128}\n"
                   "grids:\n  pair: {one_at_a_time: {lrn: false}}\n")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    base = [sys.executable, "run_ablation.py", "--config", str(cfg), "--profile", "slow", "--grid", "pair",
            "--tracking-uri", uri, "--data-root", str(tiny_imagefolder), "--cache-dir", str(tmp_path / "cache"),
            "--no-system-metrics"]
    first = subprocess.run(base + ["--seeds", "1"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]                  # 2 cells finished
    cmd = base + ["--seeds", "2"]                                        # 2 more to go
    with open(tmp_path / "stderr.txt", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stderr=log, text=True)
        deadline = time.monotonic() + 120
        while not list((tmp_path / "checkpoints").glob("*/epoch-*.pt")) and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint written in 120 s"
            time.sleep(0.02)                                             # a cell has trained an epoch
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    err = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 130 and "run the same command again to resume" in err, err[-3000:]
    mlflow.set_tracking_uri(uri)
    df = mlflow.search_runs(search_all_experiments=True)
    assert "RUNNING" not in set(df["status"])
    killed = df[df["status"] == "KILLED"]
    assert sorted(killed["tags.role"]) == ["cell", "grid"]                 # the cell and its parent
    finished = int(((df["status"] == "FINISHED") & (df["tags.role"] == "cell")).sum())
    assert finished == 2                                                 # seed 0's cells
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "2 trained (1 resumed from a checkpoint)" in res.stderr and "2 already finished" in res.stderr
    df = mlflow.search_runs(search_all_experiments=True)
    cells = df[df["tags.role"] == "cell"]
    assert list(cells["status"]).count("FINISHED") == 4 == len(cells)    # the killed cell went on in its own run


@pytest.mark.parametrize("name, value", [("ALEXNET_LRN_KERNEL", "fast"), ("ALEXNET_THREADS", "two"),
                                         ("ALEXNET_MALLOC_TUNE", "yes")])
def test_bad_environment_setting_is_named_before_anything_runs(tmp_path, tiny_imagefolder, name, value):
    res, uri = run_cli(tmp_path, "--grid", "deviations", "--data-root", str(tiny_imagefolder),
                       env_extra={name: value})
    assert res.returncode == 2
    assert f"{name}={value!r}" in error_line(res)
    assert no_runs(uri)


def no_cache(tmp_path) -> bool:
    return not any((tmp_path / "cache").glob("*")) if (tmp_path / "cache").exists() else True


def test_too_small_geometry_is_refused_before_any_run(tmp_path, tiny_imagefolder):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("profiles:\n  small: {image_size: 12, width: 0.125, stem: [5, 2, 1]}\n"
                   "grids:\n  one: {one_at_a_time: {lrn: false}}\n")
    res, uri = run_cli(tmp_path, "--config", str(cfg), "--grid", "one", "--profile", "small",
                       "--data-root", str(tiny_imagefolder))
    assert res.returncode == 2 and "image_size 12" in error_line(res) and "Traceback" not in res.stderr
    assert no_runs(uri) and no_cache(tmp_path)


@pytest.mark.parametrize("device,expected", [("bogus", "not a device"), ("cuda:7", "no such CUDA device")])
def test_a_device_this_machine_lacks_is_refused(tmp_path, tiny_imagefolder, device, expected):
    res, uri = run_cli(tmp_path, "--grid", "deviations", "--device", device, "--data-root", str(tiny_imagefolder))
    assert res.returncode == 2 and expected in error_line(res) and "Traceback" not in res.stderr
    assert no_runs(uri) and no_cache(tmp_path)


def test_unwritable_cache_dir_is_named(tmp_path, tiny_imagefolder):
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    res = subprocess.run([sys.executable, "run_ablation.py", "--grid", "deviations", "--profile", "smoke",
                          "--data-root", str(tiny_imagefolder), "--cache-dir", str(blocker / "cache"),
                          "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "--cache-dir" in error_line(res) and "Traceback" not in res.stderr
    assert no_runs(f"sqlite:///{tmp_path}/mlflow.db")


def test_a_decompression_bomb_is_named(tmp_path, tiny_imagefolder):
    from PIL import Image
    Image.new("1", (20000, 20000)).save(tiny_imagefolder / "train" / "apple" / "huge.png")
    res, uri = run_cli(tmp_path, "--grid", "deviations", "--data-root", str(tiny_imagefolder))
    assert res.returncode == 2 and "huge.png" in error_line(res) and "Traceback" not in res.stderr
    assert no_runs(uri) and no_cache(tmp_path)


def test_a_class_only_in_val_is_refused(tmp_path, tiny_imagefolder):
    extra = tiny_imagefolder / "val" / "zebra"
    extra.mkdir()
    (tiny_imagefolder / "val" / "apple" / "img0.JPEG").rename(extra / "img0.JPEG")
    res, uri = run_cli(tmp_path, "--grid", "deviations", "--data-root", str(tiny_imagefolder))
    assert res.returncode == 2 and "zebra" in error_line(res)
    assert no_runs(uri)


def test_config_errors_are_answered_before_torch_is_imported():
    probe = ("import sys, run_ablation; rc = run_ablation.main(['--grid', 'nope']); "
             "print(rc, 'torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.stdout.split() == ["2", "False"], res.stdout + res.stderr
    assert "\nerror: unknown grid 'nope'" in "\n" + res.stderr


def test_precision_flag_trains_the_cells_of_a_profile_that_says_so(tmp_path, tiny_imagefolder):
    """`--precision fp32` trains the cells a profile with `precision: fp32` trains (the same
    config_hash, so either finds the other's FINISHED runs), and says so in the first line;
    `--precision bf16` makes other cells; a precision that does not exist is refused."""
    text = (REPO / "experiments.yaml").read_text()
    assert text.count("\n  smoke:\n") == 1
    fp32 = tmp_path / "fp32.yaml"
    fp32.write_text(text.replace("\n  smoke:\n", "\n  smoke:\n    precision: fp32\n"))
    common = ["--grid", "seed", "--data-root", str(tiny_imagefolder), "--no-system-metrics"]
    res, uri = run_cli(tmp_path, *common, "--precision", "fp32")
    assert res.returncode == 0 and "precision fp32," in res.stderr and "done: 2 trained" in res.stderr, res.stderr[-2000:]
    res, _ = run_cli(tmp_path, *common, "--config", str(fp32))
    assert res.returncode == 0 and "done: 0 trained" in res.stderr and "2 already finished" in res.stderr, res.stderr[-2000:]
    res, _ = run_cli(tmp_path, *common, "--config", str(fp32), "--precision", "bf16")
    assert res.returncode == 0 and "precision bf16," in res.stderr and "done: 2 trained" in res.stderr, res.stderr[-2000:]
    mlflow.set_tracking_uri(uri)
    cells = mlflow.search_runs(search_all_experiments=True, filter_string="tags.role = 'cell'")
    assert sorted(cells["params.precision"]) == ["bf16", "bf16", "fp32", "fp32"]
    bad = subprocess.run([sys.executable, "run_ablation.py", *common, "--precision", "fp16"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "invalid choice: 'fp16'" in bad.stderr and "'fp32'" in bad.stderr
