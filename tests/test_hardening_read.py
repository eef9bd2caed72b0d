"""The read side of issue 12: every file a verb reads is a regular file inside the directory
(checkpoint/paths.py), every count of a config is bounded (families/limits.py), the index's
paths are plain names, and doctor names duplicated and unlisted tensors. Each case asserts
what a user sees: the exit code and the message."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mtpforge.checkpoint import open_checkpoint
from mtpforge.checkpoint.index import INDEX_NAME

from .conftest import CliResult, codes, edit_json, read_all, rewrite_shard, shard_of

Cli = Callable[..., CliResult]
Make = Callable[..., Path]
SECRET = "root:SECRET-OUTSIDE-THE-CHECKPOINT:0:0"
VERBS = (("inspect",), ("doctor",), ("plan", "--gpu-memory", "80GiB"), ("serve",), ("card",))


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    """Every verb here must answer in seconds; a FIFO that blocks an open would hang the test instead."""
    def hang(*_: Any) -> None:
        raise TimeoutError("a verb hung")
    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "secret"
    path.parent.mkdir()
    path.write_text(f"{SECRET}\nbase_model: {SECRET}\n")
    return path


def _link(ckpt: Path, name: str, target: Path) -> None:
    (ckpt / name).unlink(missing_ok=True)
    os.symlink(target, ckpt / name)


@pytest.mark.parametrize("name", ["tokenizer_config.json", "chat_template.jinja", "README.md"])
def test_a_file_linked_outside_is_never_read_and_doctor_names_it(make: Make, cli: Cli, secret: Path, name: str) -> None:
    ckpt = make()
    _link(ckpt, name, secret)
    opened = open_checkpoint(ckpt)
    assert name not in opened.files and "symlink that leaves" in opened.unsafe_files[name]
    r = cli("doctor", str(ckpt), "--json")
    assert r.code == 1 and SECRET not in r.out + r.err
    found = [f for f in r.json()["findings"] if f["code"] == "file-outside-checkpoint"]
    assert found and found[0]["severity"] == "error" and found[0]["files"] == [name]
    assert f"{name} is a symlink that leaves" in found[0]["message"] and "never read" in found[0]["message"]
    assert "regular file" in found[0]["fix"]
    for verb in VERBS:
        r = cli(*verb, str(ckpt))
        assert r.code in (0, 1) and SECRET not in r.out + r.err, (verb, r.err)


def test_a_fifo_named_like_a_listed_shard_is_refused_by_every_verb(make: Make, cli: Cli) -> None:
    ckpt = make(shards=2)
    shard = sorted(ckpt.glob("*.safetensors"))[1]
    shard.unlink()
    os.mkfifo(shard)
    for verb in VERBS:
        r = cli(*verb, str(ckpt))
        assert r.code == 3 and "Traceback" not in r.err, (verb, r.err)
        assert f"{shard.name!r}, not a regular file (a FIFO)" in r.err
        assert "hint: replace it with the regular file it stands for" in r.err


def test_a_fifo_shard_unindexed_and_a_fifo_readme_never_block(make: Make, cli: Cli) -> None:
    ckpt = make()
    os.mkfifo(ckpt / "extra.safetensors")
    r = cli("doctor", str(ckpt))
    assert r.code == 3 and "shard 'extra.safetensors', not a regular file (a FIFO)" in r.err
    (ckpt / "extra.safetensors").unlink()
    (ckpt / "README.md").unlink(missing_ok=True)
    os.mkfifo(ckpt / "README.md")
    r = cli("card", str(ckpt))
    assert r.code == 0
    r = cli("doctor", str(ckpt), "--json")
    found = [f for f in r.json()["findings"] if f["code"] == "file-outside-checkpoint"]
    assert r.code == 1 and found[0]["message"].startswith("README.md is not a regular file (a FIFO)")


@pytest.mark.parametrize("value, message", [
    ("model\x00.safetensors", "not a file name (empty, not a string, or with a NUL byte)"),
    ("sub/", "a path into a subdirectory"),
    ("sub/model.safetensors", "a path into a subdirectory; engines load only the files at the top"),
    (7, "'weight_map' must map tensor names to shard file names"),
    (None, "'weight_map' must map tensor names to shard file names"),
])
def test_index_values_that_are_not_plain_file_names_exit_3(make: Make, cli: Cli, value: Any, message: str) -> None:
    ckpt = make(shards=2)
    (ckpt / "sub").mkdir()
    edit_json(ckpt / INDEX_NAME, lambda d: d["weight_map"].update({"lm_head.weight": value}))
    for verb in VERBS:
        r = cli(*verb, str(ckpt))
        assert r.code == 3 and "Traceback" not in r.err and message in r.err, (verb, r.err)


def _nest(depth: int) -> Any:
    doc: Any = 1
    for _ in range(depth):
        doc = {"a": doc}
    return doc


@pytest.mark.parametrize("path, value, message", [
    (("text_config", "mtp_num_hidden_layers"), 1e9, "mtp_num_hidden_layers must be an integer from 0 to 1,024, got 1000000000.0"),
    (("vision_config", "depth"), 1e9, "vision_config.depth must be an integer from 0 to 1,024, got 1000000000.0"),
    (("vision_config", "depth"), 10**9, "vision_config.depth must be an integer from 0 to 1,024, got 1000000000"),
    (("text_config", "num_hidden_layers"), "4", "num_hidden_layers must be an integer from 1 to 1,024, got '4'"),
    (("text_config", "num_hidden_layers"), True, "num_hidden_layers must be an integer from 1 to 1,024, got True"),
    (("text_config", "full_attention_interval"), 0, "full_attention_interval must be an integer from 1 to 1,024, got 0"),
    (("text_config", "hidden_size"), [64], "hidden_size must be an integer from 1 to 16,777,216, got [64]"),
    (("text_config", "hidden_size"), -1, "hidden_size must be an integer from 1 to 16,777,216, got -1"),
    (("text_config", "num_experts"), 10**6, "num_experts must be an integer from 0 to 4,096, got 1000000"),
    (("text_config", "layer_types"), [[1]] * 4, "layer_types must list full_attention / linear_attention"),
    (("text_config", "mamba_ssm_dtype"), ["x"], "mamba_ssm_dtype must be a string, got ['x']"),
    (("architectures",), {"a": 1}, "architectures must be a list of class names"),
    (("vision_config",), "big", "vision_config must be an object, got 'big'"),
    (("text_config", "deep"), _nest(40), "nested more than 32 levels deep"),
])
def test_config_counts_and_types_are_bounded_before_any_loop(make: Make, cli: Cli, path: tuple[str, ...], value: Any,
                                                             message: str) -> None:
    ckpt = make()
    edit_json(ckpt / "config.json", lambda d: _set(d, path, value))
    for verb in VERBS:
        r = cli(*verb, str(ckpt))
        assert r.code == 3 and "Traceback" not in r.err, (verb, r.err)
        assert f"Error: config.json: {message}" in r.err and "hint: restore config.json from the base model" in r.err


def _set(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


def test_json_deeper_than_the_parser_recurses_is_refused(make: Make, cli: Cli) -> None:
    ckpt = make()
    (ckpt / "config.json").write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    r = cli("doctor", str(ckpt))
    assert r.code == 3 and "config.json: JSON nested more than 64 levels deep: not a checkpoint file" in r.err


def test_a_tensor_in_two_loaded_shards_is_an_error(make: Make, cli: Cli) -> None:
    ckpt = make(shards=2)
    first, second = sorted(ckpt.glob("*.safetensors"))
    stolen = read_all(first)[0]
    rewrite_shard(second, lambda ts: [*ts, stolen])
    r = cli("doctor", str(ckpt), "--json")
    assert r.code == 1
    found = [f for f in r.json()["findings"] if f["code"] == "tensor-duplicated"]
    assert found[0]["severity"] == "error" and found[0]["tensors"] == [stolen.name]
    assert found[0]["files"] == [first.name, second.name]
    assert "vLLM loads every copy and keeps whichever file it reads last" in found[0]["message"]
    assert open_checkpoint(ckpt).duplicated == {stolen.name: (first.name, second.name)}


def test_an_mtp_tensor_missing_from_weight_map_is_named(make: Make, cli: Cli) -> None:
    ckpt = make(shards=2)
    edit_json(ckpt / INDEX_NAME, lambda d: d["weight_map"].pop("mtp.fc.weight"))
    r = cli("doctor", str(ckpt), "--json")
    assert r.code == 0 and {"index-unlisted-tensor", "index-total-size"} <= codes(r.json())
    found = next(f for f in r.json()["findings"] if f["code"] == "index-unlisted-tensor")
    assert found["tensors"] == ["mtp.fc.weight"] and found["files"] == [shard_of(ckpt, "mtp.fc.weight").name]
    assert found["message"].startswith("1 tensors (1 of them mtp.*) sit in indexed shards but not in weight_map: "
                                       "vLLM loads them anyway (it reads whole files)")


def test_a_healthy_hf_style_link_inside_is_still_read(make: Make, cli: Cli) -> None:
    ckpt = make()
    (ckpt / "chat_template.real").write_text((ckpt / "chat_template.jinja").read_text())
    _link(ckpt, "chat_template.jinja", Path("chat_template.real"))
    assert open_checkpoint(ckpt).chat_template and not open_checkpoint(ckpt).unsafe_files
    assert json.loads(cli("doctor", str(ckpt), "--json").out)["findings"] == []


@pytest.mark.parametrize("name", ["config.json", INDEX_NAME, "hf_quant_config.json"])
@pytest.mark.parametrize("kind", ["fifo", "outside"])
def test_config_index_and_quant_config_are_read_only_when_regular_and_inside(make: Make, cli: Cli, secret: Path,
                                                                             name: str, kind: str) -> None:
    ckpt = make(shards=2, quant="modelopt-nvfp4") if name == "hf_quant_config.json" else make(shards=2)
    assert (ckpt / name).is_file()
    (ckpt / name).unlink()
    if kind == "fifo":
        os.mkfifo(ckpt / name)
    else:
        os.symlink(secret, ckpt / name)
    r = cli("doctor", str(ckpt), "--json")
    reason = "not a regular file (a FIFO)" if kind == "fifo" else "a symlink that leaves"
    assert SECRET not in r.out + r.err and "Traceback" not in r.err
    if name == "hf_quant_config.json":  # not needed to open the checkpoint: never read, reported
        found = next(f for f in r.json()["findings"] if f["code"] == "file-outside-checkpoint")
        assert r.code == 1 and found["message"].startswith(f"{name} is {reason}")
    else:
        assert r.code == 3 and f"file {name!r}, {reason}" in r.err


def test_serve_reads_no_tokenizer_file_through_a_link_that_leaves(make: Make, cli: Cli, tmp_path: Path) -> None:
    outside = tmp_path / "outside-tokenizer_config.json"
    decoder = {str(i): {"content": t} for i, t in enumerate(("<think>", "</think>", "<tool_call>", "</tool_call>"))}
    outside.write_text(json.dumps({"added_tokens_decoder": decoder}))
    ckpt = make()
    (ckpt / "tokenizer_config.json").write_text(outside.read_text())
    assert "--reasoning-parser" in cli("serve", str(ckpt)).out  # the tokens, read from a regular file inside, count
    _link(ckpt, "tokenizer_config.json", outside)
    r = cli("serve", str(ckpt))
    assert r.code == 0 and "--reasoning-parser" not in r.out and "--tool-call-parser" not in r.out
