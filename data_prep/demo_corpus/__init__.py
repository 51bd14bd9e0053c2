"""A small synthetic speaker-verification corpus in the VoxCeleb list formats.

The parts: :mod:`.signals` (the signal model: speakers, sessions, utterances),
:mod:`.writer` (:func:`generate_corpus`: wav files, training and trial lists, resumable),
:mod:`.prepare` (:func:`prepare_builtin`: the corpus and its manifests as the recipes use
them) and :mod:`.baseline` (an untrained reference scorer). Command line: ``maskproxy
demo-corpus --output-dir D`` (or ``python -m data_prep.demo_corpus``). Paths in the lists
are relative to ``D/wav``, so ``maskproxy prepare --train-list D/train_list.txt
--train-root D/wav --trials D/veri_list.txt --output-dir OUT`` prepares it like VoxCeleb.
"""

from data_prep.demo_corpus.baseline import baseline_eer, baseline_scores, mean_logmel
from data_prep.demo_corpus.prepare import BUILTIN_DEV_PER_SPEAKER, prepare_builtin
from data_prep.demo_corpus.signals import speaker_plan, synth_utterance
from data_prep.demo_corpus.writer import GENERATOR_VERSION, IN_PROGRESS, MARKER, generate_corpus

__all__ = [
    "generate_corpus",
    "prepare_builtin",
    "baseline_scores",
    "baseline_eer",
    "mean_logmel",
    "speaker_plan",
    "synth_utterance",
    "MARKER",
    "IN_PROGRESS",
    "GENERATOR_VERSION",
    "BUILTIN_DEV_PER_SPEAKER",
]
