"""Export a model directory as one ONNX graph: 16 kHz waveform -> speaker embedding.

Any directory the project writes (``maskproxy_losses.inference.export.export_model`` after
training, or the converter of the authors' checkpoint; "fbank" or "authors" front end)
becomes a single ONNX file holding the whole pipeline ``compute_features ->
mean_var_norm -> embedding_model``:

* input ``wavs``: float32 ``[batch, samples]``, 16 kHz, values in [-1, 1]; both axes
  are dynamic and named ``batch`` and ``samples`` (at least ``MIN_SAMPLES`` = 800);
* output ``embeddings``: float32 ``[batch, emb_dim]``, the same numbers as
  ``EncoderClassifier.encode_batch(wavs)`` (which returns ``[batch, 1, emb_dim]``),
  i.e. ``encode_batch(wavs).squeeze(1)``;
* metadata (:func:`onnx_metadata`, ``OnnxEmbedder(path).metadata``): the model directory's
  model card as JSON (``model_card``), its ``calibration.json`` (``calibration``), and
  ``sample_rate``, ``frontend``, ``n_mels``, ``embedding_dim``, ``encoder``, ``loss``,
  ``input``, ``output``, ``package_version``, ``package_commit``, ``license``.

Every row is taken at full length: the graph has no relative-lengths input, so a
zero-padded batch gives the embeddings of the padded signals. Embed utterances of
different lengths one by one or in batches of equal length.

In the graph the front end's STFT is a strided convolution (:class:`ConvSTFT`, same
numbers to ~1e-6) instead of the ONNX ``DFT`` operator, which onnxruntime runs slowly.

The file is written to a hidden temporary file beside ``OUT.onnx``, checked with
``onnx.checker`` and run once with onnxruntime against PyTorch on a random batch,
then renamed into place: a failed export leaves nothing behind.

Needs the optional packages ``onnx``, ``onnxscript`` and ``onnxruntime``
(``pip install onnx onnxscript onnxruntime``, or ``pip install '.[onnx]'`` in a checkout).

Usage::

    maskproxy export-onnx MODEL_DIR OUT.onnx [--overwrite] [--debug]

    from maskproxy_losses.inference.onnx_export import export_onnx
    from maskproxy_losses.inference.onnx_runtime import OnnxEmbedder   # no torch import
    export_onnx("exported/", "model.onnx")
    emb = OnnxEmbedder("model.onnx")(wavs)   # numpy [batch, samples] -> [batch, emb_dim]
"""

import contextlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from maskproxy_losses.data.audio import MIN_SAMPLES, SAMPLE_RATE
from maskproxy_losses.inference.model_dir import MODULE_KEYS, load_modules, model_inputs
from maskproxy_losses.inference.onnx_runtime import INSTALL_HINT, OnnxEmbedder
from maskproxy_losses.utils.errors import InputError
from maskproxy_losses.utils.files import (
    check_not_input,
    naming_path,
    remove_stale_temps,
    temp_path,
)

__all__ = [
    "export_onnx",
    "onnx_metadata",
    "WaveformEmbedder",
    "ConvSTFT",
    "relative_error",
    "INSTALL_HINT",
]


def _require_onnx():
    """Import onnx, onnxscript and onnxruntime or raise ``InputError`` saying how to install."""
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise InputError(
            f"ONNX export needs the package(s) {', '.join(missing)}, which are not installed: "
            + INSTALL_HINT
        )


def relative_error(out, ref):
    """``max|out - ref| / max|ref|`` over the whole array and the worst of the same per row.

    >>> relative_error(np.array([[1.0, 2.0], [0.1, 0.0]]), np.array([[1.0, 2.0], [0.2, 0.0]]))
    (0.05, 0.5)
    """
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    out, ref = out.reshape(len(ref), -1), ref.reshape(len(ref), -1)
    diff = np.abs(out - ref)
    whole = diff.max() / np.abs(ref).max()
    rows = (diff.max(axis=1) / np.abs(ref).max(axis=1)).max()
    return float(whole), float(rows)


