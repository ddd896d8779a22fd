"""A causal LM as a function of plain tensors: ``input_ids`` and past k/v in, logits and present
k/v out, so that ``torch.export`` captures one step of generation with its KV cache."""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from t2n_core.errors import ExportInputError, UnsupportedArchitectureError

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


@dataclass(frozen=True)
class CacheField:
    """One tensor a decoder layer keeps in the cache between steps: ``keys`` / ``values``
    (attention), ``conv_states[0]`` / ``recurrent_states[0]`` (a recurrent or linear-attention
    layer), ``indexer_keys`` (a sparse-attention indexer). ``shape`` is the tensor's after a
    one-token forward of batch 1; ``seq_axis`` is the axis that grows with the tokens seen
    (None: a state of fixed size, updated in place)."""

    layer: int
    attr: str
    index: int | None
    shape: tuple[int, ...]
    seq_axis: int | None

    @property
    def label(self) -> str:
        """``key``, ``value``, ``conv_state``, ``recurrent_state``, ``indexer_key``; ``conv_stateN``
        for state N > 0 of a layer that keeps several (``past_conv_state2_0``: layer 0's third)."""
        label = self.attr[:-1] if self.attr.endswith("s") else self.attr
        return f"{label}{self.index}" if self.index else label

    def input_name(self) -> str:
        return f"past_{self.label}_{self.layer}"

    def output_name(self) -> str:
        return f"present_{self.label}_{self.layer}"

    def get(self, layer: object) -> torch.Tensor:
        value = getattr(layer, self.attr)
        return value if self.index is None else value[self.index]

    def set(self, layer: object, tensor: torch.Tensor) -> None:
        if self.index is None:
            setattr(layer, self.attr, tensor)
        else:
            getattr(layer, self.attr)[self.index] = tensor


#: per model: the cache fields, and the cache of a one-token forward (the wrapper's template)
_CACHE_FIELDS: weakref.WeakKeyDictionary[nn.Module, tuple[list[CacheField], Any]] = (
    weakref.WeakKeyDictionary()
)


def cache_fields_of(model: nn.Module) -> list[CacheField]:
    """The tensors of ``model``'s cache, layer by layer, read from the cache the model itself
    fills on a one-token and a two-token forward (what grows with the tokens is a sequence
    axis), not from config fields (Falcon's ``multi_query`` keeps one kv head whatever
    ``num_kv_heads`` says; layers may differ). Raises
    :class:`~t2n_core.errors.UnsupportedArchitectureError` for a cache the step cannot carry.

    The forwards run with the parameters on the meta device (shapes only, a third of the
    cost of fake tensors), else on fake tensors (stored weights replaced by their capture
    proxies) where a layer mixes devices, or for real when a layer has no fake implementation.
    """
    return _probed(model)[0]


def is_stateful(model: nn.Module) -> bool:
    """Whether ``model``'s cache holds a state of fixed size (a convolution or recurrent
    state): its step then takes one token per call (:class:`CausalLMWithCache`)."""
    return any(f.seq_axis is None for f in cache_fields_of(model))


def past_shapes_of(model: nn.Module) -> list[tuple[int, int]]:
    """``(heads, head_dim)`` of each past key/value tensor (``key_0, value_0, key_1, ...``) of
    a model whose cache holds keys and values only (see :func:`cache_fields_of`)."""
    return [(f.shape[1], f.shape[3]) for f in cache_fields_of(model) if len(f.shape) == 4]


