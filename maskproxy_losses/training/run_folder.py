"""A training output folder that knows what it holds, and holds one run at a time.

:func:`open_run_folder` is called by the training recipe before any work:

- **One run per folder**: ``<output_folder>/run.lock``
  (:class:`~maskproxy_losses.training.run_lock.RunLock`) names the owner; a second run
  into the folder stops at once with one line naming it. The lock is released when the
  process ends.
- **Same settings on resume**: ``<output_folder>/run.json`` records, at the first start,
  every setting of the yaml and the overrides (tags and all, as plain YAML reads them),
  except :data:`MAY_CHANGE`, SpeechBrain's run options that change what is trained
  (:data:`RUN_OPTIONS`, e.g. ``--grad_accumulation_factor``), and the training data
  (:meth:`RunFolder.check_data`: the rows of ``train.csv`` and ``dev.csv`` without their
  paths, and the label set). A later run whose settings or data differ is refused in
  one line listing the differences, before anything in the folder is rewritten
  (SpeechBrain's ``hyperparams.yaml``, the logs and the checkpoints are untouched: the
  recipe sets up the experiment folder after these checks). A folder with checkpoints
  but no record (made before 0.2) is resumed with a warning and recorded.
  ``save/label_encoder.txt`` is checked against the training speakers; an empty or
  unreadable one is rebuilt when the recorded data match (the encoder is a function of
  ``train.csv``), else named.
- **Clean start** (:meth:`RunFolder.started`, after SpeechBrain's experiment set-up):
  checkpoint folders a killed or failed save left without ``CKPT.yaml`` are removed; a
  log file that can no longer be written (disk full) gives one note instead of a
  traceback per log line; a train-log write error names the file.

Example
-------
>>> differences({"lr": 0.2, "emb_dim": 64}, {"lr": 0.2, "emb_dim": 128})
['emb_dim 64 -> 128']
"""

import atexit
import csv
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from maskproxy_losses.training.hparams import read_tagged_yaml
from maskproxy_losses.training.run_lock import LOCK_FILE, RunLock, release_manifests
from maskproxy_losses.utils.errors import InputError
from maskproxy_losses.utils.files import atomic_write_text, check_writable_dir

__all__ = [
    "LOCK_FILE",
    "RECORD_FILE",
    "MAY_CHANGE",
    "RUN_OPTIONS",
    "RunLock",
    "RunFolder",
    "open_run_folder",
    "run_settings",
    "differences",
    "data_fingerprint",
    "remove_partial_checkpoints",
]

logger = logging.getLogger(__name__)

RECORD_FILE = "run.json"
# Settings a resumed run may change: how long and how fast it runs, where the data and
# outputs live (the data themselves are compared by content), and what happens after
# training (averaging, the test list). Everything else defines the model, its data or
# its training and must stay as recorded.
MAY_CHANGE = frozenset(
    {
        "number_of_epochs",
        "num_workers",
        "precision",
        "ckpt_interval_minutes",
        "batch_trace",
        "log_every",
        "augment_workers",
        "verification_loader",
        "average_checkpoints",
        "average_mode",
        "pretrained",
        "skip_bad",
        "output_folder",
        "save_folder",
        "train_log",
        "export_folder",
        "data_folder",
        "manifest_folder",
        "train_root",
        "train_list",
        "test_root",
        "trials_list",
    }
)

# SpeechBrain run options (command line, or a yaml key of the same name) that change the
# trained model, recorded with the settings; a record without one holds the default.
# The checkpoint intervals, logging, the device and the precision may change.
RUN_OPTIONS = (
    "grad_accumulation_factor",
    "max_grad_norm",
    "skip_nonfinite_grads",
    "optimizer_step_limit",
    "remove_vector_weight_decay",
)


def _run_option_defaults():
    from speechbrain.utils.run_opts import RunOptions

    return {key: getattr(RunOptions(), key) for key in RUN_OPTIONS}


# --------------------------------------------------------------- settings and data
def _tagged(value):
    return isinstance(value, dict) and any(str(k).startswith("!") for k in value)


