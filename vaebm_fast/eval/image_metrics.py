"""FID, KID and Inception Score of image samples, computed by torchmetrics.

Why torchmetrics (of torchmetrics, torch-fidelity and clean-fid, all established): its
``FrechetInceptionDistance``, ``KernelInceptionDistance`` and ``InceptionScore`` take batches of
tensors and any feature network as an ``nn.Module``. That lets the same code score 8x8 digits
with the small network the toolkit trains (:func:`vaebm_fast.eval.train_digits_features`, no
download) and natural images with the standard Inception-v3; it is pure Python on top of torch.
torch-fidelity and clean-fid are built around their own Inception (downloaded when no
file is given) and image folders or generator callbacks; torch-fidelity also pulls torchvision.

Nothing downloads here. Every metric is given an ``nn.Module``, never an integer feature size
(an integer makes torchmetrics build an Inception that fetches its weights from GitHub). The
standard Inception is :func:`inception_features`: torchmetrics' ``NoTrainInceptionV3`` (the
network of torch-fidelity, the port of the TensorFlow FID Inception) built from a weights file the
user supplies.

Images are float tensors or arrays ``[N, C, H, W]`` in [0, 1]; the feature network maps a batch
to ``[N, D]``. Features are computed in batches under ``torch.no_grad`` on the network's device,
with the network in eval mode (its mode is restored afterwards); the metric's state lives on
the same device. KID and IS draw random subsets: they use their own seed inside
``torch.random.fork_rng``, so the scores are reproducible and the caller's global random state
is left as it was.

Install: ``pip install 'vaebm_fast[eval]'`` (torchmetrics); the Inception network also needs
``pip install torch-fidelity``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Iterator, Union

import numpy as np
import torch
from torch import nn

from .._requirements import MissingExtraError, missing_extra

__all__ = ["frechet_distance", "kernel_distance", "inception_score", "inception_features",
           "INCEPTION_WEIGHTS_URL"]

ArrayLike = Union[torch.Tensor, np.ndarray]

# The FID Inception weights (converted from TensorFlow's pt_inception-2015-12-05) that
# torch-fidelity and torchmetrics download when given no file.
INCEPTION_WEIGHTS_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                         "weights-inception-2015-12-05-6726825d.pth")


def _torchmetrics_image() -> Any:
    """A namespace with torchmetrics' FrechetInceptionDistance, KernelInceptionDistance and
    InceptionScore (imported from their modules: ``torchmetrics.image`` exports them only when
    torch-fidelity is installed, which a custom feature network does not need)."""
    try:
        fid = importlib.import_module("torchmetrics.image.fid")
        kid = importlib.import_module("torchmetrics.image.kid")
        inception = importlib.import_module("torchmetrics.image.inception")
    except ModuleNotFoundError as exc:
        if exc.name is not None and not exc.name.startswith(("torchmetrics", "lightning")):
            raise
        raise missing_extra("FID, KID and Inception Score", "torchmetrics", extra="eval") from None
    return SimpleNamespace(FrechetInceptionDistance=fid.FrechetInceptionDistance,
                           KernelInceptionDistance=kid.KernelInceptionDistance,
                           InceptionScore=inception.InceptionScore, fid_module=fid)


class _Features(nn.Module):
    """A feature network as torchmetrics wants it: ``num_features`` set (so it runs no probe
    batch of 299x299 images) and output flattened to ``[N, D]``."""

    def __init__(self, network: nn.Module, num_features: int):
        super().__init__()
        self.network = network
        self.num_features = num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images).flatten(1)


def _images(images: ArrayLike, name: str) -> torch.Tensor:
    images = torch.as_tensor(images).detach()
    if images.dim() != 4 or images.shape[0] < 2:
        raise ValueError(f"{name} must be a batch of at least 2 images [N, C, H, W] (got shape "
                         f"{list(images.shape)})")
    if not images.is_floating_point():
        raise ValueError(f"{name} must be float images in [0, 1] (got {images.dtype}); divide "
                         f"8-bit images by 255")
    return images


def _device(network: nn.Module) -> torch.device:
    parameter = next(network.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@contextlib.contextmanager
def _evaluating(network: nn.Module) -> Iterator[None]:
    """The network in eval mode without gradients; on exit every submodule gets back its own
    previous mode (``train(mode)`` would set them all alike)."""
    modules = list(network.modules())
    modes = [module.training for module in modules]
    network.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, mode in zip(modules, modes):
            module.training = mode


@contextlib.contextmanager
def _quiet_buffer_warning() -> Iterator[None]:
    """Hides torchmetrics' warning that KID and IS keep all features in memory (they must: the
    features of a few thousand images take megabytes), and no other warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer")
        yield


def _feature_size(network: nn.Module, images: torch.Tensor) -> int:
    size = getattr(network, "num_features", None)
    if isinstance(size, int):
        return size
    return network(images[:2].to(_device(network))).flatten(1).shape[1]


def _fill(metric: Any, network: nn.Module, samples: torch.Tensor, reference: torch.Tensor,
          batch_size: int) -> None:
    device = _device(network)
    for images, real in ((reference, True), (samples, False)):
        for batch in images.split(batch_size):
            metric.update(batch.to(device, torch.float32), real=real)


