"""The training recipe refuses bad input in seconds, before data preparation and training,
with one ``error:`` line, exit code 2 and no traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from maskproxy_losses.training.hparams import check_override_keys, load_recipe_hparams
from maskproxy_losses.utils.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "VoxCeleb" / "MaskProxy"
SCRIPT = RECIPE / "train_speaker_embeddings.py"
MP = RECIPE / "hparams" / "mp.yaml"


def _recipe(cwd, *args):
    """Run the training script on mp.yaml with ``args`` in a subprocess."""
    cmd = [sys.executable, str(SCRIPT), str(MP), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=300)


def _run(tmp_path, *args):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    return _recipe(tmp_path, "--data_folder", corpus, "--output_folder", out, *args)


def _on_corpus(corpus, tmp_path, manifests, *args):
    """Run the recipe on the test ``corpus`` (no built-in corpus; 2 dev utterances each)."""
    return _recipe(
        tmp_path,
        *("--builtin_corpus", "False", "--data_folder", corpus, "--manifest_folder", manifests),
        *("--output_folder", tmp_path / "out", "--dev_share", 2, *args),
    )


def _assert_refused(proc, *parts):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1, proc.stderr[-2000:]
    for part in parts:
        assert part in proc.stderr, proc.stderr[-2000:]


def test_override_typo_and_unknown_loss_stop_before_data_prep(tmp_path):
    proc = _run(tmp_path, "--speakers_per_bach", "3")
    _assert_refused(
        proc,
        f"{MP}: no key speakers_per_bach (overridden with --speakers_per_bach); "
        "did you mean --speakers_per_batch or --speed_perturb?",
    )
    proc = _run(tmp_path, "--loss_name", "foo")
    _assert_refused(proc, f"{MP}: unknown loss_name 'foo'; choose one of aam, ap, mmp, ")
    assert not (tmp_path / "corpus").exists()  # nothing was generated


def test_unwritable_output_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    proc = _recipe(
        tmp_path,
        "--output_folder",
        str(tmp_path / "file"),
        "--data_folder",
        str(tmp_path / "corpus"),
    )
    _assert_refused(
        proc, f"{tmp_path / 'file' / 'save'}: cannot create this folder (Not a directory)"
    )
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        proc = _recipe(tmp_path, "--output_folder", ro / "x")
        _assert_refused(proc, f"{ro / 'x'}: cannot write")


def test_too_few_speakers_names_the_override(corpus, tmp_path):
    proc = _on_corpus(corpus, tmp_path, corpus / "manifests", "--speakers_per_batch", 50)
    _assert_refused(
        proc, "only 6 usable speakers, fewer than speakers_per_batch=50", "--speakers_per_batch N"
    )
    assert not list((tmp_path / "out").glob("save/CKPT*"))  # training never started


def test_one_class_trial_list_stops_before_training(corpus, tmp_path):
    trials = tmp_path / "targets_only.txt"
    lines = [
        line
        for line in (corpus / "veri_list.txt").read_text().splitlines()
        if line.startswith("1 ")
    ]
    trials.write_text("\n".join(lines) + "\n")
    proc = _on_corpus(
        corpus, tmp_path, tmp_path / "manifests", "--trials_list", trials, "--speakers_per_batch", 3
    )
    _assert_refused(proc, f"all {len(lines)} trials have label 1")
    assert not list((tmp_path / "out").glob("save/CKPT*"))


def test_builtin_scale_is_applied_before_references_resolve(tmp_path):
    hparams, overrides = load_recipe_hparams(MP, f"output_folder: {tmp_path}")
    # the yaml's `builtin` block: 20 speakers, 30 epochs, 200-frame crops; epoch_counter's
    # `!ref <number_of_epochs>` sees the scaled value without a patch afterwards
    assert (hparams["speakers_per_batch"], hparams["number_of_epochs"]) == (20, 30)
    assert hparams["epoch_counter"].limit == 30 and hparams["crop_frames"] == 200
    assert "speakers_per_batch: 20" in overrides
    hparams, _ = load_recipe_hparams(MP, f"output_folder: {tmp_path}\nnumber_of_epochs: 3")
    assert hparams["epoch_counter"].limit == 3  # the command line wins
    hparams, _ = load_recipe_hparams(MP, f"output_folder: {tmp_path}\nbuiltin_corpus: False")
    assert hparams["epoch_counter"].limit == 500 and hparams["speakers_per_batch"] == 200


def test_check_override_keys_lists_every_typo():
    with pytest.raises(InputError) as err:
        check_override_keys(["lr", "sed", "zzz"], ["lr", "seed", "speakers_per_batch"], "x.yaml")
    assert err.value.problems == [
        "x.yaml: no key sed (overridden with --sed); did you mean --seed?",
        "x.yaml: no key zzz (overridden with --zzz)",
    ]