def _probed(model: nn.Module) -> tuple[list[CacheField], Any]:
    if model not in _CACHE_FIELDS:
        from torch._subclasses.fake_tensor import FakeTensorMode

        from t2n_core.capture import float_proxies
        from t2n_core.llm.experts import dense_experts

        # proxies: quantized or not-yet-read (streamed) weights are neither decoded nor read
        with dense_experts(model), float_proxies(model), buffers_kept(model):
            try:
                with parameters_on_meta(model):
                    probed = _probe_fields(model)
            except UnsupportedArchitectureError:
                raise
            except Exception:  # e.g. a meta activation meets a CPU buffer
                logger.debug("meta-device probe of the cache failed, trying fake tensors")
                try:
                    with FakeTensorMode(allow_non_fake_inputs=True):
                        probed = _probe_fields(model)
                except UnsupportedArchitectureError:
                    raise
                except Exception:  # a layer without a fake kernel: run it
                    logger.debug("fake-tensor probe of the cache failed, running one token")
                    probed = _probe_fields(model)
        _CACHE_FIELDS[model] = probed
    return _CACHE_FIELDS[model]


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


def _probe(model: nn.Module, new: int = 1) -> object:
    """The cache of a forward of ``new`` tokens from an empty cache."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    ids = torch.zeros(1, new, dtype=torch.long, device=device)
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
    return out["cache"] if "cache" in out else out.get("past_key_values")


def _probe_fields(model: nn.Module) -> tuple[list[CacheField], Any]:
    one = _probe(model, 1)
    fields = _cache_fields(model, one)
    if any(f.attr not in KV_TENSORS for f in fields):  # which axis grows with the tokens
        two = _cache_fields(model, _probe(model, 2))
        fields = [
            CacheField(f.layer, f.attr, f.index, f.shape, next(
                (a for a, (x, y) in enumerate(zip(f.shape, g.shape)) if x != y), None))
            for f, g in zip(fields, two, strict=True)
        ]  # fmt: skip
    return fields, one


#: the tensors a cache layer may hold: what the exported step takes and returns per layer
KV_TENSORS = ("keys", "values")
#: tensors beside keys and values a cache layer may hold, carried as they are: those of
#: transformers' linear-attention layers (a dict per kind, by state index) and indexer keys
STATE_TENSORS = ("conv_states", "recurrent_states", "indexer_keys")


def _cache_fields(model: nn.Module, cache: object) -> list[CacheField]:
    """The tensors of each layer of ``cache``; raises
    :class:`~t2n_core.errors.UnsupportedArchitectureError` when the cache holds anything else
    (state outside its layers, a cache class of the model's own, an encoder-decoder cache)."""
    layers = getattr(cache, "layers", None)
    if layers is None and isinstance(cache, (tuple, list)) and all(
        isinstance(p, (tuple, list)) and len(p) == 2
        and all(isinstance(t, torch.Tensor) and t.dim() == 4 for t in p)
        for p in cache
    ):  # fmt: skip
        return [CacheField(i, attr, None, tuple(t.shape), 2)
                for i, p in enumerate(cache) for attr, t in zip(KV_TENSORS, p)]  # fmt: skip
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
    fields: list[CacheField] = []
    for i, layer in enumerate(layers):
        tensors = _held_tensors(layer)
        extra = sorted(t for t in tensors if t.split("[")[0] not in (*KV_TENSORS, *STATE_TENSORS))
        if extra:
            _unsupported(
                model, f"cache layer {i} is a {type(layer).__name__} holding "
                f"{', '.join(extra)} (a recurrent or otherwise non key/value state)",
            )  # fmt: skip
        if not tensors and type(layer).__name__ != "DummyLayer":  # Nemotron-H's MLP layers
            _unsupported(model, f"cache layer {i} is a {type(layer).__name__} without keys "
                         "and values (it holds no tensor)")  # fmt: skip
        for attr in (*KV_TENSORS, *STATE_TENSORS):
            value = getattr(layer, attr, None)
            if isinstance(value, torch.Tensor):
                fields.append(CacheField(i, attr, None, tuple(value.shape),
                                         2 if attr in KV_TENSORS else None))  # fmt: skip
            elif isinstance(value, dict):
                fields += [CacheField(i, attr, k, tuple(v.shape), None) for k, v in
                           sorted(value.items()) if isinstance(v, torch.Tensor)]  # fmt: skip
    return fields


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
        f"cache: {why}. export_causal_lm exports one generation step whose state is what "
        "each layer of a transformers cache holds: keys and values, indexer keys, and the "
        f"conv_states / recurrent_states of linear-attention layers. {NOT_SUPPORTED_NOTE}\n"
        f"Known to export: {', '.join(KNOWN_TO_WORK)}."
    )


