"""normexp.fingerprint: the one list of keys that change no result, and the rules derived from it."""

from __future__ import annotations

import yaml
from helpers import ROOT, compose_config
from omegaconf import OmegaConf

from normexp import fingerprint, results


def test_the_yaml_folder_names_leave_out_exactly_the_keys_that_change_no_result():
    config = yaml.safe_load((ROOT / "conf" / "config.yaml").read_text())
    excluded = config["hydra"]["job"]["config"]["override_dirname"]["exclude_keys"]
    named = set(fingerprint.NOT_RESULT_KEYS) - set(excluded)
    assert named == set(fingerprint.NAMED_IN_FOLDERS)
    others = set(excluded) - set(fingerprint.NOT_RESULT_KEYS)
    logger = {k for k in excluded if k.startswith(fingerprint.NOT_RESULT_PREFIXES)}
    assert others == {"experiment", "logger"} | logger


def test_keys_that_change_no_result_make_no_variant():
    def config(*overrides: str) -> dict:
        return OmegaConf.to_container(compose_config(["norm=gn", "batch_size=4", *overrides]), resolve=True)

    base, groups = config(), config("norm.groups=5")
    packed = config("train.pack_size=3", "train.threads=2", "data.root=elsewhere")
    names = results.variants({"a": base, "b": packed, "c": groups})
    assert names["a"] == names["b"] != names["c"]
    assert fingerprint.result_settings(base) == fingerprint.result_settings(packed)