def frechet_distance(samples: ArrayLike, reference: ArrayLike, features: nn.Module, *,
                     batch_size: int = 256) -> float:
    """FID between ``samples`` and ``reference`` [N, C, H, W] in the space of ``features``.

    ``features`` maps a batch of images to [N, D] (e.g. :func:`train_digits_features`'s network
    or :func:`inception_features`). FID needs more images than feature dimensions to be
    meaningful (the covariances are D x D); it is 0 for identical sets up to rounding.
    """
    samples, reference = _images(samples, "samples"), _images(reference, "reference")
    with _evaluating(features):
        wrapped = _Features(features, _feature_size(features, reference))
        metric = _torchmetrics_image().FrechetInceptionDistance(feature=wrapped)
        metric.to(_device(features))  # its sums live beside the features
        _fill(metric, wrapped, samples, reference, batch_size)
        return float(metric.compute())


def kernel_distance(samples: ArrayLike, reference: ArrayLike, features: nn.Module, *,
                    subsets: int = 100, subset_size: int = 1000, seed: int = 0,
                    batch_size: int = 256) -> Dict[str, float]:
    """KID (squared MMD, cubic polynomial kernel) as ``{"kid_mean", "kid_std"}`` over
    ``subsets`` random subsets of ``min(subset_size, N_samples, N_reference)`` images each.

    Unbiased: about 0 (and possibly slightly negative) for sets from the same distribution.
    """
    samples, reference = _images(samples, "samples"), _images(reference, "reference")
    size = min(subset_size, len(samples), len(reference))
    with _evaluating(features):
        wrapped = _Features(features, _feature_size(features, reference))
        with _quiet_buffer_warning():
            metric = _torchmetrics_image().KernelInceptionDistance(
                feature=wrapped, subsets=subsets, subset_size=size)
        metric.to(_device(features))
        _fill(metric, wrapped, samples, reference, batch_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            mean, std = metric.compute()
    return {"kid_mean": float(mean), "kid_std": float(std)}


def inception_score(samples: ArrayLike, classifier: nn.Module, *, splits: int = 10,
                    seed: int = 0, batch_size: int = 256) -> Dict[str, float]:
    """Inception Score ``exp(E_x KL(p(y|x) || p(y)))`` as ``{"is_mean", "is_std"}`` over
    ``splits`` random splits; ``classifier`` maps images to class logits [N, K] (e.g.
    ``DigitsFeatureNet.classifier()`` or ``inception_features(path, "logits_unbiased")``).

    It ranges from 1 (every sample the same class distribution) to K (confident, balanced).
    """
    samples = _images(samples, "samples")
    if len(samples) < splits:
        raise ValueError(f"inception_score needs at least splits={splits} samples (got "
                         f"{len(samples)}); pass more samples or fewer splits")
    with _evaluating(classifier):
        wrapped = _Features(classifier, _feature_size(classifier, samples))
        with _quiet_buffer_warning():
            metric = _torchmetrics_image().InceptionScore(feature=wrapped, splits=splits)
        metric.to(_device(classifier))
        device = _device(classifier)
        for batch in samples.split(batch_size):
            metric.update(batch.to(device, torch.float32))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            mean, std = metric.compute()
    return {"is_mean": float(mean), "is_std": float(std)}


class _InceptionOnUnitImages(nn.Module):
    """Float images in [0, 1] (1 or 3 channels, any size) -> the uint8 RGB batch the FID
    Inception takes (it resizes to 299 x 299 itself)."""

    def __init__(self, inception: nn.Module, num_features: int):
        super().__init__()
        self.inception = inception
        self.num_features = num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.inception((images.clamp(0, 1) * 255).round().to(torch.uint8))


_INCEPTION_OUTPUTS = {"64": 64, "192": 192, "768": 768, "2048": 2048, "logits_unbiased": 1008}


def inception_features(weights_path: Union[str, "os.PathLike[str]"],
                       output: str = "2048") -> nn.Module:
    """The standard FID Inception-v3 loaded from a local weights file (never downloaded).

    Args:
        weights_path: the file ``weights-inception-2015-12-05-6726825d.pth`` (TensorFlow's
            pt_inception-2015-12-05 converted by torch-fidelity), from ``INCEPTION_WEIGHTS_URL``.
        output: "2048" (the pool features of FID and KID), "768", "192", "64", or
            "logits_unbiased" (for the Inception Score).

    Returns:
        a module taking float images [N, 1 or 3, H, W] in [0, 1] to features [N, D].
    """
    if output not in _INCEPTION_OUTPUTS:
        raise ValueError(f"output must be one of {sorted(_INCEPTION_OUTPUTS)} (got {output!r})")
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception weights file {str(path)!r} not found; download {INCEPTION_WEIGHTS_URL} "
            f"(the FID Inception of torch-fidelity and torchmetrics) and pass its path, e.g. "
            f"--inception-weights ~/weights/weights-inception-2015-12-05-6726825d.pth")
    fid_module = _torchmetrics_image().fid_module
    if not getattr(fid_module, "_TORCH_FIDELITY_AVAILABLE", False):
        raise MissingExtraError("the Inception network needs torch-fidelity, which is not "
                                "installed: pip install torch-fidelity", name="torch_fidelity")
    # torch-fidelity unpickles the file with weights_only=False; a file that loads with
    # weights_only=True holds only tensors, so it runs no code there either.
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        raise ValueError(f"{str(path)!r} is not a weights file torch can load safely "
                         f"({type(e).__name__}); download it again from "
                         f"{INCEPTION_WEIGHTS_URL}") from None
    inception = fid_module.NoTrainInceptionV3(
        name="inception-v3-compat", features_list=[output],
        feature_extractor_weights_path=str(path))
    return _InceptionOnUnitImages(inception, _INCEPTION_OUTPUTS[output])
