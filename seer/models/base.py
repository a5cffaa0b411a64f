"""What every model family implements, and the loading they share.

A family turns a model folder into: a tokenizer, a chat template, an ``nn.Module``
on the device with the runner's interface (``embed``, ``forward``, ``compute_logits``,
and ``encode_images(list of MMItem.data) -> list of features`` for VLMs) and a way to turn a conversation into token ids with
image placeholder runs (``encode``). Subclasses override ``build_model`` and, for
VLMs, ``image_inputs``; everything else is shared.
"""

from __future__ import annotations

import contextvars
import glob
import json
import mmap
import os
from typing import Iterator, Optional

import torch

from ..chat_template import resolve_chat_template
from ..config import ChatTemplateConfig, EngineConfig, VisionConfig
from ..engine.request import MMItem, PromptInputs
from ..engine.parallel import SINGLE, TPGroup
from ..engine.runner import KVSpec
from ..layers.linear import pack_linears
from ..layers.quant import quantize
from ..vl import image_hash

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(cfg: EngineConfig) -> tuple[torch.device, torch.dtype]:
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={cfg.device!r} but CUDA is not available; use device='cpu' or None")
    if cfg.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = _DTYPES[cfg.dtype]
    return device, dtype


def read_config_json(path: str) -> dict:
    if not os.path.isdir(path):
        raise ValueError(f"model path {path!r} is not a folder; pass a local folder in Hugging Face layout "
                         f"(config.json, *.safetensors, tokenizer files)")
    cfg = os.path.join(path, "config.json")
    if not os.path.isfile(cfg):
        raise ValueError(f"model folder {path!r} has no config.json; a Hugging Face layout folder is expected")
    try:
        with open(cfg) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"could not read {cfg}: {e}; it must be the model's JSON config") from e


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


# While a tensor-parallel rank loads (``ModelFamily._load_model`` with tp > 1), checkpoint files are
# memory-mapped instead of read (``_read_safetensors``), whichever family's ``weights()`` reads them.
_MAPPED: contextvars.ContextVar[bool] = contextvars.ContextVar("seer_mapped_weights", default=False)