class WaveformEmbedder(nn.Module):
    """``wavs [batch, samples] -> embeddings [batch, emb_dim]`` for full-length waveforms.

    ``reference(wavs)`` computes the same with the calls of ``encode_batch``
    (relative lengths 1.0 passed to ``mean_var_norm`` and ``embedding_model``);
    ``forward`` passes none to ``embedding_model`` (same result: no frame is padding),
    which keeps ResNetSE34L's padding branch out of the exported graph.

    Example
    -------
    >>> from maskproxy_losses.models.resnetse34l import ResNetSE34L
    >>> from maskproxy_losses.models.frontend import build_frontend
    >>> model = ResNetSE34L(blocks=(1, 1, 1, 1), emb_dim=8).eval()
    >>> embedder = WaveformEmbedder(*build_frontend("authors"), model)
    >>> wavs = torch.rand(2, 8000) * 2 - 1
    >>> embedder(wavs).shape
    torch.Size([2, 8])
    >>> bool(torch.allclose(embedder(wavs), embedder.reference(wavs), atol=1e-6))
    True
    """

    def __init__(self, compute_features, mean_var_norm, embedding_model):
        super().__init__()
        self.compute_features = compute_features
        self.mean_var_norm = mean_var_norm
        self.embedding_model = embedding_model

    def forward(self, wavs):
        """wavs: float [batch, samples] in [-1, 1] -> [batch, emb_dim]."""
        full = torch.ones(wavs.shape[0], device=wavs.device)
        feats = self.mean_var_norm(self.compute_features(wavs.float()), full)
        return self.embedding_model(feats).flatten(1)

    @torch.no_grad()
    def reference(self, wavs):
        """What ``EncoderClassifier.encode_batch(wavs).squeeze(1)`` returns."""
        full = torch.ones(wavs.shape[0], device=wavs.device)
        feats = self.mean_var_norm(self.compute_features(wavs.float()), full)
        return self.embedding_model(feats, full).flatten(1)


