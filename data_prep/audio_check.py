"""Read the header of every referenced audio file once, in parallel, and drop bad entries.

The checks are ``maskproxy_losses.data.audio.probe``'s: the file exists, libsndfile reads it,
16 kHz, mono (any rate and channel count with ``convert``, for ``--resample``), at least
``MIN_SAMPLES`` samples.
"""

import functools
import multiprocessing

from tqdm import tqdm

from maskproxy_losses.data.audio import probe

__all__ = ["probe_all", "check_audio"]


RESAMPLE_HINT = (
    "; maskproxy prepare --resample (recipes: --resample True) writes 16 kHz mono copies"
)


def _probe_chunk(paths, convert=False):
    out = []
    for p in paths:
        dur, err = probe(p, convert=convert)
        if err and (err.startswith("sample rate") or "expected mono" in err):
            err += RESAMPLE_HINT
        out.append((dur, err))
    return out


def probe_all(paths, num_workers=2, chunk=256, convert=False):
    """``probe`` every path, in ``num_workers`` processes, with a progress bar."""
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    bar = tqdm(total=len(paths), desc="reading audio headers", unit="file", disable=None)
    results = []
    with bar:
        if num_workers > 1 and len(chunks) > 1:
            with multiprocessing.get_context().Pool(num_workers) as pool:
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
    ``({path: duration_s}, usable train, usable trials)``. With ``convert`` files of any
    rate and channel count are usable (their 16 kHz copies are written afterwards)."""
    paths = list(dict.fromkeys([u.path for u in train] + [u.path for t in trials for u in t[1:]]))
    durations, errors = {}, {}
    for path, (dur, err) in zip(paths, probe_all(paths, num_workers, convert=convert)):
        if err is None:
            durations[path] = dur
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