def _read_safetensors(path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of one .safetensors file, one at a time. Format: u64 header size, JSON
    header, raw data.

    Read with plain file reads, not mmap: reading a mapped file leaves all of its pages counted
    in our RSS until it is unmapped, so loading would briefly hold the weights twice; here at
    most one tensor is in flight beside the model. A tensor-parallel rank (``_MAPPED``) maps the
    file instead (private copy-on-write pages): then a tensor is a view of the mapping, and the
    disk pages read are those of the slices the rank copies out, about 1/tp of each split matrix.
    """
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
            base = 8 + size
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if _MAPPED.get() else None
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                start, end = info["data_offsets"]
                dtype = _ST_DTYPES[info["dtype"]]
                if end == start:
                    t = torch.empty(0, dtype=dtype)
                elif mapped is not None:
                    if base + end > len(mapped):
                        raise ValueError(f"tensor {name!r} is cut short")
                    t = torch.frombuffer(mapped, dtype=dtype, count=(end - start) // dtype.itemsize,
                                         offset=base + start)
                else:
                    f.seek(base + start)
                    buf = bytearray(end - start)
                    if f.readinto(buf) != end - start:
                        raise ValueError(f"tensor {name!r} is cut short")
                    t = torch.frombuffer(buf, dtype=dtype)
                yield name, t.view(info["shape"])
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ValueError(f"could not read weights file {path}: {e}") from e


# Where a folder keeps a processor's settings: its own file (checkpoints saved before transformers 5,
# and most on the hub), or nested under a key of processor_config.json (transformers 5's save_pretrained).
_PROCESSOR_FILES = {"image_processor": "preprocessor_config.json",
                    "video_processor": "video_preprocessor_config.json"}


def processor_settings(path: str, kind: str = "image_processor") -> Optional[dict]:
    """The settings of the folder's ``kind`` processor (``image_processor`` or ``video_processor``)
    from either layout, the separate file first, as transformers looks; None when neither has them.
    An unreadable file is a ``ValueError`` naming it."""
    for name, key in ((_PROCESSOR_FILES[kind], None), ("processor_config.json", kind)):
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            continue
        try:
            with open(file) as f:
                cfg = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"could not read {file}: {e}; it must be a JSON object") from e
        cfg = cfg.get(key) if key and isinstance(cfg, dict) else cfg
        if isinstance(cfg, dict):
            return cfg
    return None


def load_image_processor(path: str, cls=None):
    """The image processor of a model folder (``cls``, else whichever its config names), from
    ``preprocessor_config.json`` or from ``processor_config.json``'s ``image_processor``; a folder
    with neither, or a file transformers cannot load, is a ``ValueError`` that names the files."""
    if processor_settings(path, "image_processor") is None:
        raise ValueError(f"model folder {path!r} has no image-processor settings, which say how its images are "
                         f"preprocessed: neither preprocessor_config.json nor an 'image_processor' entry in "
                         f"processor_config.json; copy them from the checkpoint you downloaded")
    if cls is None:
        from transformers import AutoImageProcessor as cls
    try:
        return cls.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - any failure here is a bad file, reported as such
        raise ValueError(f"could not load the image processor from {path!r} (preprocessor_config.json or "
                         f"processor_config.json): {e}") from e


def safetensors_files(path: str) -> list[str]:
    """The folder's .safetensors files; with a ``*.safetensors.index.json`` (a sharded checkpoint),
    a shard that it names and the folder lacks is a ``ValueError`` naming that shard."""
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    for index in sorted(glob.glob(os.path.join(path, "*.safetensors.index.json"))):
        try:
            with open(index) as f:
                shards = set(json.load(f)["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise ValueError(f"could not read {index}: {e}; it must map tensor names to shard files") from e
        missing = sorted(s for s in shards if not os.path.isfile(os.path.join(path, s)))
        if missing:
            raise ValueError(f"model folder {path!r} lacks weight file(s) {missing} that {os.path.basename(index)} "
                             f"names; download every shard of the checkpoint")
    return files


def checkpoint_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape for a checkpoint folder, from the safetensors headers (no data read)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for file in safetensors_files(path):
        try:
            with open(file, "rb") as f:
                header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        except (OSError, ValueError) as e:
            raise ValueError(f"could not read weights file {file}: {e}") from e
        shapes.update((n, tuple(info["shape"])) for n, info in header.items() if n != "__metadata__")
    if not shapes:
        shapes = {n: tuple(t.shape) for n, t in checkpoint_tensors(path)}
    return shapes


def checkpoint_names(path: str) -> list[str]:
    """The tensor names of a checkpoint folder, from the safetensors headers (no data read)."""
    return list(checkpoint_shapes(path))


def checkpoint_tensors(path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a checkpoint folder, one at a time (safetensors, else PyTorch .bin)."""
    files = safetensors_files(path)
    if files:
        for f in files:
            yield from _read_safetensors(f)
        return
    files = sorted(glob.glob(os.path.join(path, "pytorch_model*.bin")))
    if not files:
        raise ValueError(f"model folder {path!r} has no weights: expected model*.safetensors "
                         f"or pytorch_model*.bin")
    for f in files:
        yield from torch.load(f, map_location="cpu", weights_only=True).items()


class ModelFamily:
    """One model folder, ready to serve. Subclasses: one per family."""

    architectures: tuple[str, ...] = ()
    accepts_images = False
    accepts_videos = False  # video parts ({"type": "video"}) are refused unless a family takes them
    image_placeholder = ""  # text a built-in chat template puts where an image goes

    def __init__(self, path: str, raw_config: dict, engine_cfg: EngineConfig, vision_cfg: VisionConfig,
                 template_cfg: Optional[ChatTemplateConfig], tp: Optional[TPGroup] = None):
        self.tp = tp or SINGLE  # this process's rank of the tensor-parallel group
        self.path = path
        self.raw_config = raw_config
        self.engine_cfg = engine_cfg
        self.vision_cfg = vision_cfg
        self.device, self.dtype = resolve_device(engine_cfg)
        self.device = self.tp.device or self.device  # a rank's own GPU, when each has one
        self.hf_config = self.load_hf_config()
        self.tokenizer = self.load_tokenizer()
        self.chat_template = resolve_chat_template(self.tokenizer, self.hf_config, path, template_cfg)
        text = self.text_config()
        self.session_len = engine_cfg.session_len or getattr(text, "max_position_embeddings", 4096)
        self.model = self._load_model()
        self.eos_token_ids = self._eos_ids()

    # ---- what subclasses provide ------------------------------------------------------------
    def load_hf_config(self):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.path)

    def text_config(self):
        """The decoder's config: a VLM config's ``text_config``, else the config itself."""
        return getattr(self.hf_config, "text_config", None) or self.hf_config

    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    @classmethod
    def tp_shape(cls, path: str, raw_config: dict, tp: int) -> tuple[int, int, int]:
        """(attention heads, KV heads, MLP width) of the decoder that ``tp`` ranks split, read before
        any process starts. Every family seer registers overrides it; one that does not (its decoder
        cannot be split yet) is refused here."""
        raise ValueError(f"tp={tp}: tensor parallelism is not supported for {cls.__name__} yet (it does not say "
                         f"how its decoder splits); every family in seer.models.registry supports it; use tp=1")


    def image_inputs(self, image) -> tuple[int, object]:
        """(placeholder tokens, what the model's ``encode_images`` takes for it) for one image."""
        raise NotImplementedError

    @property
    def image_token_id(self) -> Optional[int]:
        """The placeholder token each image token of the prompt is written as (None: text only)."""
        return getattr(self.hf_config, "image_token_id", None)

    # ---- shared ------------------------------------------------------------------------------
    def load_tokenizer(self):
        from transformers import AutoTokenizer

        try:
            # Remote code is never run: checkpoints that ship their own tokenizer class get
            # transformers' generic fast tokenizer over their tokenizer files.
            return AutoTokenizer.from_pretrained(self.path, trust_remote_code=False)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"could not load the tokenizer from {self.path!r}: {e}") from e

    def _load_model(self) -> torch.nn.Module:
        with torch.device("meta"):
            model = self.build_model()
        model.to_empty(device=self.device)
        model.to(self.dtype)
        mapped = _MAPPED.set(self.tp.size > 1)  # a rank reads only the pages of its slices
        try:
            model.load_weights(self.weights())
        finally:
            _MAPPED.reset(mapped)
        model.finish_init()
        quantize(model, self.engine_cfg.quantization)
        if not self.engine_cfg.quantization:
            pack_linears(model)  # fp32 CPU weights into the native matmul's layout
        return model.eval()

    def weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The checkpoint's tensors, named as the model's ``load_weights`` expects."""
        return checkpoint_tensors(self.path)

    def kv_spec(self) -> KVSpec:
        s = self.model.spec
        dtype = torch.bfloat16 if self.engine_cfg.kv_cache_dtype == "bfloat16" else self.dtype
        return KVSpec(s.num_layers, getattr(s, "local_kv_heads", s.num_kv_heads), s.head_dim, dtype)

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        gen_file = os.path.join(self.path, "generation_config.json")
        sources = [getattr(self.text_config(), "eos_token_id", None), self.tokenizer.eos_token_id]
        if os.path.isfile(gen_file):
            with open(gen_file) as f:
                sources.insert(0, json.load(f).get("eos_token_id"))
        for e in sources:
            if isinstance(e, int):
                ids.add(e)
            elif isinstance(e, (list, tuple)):
                ids.update(int(x) for x in e)
        for w in getattr(self.chat_template, "stop_words", None) or ():
            tid = self.tokenizer.convert_tokens_to_ids(w)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id:
                ids.add(tid)
        return ids

    def stop_words(self) -> list[str]:
        return list(getattr(self.chat_template, "stop_words", None) or ())

    # ---- conversation -> tokens ------------------------------------------------------------
    def encode(self, conversation: list[dict], tools: Optional[list] = None) -> PromptInputs:
        images = [p["image"] for m in conversation for p in m["content"] if p["type"] == "image"]
        if images and not self.accepts_images:
            raise ValueError(f"this model ({type(self).__name__}) is text-only and does not accept images")
        if not self.accepts_videos and any(p["type"] == "video" for m in conversation for p in m["content"]):
            raise ValueError(f"this model ({type(self).__name__}) does not accept videos")
        ids = self.prompt_ids(conversation, tools)
        if not images:
            return PromptInputs(ids)
        return self._expand_images(ids, images)

    def prompt_ids(self, conversation: list[dict], tools: Optional[list] = None) -> list[int]:
        """The conversation (and the tools it may call) through the chat template, tokenized; one
        image token per image."""
        text = self.chat_template.render(conversation, self.image_placeholder, add_generation_prompt=True,
                                         tools=tools)
        adds_bos = getattr(self.chat_template, "adds_bos", False)
        return self.tokenizer(text, add_special_tokens=not adds_bos)["input_ids"]

    def _expand_images(self, ids: list[int], images: list) -> PromptInputs:
        """Replace each image token by the run of placeholder tokens its features fill."""
        tok = self.image_token_id
        found = ids.count(tok)
        if found != len(images):
            raise ValueError(f"the prompt has {found} image placeholder(s) but {len(images)} image(s) were given")
        out: list[int] = []
        items: list[MMItem] = []
        it = iter(images)
        for t in ids:
            if t != tok:
                out.append(t)
                continue
            img = next(it)
            if isinstance(img, torch.Tensor):
                self._check_embeddings(img)
                feats = img.to(self.dtype)
                item = MMItem(len(out), feats.shape[0], "embeds:" + _tensor_hash(feats), feats, "embeds")
            else:
                n, pixels = self.image_inputs(img)
                if isinstance(pixels, torch.Tensor):
                    pixels = pixels.to(self.dtype)
                item = MMItem(len(out), n, image_hash(img), pixels)
            items.append(item)
            out.extend([tok] * item.length)
        return PromptInputs(out, items)

    def _check_embeddings(self, t: torch.Tensor) -> None:
        hidden = self.text_config().hidden_size
        if t.dim() != 2 or t.shape[1] != hidden or t.shape[0] == 0 or t.is_complex() or not t.is_floating_point():
            raise ValueError(f"precomputed image embeddings must be a float tensor [image tokens, {hidden}] "
                             f"(the language model's hidden size); got {t.dtype} {list(t.shape)}")


def _tensor_hash(t: torch.Tensor) -> str:
    import hashlib

    return hashlib.blake2b(t.detach().float().cpu().numpy().tobytes(), digest_size=16).hexdigest()


def text_tp_shape(text) -> tuple[int, int, int]:
    """(attention heads, KV heads, MLP width) of a decoder's transformers config."""
    heads = text.num_attention_heads
    return heads, getattr(text, "num_key_value_heads", None) or heads, text.intermediate_size


def decoder_tp_shape(path: str) -> tuple[int, int, int]:
    """``ModelFamily.tp_shape`` of a transformers-layout folder: from its config's text config."""
    from transformers import AutoConfig

    return text_tp_shape(AutoConfig.from_pretrained(path).get_text_config())