class ConvSTFT(nn.Module):
    """``torch.stft`` (centred, one-sided, not normalised) as one strided ``conv1d``.

    onnxruntime runs ONNX ``DFT`` slowly, above all for sizes that are not a power of
    two (SpeechBrain's Fbank uses ``n_fft=400``); a convolution with the windowed
    cosine / sine basis is a plain matrix product. ``power=False`` returns
    SpeechBrain's ``STFT`` layout ``[batch, frames, bins, 2]``; ``power=True`` the
    power spectrogram ``[batch, bins, frames]`` of ``torchaudio.transforms.Spectrogram``.

    >>> x = torch.randn(2, 4000)
    >>> window = torch.hann_window(400)
    >>> ref = torch.stft(x, 512, 160, 400, window, center=True, pad_mode="reflect",
    ...                  return_complex=True).abs() ** 2
    >>> conv = ConvSTFT(512, 160, window, pad_mode="reflect", power=True)
    >>> bool(torch.allclose(conv(x), ref, rtol=1e-3, atol=1e-3))
    True
    """

    def __init__(self, n_fft, hop_length, window, center=True, pad_mode="constant", power=False):
        super().__init__()
        self.n_fft, self.hop_length, self.center = int(n_fft), int(hop_length), center
        self.pad_mode, self.power = pad_mode, power
        win = torch.zeros(self.n_fft, dtype=torch.float64)
        left = (self.n_fft - len(window)) // 2  # torch.stft centres a shorter window
        win[left : left + len(window)] = window.detach().to(torch.float64).cpu()
        k = torch.arange(self.n_fft // 2 + 1, dtype=torch.float64)[:, None]
        angle = 2 * torch.pi * k * torch.arange(self.n_fft, dtype=torch.float64)[None] / self.n_fft
        basis = torch.cat([torch.cos(angle) * win, -torch.sin(angle) * win])
        self.register_buffer("basis", basis.float()[:, None, :], persistent=False)

    def forward(self, wavs):
        """wavs: [batch, samples] -> see the class docstring."""
        x = wavs.float()[:, None, :]
        if self.center:
            half = self.n_fft // 2
            x = nn.functional.pad(x, (half, half), mode=self.pad_mode)
        spec = nn.functional.conv1d(x, self.basis, stride=self.hop_length)  # [B, 2F, T]
        real, imag = spec.chunk(2, dim=1)
        if self.power:
            return real * real + imag * imag
        return torch.stack([real, imag], dim=-1).transpose(1, 2)


def _swap_stft(compute_features):
    """A copy of ``compute_features`` whose SpeechBrain ``STFT`` / torchaudio power
    ``Spectrogram`` submodules are ``ConvSTFT`` (others are left as they are)."""
    import copy

    import torchaudio
    from speechbrain.processing.features import STFT

    features = copy.deepcopy(compute_features)
    swaps = {}
    for name, module in features.named_modules():
        if isinstance(module, STFT) and module.onesided and not module.normalized_stft:
            swaps[name] = ConvSTFT(
                module.n_fft, module.hop_length, module.window, module.center, module.pad_mode
            )
        elif (
            isinstance(module, torchaudio.transforms.Spectrogram)
            and module.power == 2
            and module.onesided
            and not module.normalized
            and module.pad == 0
        ):
            swaps[name] = ConvSTFT(
                module.n_fft,
                module.hop_length,
                module.window,
                module.center,
                module.pad_mode,
                power=True,
            )
    for name, new in swaps.items():
        if not name:
            return new
        parent, _, attr = name.rpartition(".")
        setattr(features.get_submodule(parent) if parent else features, attr, new)
    return features


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's progress lines and warnings (torchvision ops not found...)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _check_output_path(out, overwrite):
    if out.is_dir():
        raise InputError(f"{out}: is a directory; give the path of the .onnx file to write")
    if out.exists() and not overwrite:
        raise InputError(f"{out}: exists (use --overwrite to replace it)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(
            f"{out.parent}: cannot create the output folder ({err.strerror})"
        ) from None
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise InputError(f"{out.parent}: output folder is not writable")


def onnx_metadata(model_dir, modules):
    """The metadata ``{key: string}`` the ONNX file carries: the directory's model card
    (its ``README.md``; described afresh from ``modules`` for a directory without one),
    its calibration and the facts a runtime needs (sample rate, front end, sizes)."""
    import json

    from maskproxy_losses.inference.model_card import describe_encoder, read_model_card
    from maskproxy_losses.inference.model_dir import HPARAMS_FILE
    from maskproxy_losses.utils.provenance import package_info

    card = read_model_card(model_dir)
    if card is None or not isinstance(card.get("model"), dict):
        hparams_text = (Path(model_dir) / HPARAMS_FILE).read_text(encoding="utf-8")
        frontend = "authors" if "AuthorsFbank" in hparams_text else "fbank"
        n_mels = getattr(modules["embedding_model"], "init_kwargs", {}).get("n_mels", 40)
        model = describe_encoder(
            modules["embedding_model"],
            modules["compute_features"],
            modules["mean_var_norm"],
            frontend,
            n_mels,
        )
        card = {"model": model, "training": None, "source": {"how": "no model card"}}
    model, training = card["model"], card.get("training") or {}
    package = package_info()
    meta = {
        "model_card": json.dumps(card, sort_keys=True),
        "sample_rate": str(model.get("sample_rate", SAMPLE_RATE)),
        "frontend": str(model.get("frontend")),
        "n_mels": str(model.get("n_mels")),
        "embedding_dim": str(model.get("embedding_dim")),
        "encoder": str(model.get("encoder_class", model.get("encoder"))),
        "loss": str(training.get("loss", "unknown")),
        "input": f"wavs: float32 [batch, samples], {SAMPLE_RATE} Hz mono in [-1, 1], "
        f"samples >= {MIN_SAMPLES}, every row at full length",
        "output": "embeddings: float32 [batch, embedding_dim], compared by cosine",
        "package_version": package["version"],
        "package_commit": str(package["commit"]),
        "license": package["license"],
    }
    cal = Path(model_dir) / "calibration.json"
    if cal.is_file():
        meta["calibration"] = cal.read_text(encoding="utf-8")
    return meta


def _name_axes(graph, names):
    """Rename the symbolic dims of the graph's first input to ``names`` everywhere."""
    dims = graph.input[0].type.tensor_type.shape.dim
    rename = {d.dim_param: new for d, new in zip(dims, names) if d.dim_param}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param in rename:
                d.dim_param = rename[d.dim_param]


def _write_metadata(path, meta):
    import onnx

    model = onnx.load(str(path))
    _name_axes(model.graph, ("batch", "samples"))
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = "speaker embeddings: 16 kHz waveform -> embedding (maskproxy-losses)"
    onnx.save(model, str(path))


def export_onnx(
    model_dir,
    out_path,
    opset=None,
    overwrite=False,
    tolerance=1e-4,
    seed=0,
    conv_stft=True,
    trust=False,
):
    """Export model directory ``model_dir`` to the ONNX file ``out_path``.

    Arguments
    ---------
    model_dir : str or Path
        Directory with ``hyperparams.yaml`` + ``embedding_model.ckpt``.
    out_path : str or Path
        The ``.onnx`` file to write (one self-contained file).
    opset : int or None
        ONNX opset version (None: the exporter's default).
    overwrite : bool
        Replace an existing ``out_path``.
    tolerance : float
        Largest relative difference (``max|onnx - torch| / max|torch|``, per row)
        accepted in the check run; a larger one raises ``InputError``.
    seed : int
        Seed of the random waveforms used for tracing and for the check.
    trust : bool
        Skip the check of ``hyperparams.yaml`` against what the export writes.
    conv_stft : bool
        Compute the front end's STFT as a convolution (``ConvSTFT``; 1.5-2x faster
        in onnxruntime) rather than with the ONNX ``DFT`` operator. The check run
        compares with the unchanged PyTorch modules either way.

    Returns
    -------
    Path
        The absolute path of the written file.

    Raises ``InputError`` for bad input (see ``model_dir.load_modules``; an existing output
    without ``overwrite``, an output folder that cannot be written, missing ONNX
    packages); nothing is written then.
    """
    _require_onnx()
    import onnx

    out = Path(out_path).absolute()
    _check_output_path(out, overwrite)
    check_not_input(out, model_inputs(model_dir), "OUT.onnx")
    _, modules = load_modules(model_dir, trust)
    compute_features, mean_var_norm, embedding_model = (modules[k] for k in MODULE_KEYS)
    embedder = WaveformEmbedder(compute_features, mean_var_norm, embedding_model).eval()
    graph = embedder
    if conv_stft:
        graph = WaveformEmbedder(_swap_stft(compute_features), mean_var_norm, embedding_model)

    gen = torch.Generator().manual_seed(seed)
    example = torch.rand(2, SAMPLE_RATE, generator=gen) * 2 - 1
    # A batch size and a length other than the traced ones, to catch unrolled shapes.
    check = torch.rand(3, int(0.57 * SAMPLE_RATE), generator=gen) * 1.6 - 0.8

    remove_stale_temps(out.parent)
    tmp = Path(temp_path(out))
    try:
        # Automatic dynamic dims (named Dims with ranges are refused by torch 2.7's exporter
        # for this graph); the symbols are renamed "batch" / "samples" afterwards.
        dynamic = {"wavs": {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC}}
        try:
            with _quiet_exporter(), torch.no_grad():
                torch.onnx.export(
                    graph.eval(),
                    (example,),
                    str(tmp),
                    dynamo=True,
                    input_names=["wavs"],
                    output_names=["embeddings"],
                    dynamic_shapes=dynamic,
                    opset_version=opset,
                    external_data=False,
                    verbose=False,
                )
        except Exception as err:  # unsupported operator, bad opset, ...
            disk = err if isinstance(err, OSError) else err.__cause__
            if isinstance(disk, OSError):  # a full disk: not the exporter's fault
                raise naming_path(disk, tmp, out) from err
            detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise InputError(
                f"{model_dir}: the ONNX exporter failed ({type(err).__name__}: "
                f"{detail}); try another --opset, or --debug for the traceback"
            ) from err
        _write_metadata(tmp, onnx_metadata(model_dir, modules))
        onnx.checker.check_model(str(tmp))
        got = OnnxEmbedder(tmp)(check.numpy())
        _, err = relative_error(got, embedder.reference(check).numpy())
        if not err <= tolerance:
            raise InputError(
                f"{model_dir}: the ONNX graph differs from PyTorch by {err:.3g} (relative) on a "
                f"test batch, more than the tolerance {tolerance:g}; nothing written"
            )
        os.replace(tmp, out)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(err, OSError):
            raise naming_path(err, tmp, out) from err
        raise
    return out
