"""Read the header of every referenced audio file once, in parallel, and drop bad entries.

The checks are ``maskproxy_losses.data.audio.probe``'s: the file exists, libsndfile reads it,
16 kHz, mono (any rate and channel count with ``convert``, for ``--resample``), at least
``MIN_SAMPLES`` samples, and float files hold no NaN / Inf. Each usable file's size and
modification time are kept for the manifests, so that a reuse can tell a file changed
since (``data_prep.manifests.check_files``). The worker processes ignore Ctrl-C: the main
process alone stops, with one line.
"""

import functools
import multiprocessing
import os
import signal

from tqdm import tqdm

from maskproxy_losses.data.audio import probe

__all__ = ["probe_all", "check_audio"]


RESAMPLE_HINT = (
    "; maskproxy prepare --resample (recipes: --resample True) writes 16 kHz mono copies"
)


def _probe_stat(path, convert=False):
    """``probe(path)`` plus the file's ``(size, mtime_ns)`` (None when unusable)."""
    duration, err = probe(path, convert=convert)
    if err is not None:
        if err.startswith("sample rate") or "expected mono" in err:
            err += RESAMPLE_HINT
        return duration, err, None
    st = os.stat(path)
    return duration, None, (st.st_size, st.st_mtime_ns)


def _probe_chunk(paths, convert=False):
    return [_probe_stat(p, convert) for p in paths]


def _ignore_sigint():
    """Pool initializer: the workers ignore Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _pool(num_workers):
    """A process pool whose workers ignore Ctrl-C. While they are forked, a Ctrl-C is only
    noted (a worker between its fork and its initializer notes it too, harmlessly) and is
    raised here once they are: it can neither kill a half-started worker nor be lost in
    the fork handlers."""
    caught = []
    try:
        previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    except ValueError:  # not the main thread: no handler to install
        return multiprocessing.get_context().Pool(num_workers, _ignore_sigint)
    try:
        pool = multiprocessing.get_context().Pool(num_workers, _ignore_sigint)
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        pool.terminate()
        raise KeyboardInterrupt
    return pool


def probe_all(paths, num_workers=2, chunk=256, convert=False):
    """``(duration, problem, (size, mtime_ns))`` of every path (``probe`` and a stat), in
    ``num_workers`` processes, with a progress bar."""
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    bar = tqdm(total=len(paths), desc="reading audio headers", unit="file", disable=None)
    results = []
    with bar:
        if num_workers > 1 and len(chunks) > 1:
            with _pool(num_workers) as pool:
                for part in pool.imap(functools.partial(_probe_chunk, convert=convert), chunks):
                    results += part
                    bar.update(len(part))
        else:
            for c in chunks:
                results += _probe_chunk(c, convert)
                bar.update(len(c))
    return results


def check_audio(train, trials, problems, num_workers=2, convert=False):
    """Probe each distinct file of ``train`` (``Utt``) and ``trials`` (``(label, Utt, Utt)``)
    once; report each bad file once per list as ``file:line: what``; return
    ``({path: (duration_s, size, mtime_ns)}, usable train, usable trials)``. With
    ``convert`` files of any rate and channel count are usable (their 16 kHz copies are
    written afterwards)."""
    paths = list(dict.fromkeys([u.path for u in train] + [u.path for t in trials for u in t[1:]]))
    durations, errors = {}, {}
    for path, (dur, err, stat) in zip(paths, probe_all(paths, num_workers, convert=convert)):
        if err is None:
            durations[path] = (dur, *stat)
        else:
            errors[path] = err
    reported = set()

    def ok(utt):
        if utt.path not in errors:
            return True
        key = (utt.path, utt.where.rsplit(":", 1)[0])  # once per file and list
        if key not in reported:
            reported.add(key)
            problems.append(f"{utt.where}: {errors[utt.path]}")
        return False

    train = [u for u in train if ok(u)]
    trials = [t for t in trials if all([ok(t[1]), ok(t[2])])]
    return durations, train, trials
