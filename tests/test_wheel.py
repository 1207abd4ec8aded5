"""The built wheel, installed on its own, carries the sample data, the napari manifest and the starter model."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs outside the source tree with only the installed wheel on the path (numbers printed as JSON).
INSTALLED_CHECKS = textwrap.dedent("""
    import importlib, json, sys
    from pathlib import Path

    import npe2
    import napari_cvbm
    from napari_cvbm.core.checkpoint import load_model
    from napari_cvbm.demo import load_sample_cases, sample_data_dir

    package = Path(napari_cvbm.__file__).parent
    manifest = npe2.PluginManifest.from_file(package / "napari.yaml")
    commands = {c.id: c.python_name for c in manifest.contributions.commands}
    samples = {}
    for sample in manifest.contributions.sample_data:
        module, name = commands[sample.command].split(":")
        layers = getattr(importlib.import_module(module), name)()
        samples[sample.key] = [[layer_type, list(data.shape)] for data, _, layer_type in layers]
    splits = load_sample_cases(sample_data_dir())
    model, config = load_model(package / "models" / "starter.pt")
    print(json.dumps({"package": str(package), "samples": samples, "demo_cases": [len(s) for s in splits],
                      "starter_parameters": sum(p.numel() for p in model.parameters())}))
""")


def test_installed_wheel_has_sample_data_manifest_and_starter_model(tmp_path):
    source = _mkdir(tmp_path / "source")  # a clean copy: no stale build/ of an earlier build, no clash with one
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "napari_cvbm", source / "napari_cvbm", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, cwd=tmp_path)
    [wheel] = (tmp_path / "dist").glob("napari_cvbm-*.whl")
    site = tmp_path / "site"
    subprocess.run(pip + ["install", "--no-deps", "--target", str(site), str(wheel)], check=True, cwd=tmp_path)

    elsewhere = _mkdir(tmp_path / "elsewhere")  # not the repository: its source tree cannot be imported
    result = subprocess.run([sys.executable, "-c", INSTALLED_CHECKS], cwd=elsewhere, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert Path(report["package"]).is_relative_to(site)
    assert report["samples"] == {"labeled": [["image", [48, 64, 64]], ["labels", [48, 64, 64]]],
                                 "unlabeled": [["image", [48, 64, 64]]]}
    assert report["demo_cases"] == [3, 8, 2]
    assert report["starter_parameters"] > 0


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path
