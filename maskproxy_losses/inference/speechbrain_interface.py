"""SpeechBrain's ``SpeakerRecognition`` deciding with the model directory's calibration.

SpeechBrain's ``SpeakerRecognition.verify_files`` / ``verify_batch`` accept a pair when the
cosine exceeds a fixed 0.25, whatever the model: a 2-epoch model of this project accepted
a different-speaker pair at a cosine of 0.9997. :class:`CalibratedSpeakerRecognition` is
the same SpeechBrain interface loaded the same way (``from_hparams(source=MODEL_DIR,
savedir=...)``, from a local folder or any source SpeechBrain fetches from) that also
fetches ``calibration.json`` and decides as the rest of this package does: accept when the
calibrated LLR reaches the Bayes threshold ``log((1 - p) / p)`` of the target prior ``p``
(``p_target``, default 0.01). Scores stay cosines; ``llr(score)`` gives the LLRs, and an
explicit ``threshold=`` keeps SpeechBrain's fixed-cosine behaviour. A directory without
``calibration.json`` is refused (use ``SpeakerRecognition`` and choose a threshold). The
model card (``README.md``) lists the equivalent cosine thresholds for plain
``SpeakerRecognition``.

Note that ``from_hparams`` loads ``hyperparams.yaml`` with HyperPyYAML, as SpeechBrain does
(it runs what the file names): use it for directories you trust, or
:class:`maskproxy_losses.inference.api.Verifier`, which checks the file first.

Example
-------
>>> import json, os, tempfile, torch
>>> from maskproxy_losses import ResNetSE34L, export_model
>>> from maskproxy_losses.scoring.calibration import Calibration
>>> _ = torch.manual_seed(0)
>>> cal = Calibration(scale=20.0, offset=-19.0)
>>> d = export_model(os.path.join(tempfile.mkdtemp(), "m"),
...     ResNetSE34L(channels=(8, 8, 16, 16), blocks=(1, 1, 1, 1), emb_dim=8).eval(),
...     extra_files={"calibration.json": json.dumps(cal.to_dict())})
>>> sr = CalibratedSpeakerRecognition.from_hparams(source=str(d), savedir=tempfile.mkdtemp())
>>> round(sr.cosine_threshold(0.01), 4)  # (log(99) + 19) / 20
1.1798
>>> score, accept = sr.verify_batch(torch.rand(1, 16000) - 0.5, torch.rand(1, 16000) - 0.5)
>>> bool(accept[0]) == bool(sr.llr(score)[0] >= 4.59512)
True
"""

import json
import os
from pathlib import Path

import torch
from speechbrain.inference.speaker import SpeakerRecognition

from maskproxy_losses.scoring.calibration import CALIBRATION_FILE, Calibration, bayes_threshold

__all__ = ["CalibratedSpeakerRecognition"]


def _fetch_calibration(source, savedir, name):
    """The path of ``name`` from ``source`` (a folder, or anything SpeechBrain fetches)."""
    local = Path(str(source)) / name
    if local.is_file():
        return local
    from speechbrain.utils.fetching import fetch

    return Path(fetch(filename=name, source=source, savedir=savedir))


class CalibratedSpeakerRecognition(SpeakerRecognition):
    """``SpeakerRecognition`` whose decisions use the directory's ``calibration.json``."""

    @classmethod
    def from_hparams(
        cls,
        source,
        hparams_file="hyperparams.yaml",
        p_target=0.01,
        calibration_file=CALIBRATION_FILE,
        **kwargs,
    ):
        """``SpeakerRecognition.from_hparams`` plus the calibration of ``source``;
        ``p_target`` is the target prior of the decisions (``verify_*(p_target=...)``
        changes it per call)."""
        bayes_threshold(p_target)  # checks it
        try:
            path = _fetch_calibration(source, kwargs.get("savedir"), calibration_file)
            calibration = Calibration.load(path)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"{source}: no usable {calibration_file} ({err}); CalibratedSpeakerRecognition "
                "decides with a model's calibration: use SpeakerRecognition and a threshold "
                "of your own for a model without one"
            ) from None
        model = super().from_hparams(source, hparams_file=hparams_file, **kwargs)
        model.calibration, model.p_target = calibration, float(p_target)
        model.calibration_path = os.fspath(path)
        return model

    def llr(self, scores):
        """The calibrated log-likelihood ratios of cosine ``scores`` (a tensor)."""
        llr = self.calibration(scores.detach().float().cpu().numpy())
        return torch.as_tensor(llr, dtype=torch.float64)

    def cosine_threshold(self, p_target=None):
        """The cosine at which the LLR reaches the Bayes threshold of ``p_target``."""
        p = self.p_target if p_target is None else float(p_target)
        return (bayes_threshold(p) - self.calibration.offset) / self.calibration.scale

    def verify_batch(
        self, wavs1, wavs2, wav1_lens=None, wav2_lens=None, threshold=None, p_target=None
    ):
        """``(cosine scores, decisions)`` as ``SpeakerRecognition.verify_batch``; without
        ``threshold`` a pair is accepted when its LLR reaches the Bayes threshold of
        ``p_target`` (default: the one given to ``from_hparams``)."""
        if threshold is not None:
            return super().verify_batch(wavs1, wavs2, wav1_lens, wav2_lens, threshold)
        score, _ = super().verify_batch(wavs1, wavs2, wav1_lens, wav2_lens)
        p = self.p_target if p_target is None else float(p_target)
        accept = self.llr(score) >= bayes_threshold(p)
        return score, accept.to(score.device)

    def verify_files(self, path_x, path_y, threshold=None, p_target=None, **kwargs):
        """``(cosine score, decision)`` of two audio files (read with ``load_audio``, which
        takes ``kwargs``), decided as :meth:`verify_batch` decides."""
        x = self.load_audio(path_x, **kwargs).unsqueeze(0)
        y = self.load_audio(path_y, **kwargs).unsqueeze(0)
        score, decision = self.verify_batch(x, y, threshold=threshold, p_target=p_target)
        return score[0], decision[0]

    def calibration_info(self):
        """The calibration as a dict (what ``calibration.json`` holds)."""
        return json.loads(json.dumps(self.calibration.to_dict()))