class CausalLMWithCache(nn.Module):
    """``forward(input_ids, past_key_0, past_value_0, ...) -> (logits, present_key_0, ...)``.

    ``input_ids`` is ``[B, T]`` (the new tokens), each past tensor ``[B, kv_heads, P, head_dim]``;
    the present tensors are ``[B, kv_heads, P + T, head_dim]``; ``logits`` is ``[B, T, vocab]``,
    or ``[B, 1, vocab]`` (the last position only) with ``all_logits=False``. The wrapper builds a
    transformers ``DynamicCache`` from the past tensors and positions the new tokens at
    ``P .. P + T - 1``; the wrapped model is not changed.

    A model whose cache holds a state of fixed size (a convolution or recurrent state: Mamba,
    hybrids, see :func:`is_stateful`) takes and returns every tensor of its cache
    (:func:`cache_fields_of`, named :meth:`CacheField.input_name`), and one token per call
    (``T = 1``): transformers runs its decode path only when the cache says it holds a
    previous state, which the wrapper always says; the initial state is zeros, the state of
    a fresh start (a zero convolution window is the causal padding, a zero recurrent state
    the scan's start), so a prompt is fed one token at a time.

    >>> step = CausalLMWithCache(model)                               # doctest: +SKIP
    >>> logits, *present = step(ids, *past)                           # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, *, all_logits: bool = True):
        super().__init__()
        self.model = model
        self.num_layers = num_layers_of(model)
        self.all_logits = all_logits
        self._keep_arg = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.fields = cache_fields_of(model)
        self.stateful = any(f.seq_axis is None for f in self.fields)
        self._plain_kv = [f.attr for f in self.fields] == list(KV_TENSORS) * self.num_layers
        #: the window of a cache whose every layer keeps the last ``window - 1`` positions
        self.window = cache_window(model) if self._plain_kv else None
        if self.window is not None and "attention_mask" not in inspect.signature(
            model.forward
        ).parameters:  # fmt: skip
            self.window = None
        limit = context_limit(model)
        #: facts on the axes for the translation (``t2n_core.symbolic``): positions past the
        #: model's context fail in its own code (MPT's ALiBi table) or were never trained
        new = "1" if self.stateful else "T"
        self.size_facts = () if limit is None else (f"P + {new} <= {limit}",)
        # torch.export binds inputs (and dynamic_shapes) by the forward signature: give this
        # instance one flat, named parameter per tensor instead of ``*past``.
        self.__class__ = _flat_signature_class(tuple(input_names_of(model)))

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(past) != len(self.fields):
            names = [f.input_name() for f in self.fields]
            raise ValueError(f"expected {len(names)} past tensors ({', '.join(names)}), got "
                             f"{len(past)}")  # fmt: skip
        if self.stateful and input_ids.shape[1] != 1:
            raise ExportInputError(
                f"{type(self.model).__name__} keeps a recurrent state: its step takes one "
                f"token per call, got {input_ids.shape[1]} (feed a prompt token by token)"
            )
        cache = self._kv_cache(past) if self._plain_kv else self._state_cache(past)
        start = next(
            (p.shape[f.seq_axis] for p, f in zip(past, self.fields) if f.seq_axis is not None),
            None,
        )
        batch, new = input_ids.shape
        options: dict[str, Any] = {}
        if start is not None:  # a model without growing cache has no positions to give
            positions = torch.arange(new, device=input_ids.device) + start
            options["position_ids"] = positions.unsqueeze(0).expand(batch, new)
        if not self.all_logits and self._keep_arg:
            options["logits_to_keep"] = 1
        if self.window is not None and start is not None:  # what the sliding cache dropped
            seen = torch.arange(start + new, device=input_ids.device) > start - self.window
            options["attention_mask"] = seen.to(torch.long).unsqueeze(0).expand(batch, -1)
        out = self.model(input_ids=input_ids, cache=cache, use_cache=True, **options)
        logits = out.logits if self.all_logits else out.logits[:, -1:]
        present = [f.get(cache.layers[f.layer]) for f in self.fields]
        return (logits, *present)

    def _kv_cache(self, past: tuple[torch.Tensor, ...]) -> Any:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

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
        return cache

    def _state_cache(self, past: tuple[torch.Tensor, ...]) -> Any:
        """A copy of the cache a one-token forward left (its layers' classes and flags: a
        previous state is there), holding the past tensors; fixed-size states are cloned,
        since transformers updates them in place."""
        from transformers.cache_utils import (
            DynamicLayer,
            DynamicSlidingWindowLayer,
            LinearAttentionAndFullAttentionLayer,
        )

        template = _probed(self.model)[1]
        kv_only = {f.layer for f in self.fields} - {
            f.layer for f in self.fields if f.attr not in KV_TENSORS
        }
        layers = []
        for i, layer in enumerate(template.layers):
            if i in kv_only:  # a full cache, as for attention-only models: the mask makes
                layers.append(DynamicLayer())  # the window of a sliding layer
                continue
            copied = copy.copy(layer)
            for key, value in vars(layer).items():  # the state dicts, flags by state index
                if isinstance(value, (dict, list)):
                    setattr(copied, key, copy.copy(value))
            if isinstance(layer, DynamicSlidingWindowLayer):  # its keys in full, like above
                copied.__class__ = LinearAttentionAndFullAttentionLayer
            layers.append(copied)
        for field, tensor in zip(self.fields, past, strict=True):
            layer = layers[field.layer]
            if field.layer in kv_only and not layer.is_initialized:
                layer.lazy_initialization(tensor, tensor)
            field.set(layer, tensor if field.seq_axis is not None else tensor.clone())
            if "device" in vars(layer):
                layer.device = tensor.device
        cache = copy.copy(template)
        cache.layers = layers
        return cache


def cache_window(model: nn.Module) -> int | None:
    """The window of ``model``'s cache when each of its layers is a sliding one (transformers'
    ``DynamicSlidingWindowLayer``, same window): the step keeps its keys and values in full,
    and hides from the new tokens, by an attention mask over the past, the positions that
    cache would have dropped (all but the last ``window - 1``), as ``model.generate`` sees
    them. Moshi's own mask is causal only, its window is the cache's; where the model's mask
    makes the window (Mistral), that mask hides a superset. ``None`` otherwise."""
    from transformers.cache_utils import DynamicSlidingWindowLayer

    layers = getattr(_probed(model)[1], "layers", None) or []
    windows = {getattr(layer, "sliding_window", None) for layer in layers}
    if layers and all(isinstance(layer, DynamicSlidingWindowLayer) for layer in layers) and (
        len(windows) == 1
    ):  # fmt: skip
        return int(windows.pop())
    return None


def input_names_of(model: nn.Module) -> list[str]:
    """``["input_ids", "past_key_0", "past_value_0", ...]``: one past tensor per cache field
    (:func:`cache_fields_of`), ``past_conv_state_0``, ``past_recurrent_state_0`` for a
    recurrent layer."""
    return ["input_ids", *(f.input_name() for f in cache_fields_of(model))]


def output_names_of(model: nn.Module) -> list[str]:
    """``["logits", "present_key_0", "present_value_0", ...]`` (see :func:`input_names_of`)."""
    return ["logits", *(f.output_name() for f in cache_fields_of(model))]


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


_CLASSES: dict[tuple[str, ...], type] = {}


def _flat_signature_class(names: tuple[str, ...]) -> type:
    if names not in _CLASSES:
        params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)] + [
            inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in names
        ]

        def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return CausalLMWithCache.forward(self, *args)

        forward.__signature__ = inspect.Signature(params)
        _CLASSES[names] = type(
            f"CausalLMWithCache{len(names) - 1}", (CausalLMWithCache,), {"forward": forward}
        )
    return _CLASSES[names]
