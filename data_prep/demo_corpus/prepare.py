"""The built-in corpus as every recipe uses it: generated when absent, then prepared.

Example (about 10 s: the default corpus)::

    from data_prep.demo_corpus import prepare_builtin
    manifests = prepare_builtin("data/demo_corpus")   # train.csv, dev.csv, trials, ...
"""

import os

from data_prep.demo_corpus.writer import MARKER, generate_corpus, read_json
from data_prep.voxceleb import prepare_voxceleb

__all__ = ["BUILTIN_DEV_PER_SPEAKER", "prepare_builtin"]

# Dev utterances held out per training speaker of the built-in corpus (3 x 60 speakers
# give 360 dev trials for the per-epoch validation EER).
BUILTIN_DEV_PER_SPEAKER = 3


def prepare_builtin(data_folder, manifest_folder=None, corpus_seed=0, prep_seed=1986):
    """The built-in corpus and its manifests, as every recipe uses them.

    Generates the default corpus in ``data_folder`` unless a complete corpus is
    already there (whatever its size), then runs ``prepare_voxceleb`` on its lists
    (outputs reused when up to date). Returns ``prepare_voxceleb``'s paths.
    """
    root = os.path.join(data_folder, "wav")
    lists = {
        "train_list": os.path.join(data_folder, "train_list.txt"),
        "trials": os.path.join(data_folder, "veri_list.txt"),
    }
    if read_json(os.path.join(data_folder, MARKER)) is None:
        generate_corpus(data_folder, seed=corpus_seed)
    return prepare_voxceleb(
        manifest_folder or os.path.join(data_folder, "manifests"),
        train_root=root,
        dev_share=BUILTIN_DEV_PER_SPEAKER,
        seed=prep_seed,
        **lists,
    )
