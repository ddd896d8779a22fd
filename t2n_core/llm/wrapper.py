"""A causal LM as a function of plain tensors: ``input_ids`` and past k/v in, logits and present
k/v out, so that ``torch.export`` captures one step of generation with its KV cache."""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from t2n_core.errors import UnsupportedArchitectureError

logger = logging.getLogger(__name__)


def num_layers_of(model: nn.Module) -> int:
    """Number of decoder layers of a Hugging Face causal LM: ``config.decoder_layers`` where
    the config has one (the decoder of an encoder-decoder model run alone, e.g. Whisper's,
    whose ``num_hidden_layers`` names the encoder's), else ``config.num_hidden_layers``."""
    config = model.config.get_text_config(decoder=True)
    decoder = getattr(config, "decoder_layers", None)
    if isinstance(decoder, int) and not isinstance(decoder, bool):
        return decoder
    return int(config.num_hidden_layers)


#: config fields holding the number of positions a model was built for
CONTEXT_FIELDS = ("max_position_embeddings", "max_seq_len", "n_positions", "n_ctx",
                  "max_sequence_length", "seq_length")  # fmt: skip


def context_limit(model: nn.Module) -> int | None:
    """The number of positions the model was built for, from its config, or ``None``."""
    config = model.config.get_text_config(decoder=True)
    for field in CONTEXT_FIELDS:
        value = getattr(config, field, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def kv_shape_of(model: nn.Module) -> tuple[int, int]:
    """``(kv_heads, head_dim)`` of the first layer's keys (see :func:`past_shapes_of`)."""
    return past_shapes_of(model)[0]


_PAST_SHAPES: weakref.WeakKeyDictionary[nn.Module, list[tuple[int, int]]] = (
    weakref.WeakKeyDictionary()
)


def past_shapes_of(model: nn.Module) -> list[tuple[int, int]]:
    """``(heads, head_dim)`` of each past tensor (``key_0, value_0, key_1, ...``), read from the
    cache the model itself fills on a one-token forward, not from config fields (Falcon's
    ``multi_query`` keeps one kv head whatever ``num_kv_heads`` says; layers may differ).

    The forward runs with the parameters on the meta device (shapes only, a third of the cost
    of fake tensors), else on fake tensors (stored weights replaced by their capture proxies)
    where a layer mixes devices, or for real when a layer has no fake implementation.
    """
    if model not in _PAST_SHAPES:
        from torch._subclasses.fake_tensor import FakeTensorMode

        from t2n_core.capture import float_proxies
        from t2n_core.llm.experts import dense_experts

        # proxies: quantized or not-yet-read (streamed) weights are neither decoded nor read
        with dense_experts(model), float_proxies(model), buffers_kept(model):
            try:
                with parameters_on_meta(model):
                    shapes = _probe(model)
            except UnsupportedArchitectureError:
                raise
            except Exception:  # e.g. a meta activation meets a CPU buffer
                logger.debug("meta-device probe of the cache failed, trying fake tensors")
                try:
                    with FakeTensorMode(allow_non_fake_inputs=True):
                        shapes = _probe(model)
                except UnsupportedArchitectureError:
                    raise
                except Exception:  # a layer without a fake kernel: run it
                    logger.debug("fake-tensor probe of the cache failed, running one token")
                    shapes = _probe(model)
        _PAST_SHAPES[model] = shapes
    return _PAST_SHAPES[model]


@contextlib.contextmanager
def buffers_kept(model: nn.Module) -> Iterator[None]:
    """Every module's buffers as they were, after a forward that reassigns one (CTRL stores
    ``self.pos_encoding.to(device)``: a meta or fake tensor after the probe otherwise)."""
    saved = [(module, dict(module._buffers)) for module in model.modules()]
    try:
        yield
    finally:
        for module, buffers in saved:
            module._buffers.clear()
            module._buffers.update(buffers)


@contextlib.contextmanager
def parameters_on_meta(model: nn.Module) -> Iterator[None]:
    """Every parameter replaced by an empty one of its shape and dtype on the meta device
    (tied ones stay one object); buffers are left as they are."""
    swapped: list[tuple[nn.Module, str, Any]] = []
    metas: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, param in module._parameters.items():
            if param is not None:
                if id(param) not in metas:
                    meta = torch.empty(param.shape, dtype=param.dtype, device="meta")
                    metas[id(param)] = nn.Parameter(meta, requires_grad=False)
                swapped.append((module, name, param))
    for module, name, param in swapped:
        module._parameters[name] = metas[id(param)]
    try:
        yield
    finally:
        for module, name, param in swapped:
            module._parameters[name] = param


def _probe(model: nn.Module) -> list[tuple[int, int]]:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    ids = torch.zeros(1, 1, dtype=torch.long, device=device)
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
    cache = out["cache"] if "cache" in out else out.get("past_key_values")
    shapes = []
    for pair in _key_value_pairs(model, cache):
        shapes += [(int(t.shape[1]), int(t.shape[3])) for t in pair]
    return shapes


#: the tensors a cache layer may hold: what the exported step takes and returns per layer
KV_TENSORS = ("keys", "values")


def _key_value_pairs(model: nn.Module, cache: object) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(keys, values)`` of each layer of ``cache``; raises
    :class:`~t2n_core.errors.UnsupportedArchitectureError` when the cache holds anything else
    (a recurrent state, extra indexer keys, a cache class of the model's own)."""
    layers = getattr(cache, "layers", None)
    if layers is None and isinstance(cache, (tuple, list)) and all(
        isinstance(p, (tuple, list)) and len(p) == 2
        and all(isinstance(t, torch.Tensor) and t.dim() == 4 for t in p)
        for p in cache
    ):  # fmt: skip
        return [tuple(p) for p in cache]
    if layers is None:
        _unsupported(model, f"its cache is a {type(cache).__name__}, not a transformers Cache "
                     "of key/value layers")  # fmt: skip
    outside = sorted(_held_tensors(cache))
    if outside:  # MiniMax keeps its lightning-attention state beside the key/value layers
        _unsupported(model, f"its {type(cache).__name__} holds {', '.join(outside[:4])}"
                     f"{', ...' if len(outside) > 4 else ''} outside its key/value layers (a "
                     "recurrent or otherwise non key/value state)")  # fmt: skip
    decoder_layers = num_layers_of(model)
    if len(layers) != decoder_layers:
        _unsupported(
            model,
            f"its {type(cache).__name__} has {len(layers)} key/value layer(s) "
            f"for {decoder_layers} decoder layers (the others keep another state)",
        )
    pairs = []
    for i, layer in enumerate(layers):
        tensors = _held_tensors(layer)
        extra = sorted(tensors - set(KV_TENSORS))
        if extra or not all(isinstance(getattr(layer, k, None), torch.Tensor) for k in KV_TENSORS):
            held = ", ".join(extra or sorted(tensors)) or "no tensor"
            _unsupported(
                model, f"cache layer {i} is a {type(layer).__name__} holding {held} (a recurrent "
                "or otherwise non key/value state)" if extra else
                f"cache layer {i} is a {type(layer).__name__} without keys and values "
                f"(it holds {held})",
            )  # fmt: skip
        pairs.append((layer.keys, layer.values))
    return pairs


def _held_tensors(layer: object) -> set[str]:
    """Names of the tensors a cache layer holds as state, also inside its dicts and lists
    (``conv_states[0]``); private attributes (a sliding window's size as a tensor) are not."""
    names = set()
    for key, value in vars(layer).items():
        if key.startswith("_"):
            continue
        if isinstance(value, torch.Tensor):
            names.add(key)
        elif isinstance(value, (dict, list, tuple)):
            items = value.items() if isinstance(value, dict) else enumerate(value)
            names |= {f"{key}[{i}]" for i, v in items if isinstance(v, torch.Tensor)}
    return names


def _unsupported(model: nn.Module, why: str) -> None:
    from t2n_core.llm.support import KNOWN_TO_WORK, NOT_SUPPORTED_NOTE

    model_type = getattr(model.config, "model_type", "?")
    raise UnsupportedArchitectureError(
        f"{type(model).__name__} (model_type {model_type!r}) cannot be exported with a KV "
        f"cache: {why}. export_causal_lm exports one generation step whose state is the "
        f"key/value tensors of each attention layer. {NOT_SUPPORTED_NOTE}\n"
        f"Known to export: {', '.join(KNOWN_TO_WORK)}."
    )


class CausalLMWithCache(nn.Module):
    """``forward(input_ids, past_key_0, past_value_0, ...) -> (logits, present_key_0, ...)``.

    ``input_ids`` is ``[B, T]`` (the new tokens), each past tensor ``[B, kv_heads, P, head_dim]``;
    the present tensors are ``[B, kv_heads, P + T, head_dim]``; ``logits`` is ``[B, T, vocab]``,
    or ``[B, 1, vocab]`` (the last position only) with ``all_logits=False``. The wrapper builds a
    transformers ``DynamicCache`` from the past tensors and positions the new tokens at
    ``P .. P + T - 1``; the wrapped model is not changed.

    >>> step = CausalLMWithCache(model)                               # doctest: +SKIP
    >>> logits, *present = step(ids, *past)                           # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, *, all_logits: bool = True):
        super().__init__()
        self.model = model
        self.num_layers = num_layers_of(model)
        self.all_logits = all_logits
        self._keep_arg = "logits_to_keep" in inspect.signature(model.forward).parameters
        limit = context_limit(model)
        #: facts on the axes for the translation (``t2n_core.symbolic``): positions past the
        #: model's context fail in its own code (MPT's ALiBi table) or were never trained
        self.size_facts = () if limit is None else (f"P + T <= {limit}",)
        # torch.export binds inputs (and dynamic_shapes) by the forward signature: give this
        # instance one flat, named parameter per tensor instead of ``*past``.
        self.__class__ = _flat_signature_class(self.num_layers)

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        if len(past) != 2 * self.num_layers:
            raise ValueError(
                f"expected {2 * self.num_layers} past tensors (key and value per layer), "
                f"got {len(past)}"
            )
        layers = []
        initialized: dict[torch.device, DynamicLayer] = {}
        for i in range(self.num_layers):
            key, value = past[2 * i], past[2 * i + 1]
            if key.device not in initialized:
                # once, not per layer: while capturing, each lazy_initialization adds two traced
                # constant tensors (replaced at once by the past tensors) to the capture's cost
                initialized[key.device] = DynamicLayer()
                initialized[key.device].lazy_initialization(key, value)
            layer = copy.copy(initialized[key.device])
            layer.keys, layer.values = key, value
            layers.append(layer)
        cache = DynamicCache()
        cache.layers = layers
        batch, new = input_ids.shape
        start = past[0].shape[2]
        positions = torch.arange(new, device=input_ids.device) + start
        position_ids = positions.unsqueeze(0).expand(batch, new)
        keep = {} if self.all_logits or not self._keep_arg else {"logits_to_keep": 1}
        out = self.model(
            input_ids=input_ids, position_ids=position_ids, cache=cache, use_cache=True, **keep
        )
        logits = out.logits if self.all_logits else out.logits[:, -1:]
        present: list[torch.Tensor] = []
        for layer in cache.layers:
            present += [layer.keys, layer.values]
        return (logits, *present)


def input_names_for(num_layers: int) -> list[str]:
    """``["input_ids", "past_key_0", "past_value_0", ...]``."""
    names = ["input_ids"]
    for i in range(num_layers):
        names += [f"past_key_{i}", f"past_value_{i}"]
    return names


def output_names_for(num_layers: int) -> list[str]:
    """``["logits", "present_key_0", "present_value_0", ...]``."""
    names = ["logits"]
    for i in range(num_layers):
        names += [f"present_key_{i}", f"present_value_{i}"]
    return names


_CLASSES: dict[int, type] = {}


def _flat_signature_class(num_layers: int) -> type:
    if num_layers not in _CLASSES:
        params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)] + [
            inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            for name in input_names_for(num_layers)
        ]

        def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return CausalLMWithCache.forward(self, *args)

        forward.__signature__ = inspect.Signature(params)
        _CLASSES[num_layers] = type(
            f"CausalLMWithCache{num_layers}", (CausalLMWithCache,), {"forward": forward}
        )
    return _CLASSES[num_layers]