def _update(base, changes):
    """HyperPyYAML's override rule: mappings merge key by key, anything else (a tagged
    node included) replaces."""
    for key, value in changes.items():
        plain = not _tagged(value) and not _tagged(base.get(key))
        if plain and isinstance(value, dict) and isinstance(base.get(key), dict):
            _update(base[key], value)
        else:
            base[key] = value
    return base


def _sha1_file(path):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_settings(hparams_file, overrides, hparams=None, run_opts=None):
    """The settings that define a run: the yaml's top-level keys with ``overrides``
    applied, tags kept (``{"!new:...": args}``), without :data:`MAY_CHANGE`; the
    :data:`RUN_OPTIONS` as SpeechBrain takes them (``run_opts`` given on the command line,
    else the yaml's, else its default); plus the content digest of the training list
    (``train_list sha1``) when one is given (not for the built-in corpus, whose lists its
    seed defines)."""
    with open(hparams_file, encoding="utf-8") as f:
        settings = read_tagged_yaml(f.read()) or {}
    _update(settings, read_tagged_yaml(overrides) or {} if overrides else {})
    out = {k: v for k, v in settings.items() if k not in MAY_CHANGE}
    given = getattr(run_opts, "overridden_args", ())
    for key, default in _run_option_defaults().items():
        out[key] = run_opts[key] if key in given else settings.get(key, default)
    hparams = hparams or {}
    train_list = hparams.get("train_list")
    if not hparams.get("builtin_corpus") and train_list and os.path.isfile(train_list):
        out["train_list sha1"] = _sha1_file(train_list)
    return json.loads(json.dumps(out, default=str))  # JSON's view: what run.json holds


def _flat(value, prefix=""):
    """``{dotted key: value}``: mappings are walked into; a tagged mapping or sequence
    (``{"!new:X": args}``) gives its tag at its key and its arguments below it; a tagged
    scalar is one value (``"!ref <x>"``)."""
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)).startswith("!"):
        (tag, inner), key = next(iter(value.items())), prefix[:-1]
        if isinstance(inner, dict):
            return {key: tag, **(_flat(inner, prefix) if inner else {})}
        if isinstance(inner, list):
            return {key: tag, f"{key}.args": inner}
        return {key: f"{tag} {inner}"}
    if isinstance(value, dict) and value:
        out = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def _show(value, width=40):
    text = "(absent)" if value is _ABSENT else json.dumps(value)
    return text if len(text) <= width else text[: width - 3] + "..."


_ABSENT = object()


def differences(recorded, now):
    """``key recorded -> now`` for each (dotted) key whose value differs."""
    a, b = _flat(recorded), _flat(now)
    return [
        f"{key} {_show(a.get(key, _ABSENT))} -> {_show(b.get(key, _ABSENT))}"
        for key in sorted(set(a) | set(b))
        if a.get(key, _ABSENT) != b.get(key, _ABSENT)
    ]


def data_fingerprint(manifests):
    """Rows and digests of ``train.csv`` / ``dev.csv`` (ID, speaker and duration: not the
    paths, so that moved data still match) and of the set of training speakers."""
    out, speakers = {}, set()
    for key in ("train_csv", "dev_csv"):
        h, rows = hashlib.sha1(), 0
        with open(manifests[key], newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            column = {name: i for i, name in enumerate(next(reader))}
            uid, spk, dur = column["ID"], column["spk_id"], column["duration"]
            for row in reader:
                h.update(f"{row[uid]},{row[spk]},{row[dur]}\n".encode())
                rows += 1
                if key == "train_csv":
                    speakers.add(row[spk])
        out[key[:-4]] = {"utterances": rows, "sha1": h.hexdigest()}
    labels = "\n".join(sorted(speakers)).encode()
    out["speakers"] = {"count": len(speakers), "sha1": hashlib.sha1(labels).hexdigest()}
    return out


def _data_differences(recorded, now, manifests=None):
    """``what recorded -> now`` notes, naming each manifest (its path in ``manifests``)."""
    notes = []
    for key in ("train", "dev"):
        a, b = recorded.get(key, {}), now[key]
        if a != b:
            name = (manifests or {}).get(f"{key}_csv", f"{key}.csv")
            notes.append(
                f"{name} {a.get('utterances')} -> {b['utterances']} utterances"
                + ("" if a.get("utterances") != b["utterances"] else " (other rows)")
            )
    a, b = recorded.get("speakers", {}), now["speakers"]
    if a != b:
        notes.append(
            f"{a.get('count')} -> {b['count']} training speakers"
            + ("" if a.get("count") != b["count"] else " (other ones)")
        )
    return notes


# ------------------------------------------------------------- the output folder
def _checkpoints(save_folder, complete=True):
    """The ``CKPT+*`` folders of ``save_folder`` with (``complete``) or without a
    ``CKPT.yaml``."""
    save = Path(save_folder)
    found = sorted(save.glob("CKPT+*")) if save.is_dir() else []
    return [p for p in found if p.is_dir() and (p / "CKPT.yaml").exists() == complete]


def remove_partial_checkpoints(save_folder):
    """Remove the ``CKPT+*`` folders without ``CKPT.yaml`` (a save that was killed or
    failed: SpeechBrain never loads them); return their names."""
    removed = []
    for folder in _checkpoints(save_folder, complete=False):
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder.name)
    return removed


