"""envs/*.yaml list the same requirement specs as pyproject.toml, and every rule names an env."""

from __future__ import annotations

import re
import tomllib

import yaml
from conftest import ROOT


def _name(spec: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", spec).group(0).lower()


def test_env_versions_match_pyproject():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = {_name(d): d for d in py["dependencies"] + py["optional-dependencies"]["lora"]}
    envs = sorted((ROOT / "envs").glob("*.yaml"))
    assert {e.stem for e in envs} == {"data", "train", "merge", "evaluate", "report"}
    for env in envs:
        deps = yaml.safe_load(env.read_text())["dependencies"]
        assert "python=3.11" in deps
        pip = next(d["pip"] for d in deps if isinstance(d, dict))
        for entry in pip:
            if entry.startswith("--"):
                continue
            assert entry == specs[_name(entry)], f"{env.name}: {entry} != {specs[_name(entry)]}"


def test_every_rule_has_conda_log_and_is_in_a_rules_file():
    for smk in (ROOT / "workflow/rules").glob("*.smk"):
        text = smk.read_text()
        for rule in re.findall(r"^rule (\w+):", text, re.M):
            body = text.split(f"rule {rule}:")[1].split("\nrule ")[0]
            assert "    log:" in body and "    conda:" in body, f"{smk.name}: rule {rule}"