class _EarlyLog(logging.Handler):
    """Log records before SpeechBrain's logging is set up: shown on stdout and kept, to be
    written to ``log.txt`` once it exists."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records = []
        self.setFormatter(logging.Formatter("%(name)s - %(message)s"))

    def emit(self, record):
        self.records.append(record)
        print(self.format(record), file=sys.stdout)


class RunFolder:
    """The checks of one run's output folder (see the module); :func:`open_run_folder`
    makes one. On processes other than the main one every method does nothing."""

    def __init__(self, hparams, settings, main=True):
        self.out = Path(hparams["output_folder"]).resolve()
        self.save = Path(hparams["save_folder"])
        self.hparams, self.settings, self.main = hparams, settings, main
        self.lock = RunLock(self.out / LOCK_FILE)
        self.record = None
        self.early = _EarlyLog()

    def _read_record(self):
        path = self.out / RECORD_FILE
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise InputError(
                f"{path}: unreadable ({err}); if this folder holds no run you need, delete "
                "the file (the next start records the settings again)"
            ) from None
        return record if isinstance(record, dict) else {}

    def open(self):
        """Lock the folder and compare the settings with the record (before any work)."""
        if not self.main:
            return self
        root = logging.getLogger()
        if not root.handlers:  # the data preparation's log, until SpeechBrain's is set up
            root.addHandler(self.early)
            root.setLevel(logging.INFO)
        self.out.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        atexit.register(self.lock.release)
        self.record = self._read_record()
        if self.record is not None and _checkpoints(self.save):
            defaults = {k: v for k, v in _run_option_defaults().items() if k in self.settings}
            recorded = {**defaults, **self.record.get("settings", {})}  # older records
            changed = differences(recorded, self.settings)
            if changed:
                self.lock.release()
                raise InputError(self._refusal("with other settings", changed))
        return self

    def _refusal(self, what, changed):
        return (
            f"{self.out}: this output folder holds a run {what} ({'; '.join(changed)}); "
            "nothing was changed in it. Resume it with its recorded settings (see "
            f"{RECORD_FILE}; number_of_epochs, num_workers, precision, --device and where "
            "the data lie may change), or train into a new folder: --output_folder NEW"
        )

    def check_data(self, manifests):
        """Compare the training data with the record, check the label encoder, and write
        the record of a new run (main process; every process waits for it)."""
        from speechbrain.utils.distributed import ddp_barrier

        if self.main:
            self._check_data(manifests)
        ddp_barrier()

    def _check_data(self, manifests):
        data = data_fingerprint(manifests)
        resumed = bool(_checkpoints(self.save))
        if resumed and self.record is not None and "data" in self.record:
            changed = _data_differences(self.record["data"], data, manifests)
            if changed:
                self.lock.release()
                raise InputError(self._refusal("trained on other data", changed))
        self._check_label_encoder(manifests, resumed)
        if resumed and self.record is None:
            logger.warning(
                "%s has checkpoints but no %s (a folder made before 0.2): its settings "
                "cannot be compared; recording the current ones",
                self.out,
                RECORD_FILE,
            )
        if not resumed or self.record is None or "data" not in self.record:
            record = {
                "format": 1,
                "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": sys.argv,
                "settings": self.settings,
                "data": data,
            }
            atomic_write_text(self.out / RECORD_FILE, json.dumps(record, indent=2) + "\n")
            self.record = record

    def _check_label_encoder(self, manifests, resumed):
        from speechbrain.dataio.encoder import CategoricalEncoder

        path = self.save / "label_encoder.txt"
        if not path.exists():
            return
        encoder = CategoricalEncoder()
        try:
            encoder.load(path)
            labels = set(encoder.lab2ind)
        except Exception:  # empty, cut short, not an encoder file
            labels = set()
        if not resumed:  # no checkpoint depends on it: a leftover of an earlier run
            logger.warning("%s: no checkpoint uses it; made anew from the data", path)
            path.unlink()
            return
        if not labels:
            same = self.record is not None and self.record.get("data") == data_fingerprint(
                manifests
            )
            if not same:
                raise InputError(
                    f"{path}: empty or unreadable, and this folder has no record of its "
                    "training data to rebuild it from; restore the file, or train into a "
                    "new folder: --output_folder NEW"
                )
            logger.warning("%s: empty or unreadable; rebuilt from %s", path, manifests["train_csv"])
            path.unlink()
            return
        with open(manifests["train_csv"], newline="", encoding="utf-8") as f:
            speakers = {row["spk_id"] for row in csv.DictReader(f)}
        if labels != speakers:
            new = sorted(speakers - labels)
            raise InputError(
                f"{path}: holds {len(labels)} speakers, the training data "
                f"{len(speakers)} ({len(new)} not in it{': ' + ', '.join(new[:3]) if new else ''}"
                f"); this folder was trained on other data: train into a new folder "
                "(--output_folder NEW)"
            )

    def started(self):
        """After SpeechBrain's experiment set-up: hand the early log to ``log.txt``, make
        log-file errors one note, name the train log on write errors, remove partial
        checkpoints."""
        root = logging.getLogger()
        if self.early in root.handlers:
            root.removeHandler(self.early)
        for handler in root.handlers:
            if isinstance(handler, logging.FileHandler):
                for record in self.early.records:
                    handler.handle(record)
                handler.handleError = _quiet(handler, root)
        self.early.records = []
        train_logger = self.hparams.get("train_logger")
        if hasattr(train_logger, "log_stats") and hasattr(train_logger, "save_file"):
            train_logger.log_stats = _naming(train_logger.log_stats, train_logger.save_file)
        if self.main:
            for name in remove_partial_checkpoints(self.save):
                logger.warning("removed %s: a checkpoint whose save did not finish", name)

    def release(self):
        """Release the lock and the hold of the manifests (also done when the process
        ends)."""
        self.lock.release()
        if self.hparams.get("manifest_folder"):
            release_manifests(self.hparams["manifest_folder"])


def _quiet(handler, root):
    """A ``handleError`` that prints one note and detaches ``handler`` (instead of a
    traceback per record, e.g. on a full disk)."""

    def handle_error(record):
        err = sys.exc_info()[1]
        root.removeHandler(handler)
        stream, handler.stream = handler.stream, None  # nothing left to flush at exit
        try:
            stream.close()
        except (OSError, AttributeError):
            pass
        print(
            f"note: cannot write the log file {handler.baseFilename} ({err}); "
            "logging to the console only",
            file=sys.stderr,
        )

    return handle_error


def _naming(log_stats, path):
    """``log_stats`` whose write errors name the train log."""

    def wrapped(*args, **kwargs):
        try:
            return log_stats(*args, **kwargs)
        except OSError as err:
            raise OSError(err.errno, err.strerror, str(path)) from err

    return wrapped


def open_run_folder(hparams, hparams_file, overrides, run_opts=None):
    """The :class:`RunFolder` of the run ``hparams`` and ``run_opts`` describe: its output
    and manifest folders checked writable (every process: in seconds, not after data
    preparation), then locked and its settings compared with the record (main process:
    rank 0 or no DDP)."""
    from speechbrain.utils.distributed import get_rank

    for key in ("output_folder", "manifest_folder"):
        check_writable_dir(hparams[key], key)
    settings = run_settings(hparams_file, overrides, hparams, run_opts)
    return RunFolder(hparams, settings, main=get_rank() in (None, 0)).open()
