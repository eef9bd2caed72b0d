"""The CLI contract: exit codes, one JSON document on stdout, clear errors on
stderr, and refusal of paths that leave the checkpoint directory."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from mtpforge.checkpoint.index import INDEX_NAME
from mtpforge.testing.replica import make_hollow_replica, reference_inventory

from .conftest import CliResult, edit_json

Cli = Callable[..., CliResult]
Make = Callable[..., Path]


def test_inspect_the_hollow_27b_replica(tmp_path: Path, cli: Cli) -> None:
    replica = make_hollow_replica(tmp_path / "qwen3.6-27b")
    r = cli("inspect", str(replica), "--json")
    assert r.code == 0 and r.err == ""
    d = r.json()
    assert d["schema"] == "mtpforge.inspect/1" and d["family"] == "qwen3_5"
    assert d["parameters"] == 27_781_427_952
    assert {g: v["tensors"] for g, v in d["groups"].items()} == {"trunk": 849, "mtp": 15, "vision": 333, "embeddings": 2}
    assert d["layers"] == {"total": 64, "full_attention": 16, "linear_attention": 48}
    assert d["mtp"]["tensors"] == 15 and d["mtp"]["declared_layers"] == 1 and d["mtp"]["quantized"] == 0
    _, inventory = reference_inventory()
    mtp_params = sum(math.prod(t["shape"]) for t in inventory if t["name"].startswith("mtp."))
    assert d["groups"]["mtp"]["parameters"] == mtp_params and d["mtp"]["bytes"] == 2 * mtp_params  # BF16: ~0.85 GB
    assert d["shards"]["count"] == 15 and d["shards"]["total_size"] == d["bytes"] == 55_562_855_904
    assert d["quantization"] is None and d["dtypes"] == {"BF16": 55_562_855_904}

    human = cli("inspect", str(replica))
    assert human.code == 0 and "27,781,427,952 parameters" in human.out and "15/15 tensors" in human.out


def test_doctor_finds_nothing_wrong_with_the_27b_replica(tmp_path: Path, cli: Cli) -> None:
    r = cli("doctor", str(make_hollow_replica(tmp_path / "r")), "--json")
    assert r.code == 0 and r.json()["findings"] == [] and r.json()["schema"] == "mtpforge.doctor/1"


def test_doctor_on_a_headless_27b_finetune(tmp_path: Path, cli: Cli) -> None:
    replica = make_hollow_replica(tmp_path / "tmax", drop=("mtp",))
    r = cli("doctor", str(replica), "--json")
    assert r.code == 1 and [f["code"] for f in r.json()["findings"]] == ["mtp-missing"]
    human = cli("doctor", str(replica))
    assert human.code == 1 and "mtp-missing" in human.out and "fix:" in human.out


def test_inspect_reports_quantization_and_mtp_status(make: Make, cli: Cli) -> None:
    d = cli("inspect", str(make(quant="w4a16-asym", shards=2)), "--json").json()
    q = d["quantization"]
    assert q["configs"][0]["method"] == "compressed-tensors" and q["configs"][0]["schemes"] == ["W4A16 int g32 asym"]
    assert "re:^mtp.*" in q["configs"][0]["ignore"]
    # 3 GDN layers x (qkv, z, out) + 1 attention layer x (q, k, v, o) + 4 x (gate, up, down)
    assert q["linear_quantized"]["trunk"] == {"quantized": 3 * 3 + 4 + 4 * 3, "total": 3 * 5 + 4 + 4 * 3}
    assert d["mtp"]["quantized"] == 0 and d["mtp"]["present"]
    # parameters of quantized weights are their logical (unpacked) sizes
    plain = cli("inspect", str(make("plain")), "--json").json()
    assert d["parameters"] == plain["parameters"] and d["bytes"] < plain["bytes"]


def test_inspect_text_only_and_stripped(make: Make, cli: Cli) -> None:
    d = cli("inspect", str(make(vision=False)), "--json").json()
    assert d["vision"] == {"declared": True, "language_model_only": True, "tensors": 0, "bytes": 0}
    human = cli("inspect", str(make("t", text_only_arch=True))).out
    assert "none (text-only architecture)" in human


def test_strict_turns_warnings_into_failure(make: Make, cli: Cli) -> None:
    ckpt = make()
    (ckpt / "tokenizer.json").unlink()
    warning = ("  warning tokenizer-missing: no tokenizer.json, tokenizer.model or vocab.json in the checkpoint\n"
               "          fix: copy the tokenizer files from the base model\n")
    lenient = cli("doctor", str(ckpt))
    assert lenient.code == 0 and warning in lenient.out
    strict = cli("doctor", str(ckpt), "--strict")
    assert strict.code == 1 and warning in strict.out  # the warning that failed it, with its fix
    assert strict.out.rstrip().endswith("FAILED (--strict): warnings count as failures")


@pytest.mark.parametrize("verb", ["inspect", "doctor"])
def test_input_errors_exit_3_with_a_message_not_a_traceback(tmp_path: Path, make: Make, cli: Cli, verb: str) -> None:
    cases: dict[str, tuple[Path, list[str]]] = {}  # what the user reads: the file at fault, what is wrong, what to do
    cases["missing dir"] = tmp_path / "nope", [f"Error: {tmp_path / 'nope'}: not a directory\n"
                                                "hint: pass the folder that holds config.json\n"]
    empty = tmp_path / "empty"
    empty.mkdir()
    cases["no config"] = empty, [f"Error: {empty}: no config.json\nhint: pass the folder that holds config.json and the shards\n"]
    bad_json = make("badjson")
    (bad_json / "config.json").write_text("{")
    cases["bad config"] = bad_json, [f"Error: {bad_json / 'config.json'}: not valid JSON: ",
                                     "hint: restore this file from the original checkpoint\n"]
    llama = make("llama")
    edit_json(llama / "config.json", lambda c: c.update(model_type="llama"))
    cases["unknown family"] = llama, ["Error: config.json: model_type 'llama' is not a family mtpforge knows (known: qwen3_5, ",
                                      "hint: mtpforge has rules for Qwen3.5 / Qwen3.6 / Qwen3-Next, DeepSeek-V3 "]
    bad_index = make("badindex", shards=2)
    (bad_index / INDEX_NAME).write_text('{"weight_map": [1, 2]}')
    cases["bad index"] = bad_index, [f"Error: {bad_index / INDEX_NAME}: 'weight_map' must map tensor names to shard file names\n"]
    for case, (path, messages) in cases.items():
        r = cli(verb, str(path))
        assert r.code == 3, case
        assert r.err.startswith("Error: ") and "Traceback" not in r.err, case
        assert all(m in r.err for m in messages), (case, r.err)
        assert r.out == "", case


@pytest.mark.parametrize("trick", ["dotdot", "absolute", "symlink-out", "backslash"])
def test_index_paths_that_leave_the_directory_are_refused(tmp_path: Path, make: Make, cli: Cli, trick: str) -> None:
    outside = make("outside")  # a real, readable shard outside the target
    ckpt = make("target", shards=2)
    target = {"dotdot": "../outside/model.safetensors", "absolute": str(outside / "model.safetensors"),
              "symlink-out": "linked.safetensors", "backslash": "..\\outside\\model.safetensors"}[trick]
    if trick == "symlink-out":
        os.symlink(outside / "model.safetensors", ckpt / "linked.safetensors")
    edit_json(ckpt / INDEX_NAME, lambda d: d["weight_map"].update({"lm_head.weight": target}))
    if trick == "symlink-out":
        message = (f"Error: {INDEX_NAME} maps 'lm_head.weight' to 'linked.safetensors', a symlink that leaves {ckpt} "
                   f"(to {outside / 'model.safetensors'})\n"
                   "hint: copy the file into the checkpoint directory instead of linking it\n")
    else:
        message = (f"Error: {INDEX_NAME} maps 'lm_head.weight' to {target!r}: "
                   f"shard paths must be relative and stay inside {ckpt}\n"
                   "hint: the index is corrupt or hostile; re-download it\n")
    for verb in ("inspect", "doctor"):
        r = cli(verb, str(ckpt))
        assert r.code == 3 and "Traceback" not in r.err
        assert "inside" in r.err or "leaves" in r.err
        assert message in r.err, r.err


def test_a_symlinked_shard_outside_is_refused_even_unindexed(make: Make, cli: Cli) -> None:
    outside = make("outside")
    ckpt = make("target")
    os.symlink(outside / "model.safetensors", ckpt / "extra.safetensors")
    r = cli("doctor", str(ckpt))
    assert r.code == 3 and "leaves" in r.err
    assert (f"Error: shard 'extra.safetensors', a symlink that leaves {ckpt} (to {outside / 'model.safetensors'})\n"
            "hint: copy the file into the checkpoint directory instead of linking it\n") in r.err


def test_hugging_face_cache_snapshots_are_allowed(tmp_path: Path, make: Make, cli: Cli) -> None:
    # <cache>/models--org--name/snapshots/<sha>/file -> ../../blobs/<hash>
    built = make("built", shards=2)
    repo = tmp_path / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for f in built.iterdir():
        blob = repo / "blobs" / f"hash-{f.name}"
        blob.write_bytes(f.read_bytes())
        os.symlink(os.path.relpath(blob, snap), snap / f.name)
    r = cli("doctor", str(snap), "--json")
    assert r.code == 0 and r.json()["findings"] == []


def test_corrupt_shard_inspect_points_to_doctor(make: Make, cli: Cli) -> None:
    ckpt = make(shards=2)
    (ckpt / "model-00001-of-00002.safetensors").write_bytes(b"\x00" * 3)
    r = cli("inspect", str(ckpt))
    assert r.code == 3 and "mtpforge doctor" in r.err
    assert (f"Error: 1 shard(s) cannot be read; first: {ckpt / 'model-00001-of-00002.safetensors'}: invalid safetensors header: "
            "file is 3 bytes, shorter than the 8-byte header length\n") in r.err
    assert f"hint: run `mtpforge doctor {ckpt}` for the full diagnosis\n" in r.err
    d = cli("doctor", str(ckpt), "--json")
    assert d.code == 1 and "header-invalid" in {f["code"] for f in d.json()["findings"]}


def test_usage_errors_exit_2(cli: Cli) -> None:
    for args, usage, error in ((("inspect",), "mtpforge inspect [OPTIONS] PATH", "Missing argument 'PATH'."),
                               (("doctor", ".", "--no-such-flag"), "mtpforge doctor [OPTIONS] PATH",
                                "No such option '--no-such-flag'."),
                               (("frobnicate",), "mtpforge [OPTIONS] COMMAND [ARGS]...", "No such command 'frobnicate'.")):
        r = cli(*args)
        assert r.code == 2 and r.out == ""
        assert r.err.startswith(f"Usage: {usage}\n") and r.err.endswith(f"\nError: {error}\n"), (args, r.err)
    help_ = cli("--help")
    assert help_.code == 0 and "Exit codes" in help_.out


def test_graft_offers_no_mtp_precision_it_cannot_honour(make: Make, cli: Cli, tmp_path: Path) -> None:
    help_ = cli("graft", "--help")
    assert help_.code == 0 and "--mtp-precision" not in help_.out and "unquantized MTP head into TARGET as stored" in help_.out
    r = cli("graft", str(make("t", mtp=False)), "--donor", str(make("d")), "--out", str(tmp_path / "o"),
            "--mtp-precision", "match")
    assert r.code == 2 and "Error: No such option '--mtp-precision'" in r.err and not (tmp_path / "o").exists()


@pytest.mark.parametrize(("verb", "out_help"), [("doctor", "Output directory for --fix."),
                                                ("graft", "Output directory. [required]"),
                                                ("strip", "Output directory. [required]"),
                                                ("quantize", "Output directory. [required]")])
def test_every_writing_verb_offers_out_overwrite_and_dry_run(cli: Cli, verb: str, out_help: str) -> None:
    help_ = " ".join(cli(verb, "--help").out.split())  # click wraps help text
    assert f"--out DIRECTORY {out_help}" in help_
    assert "--overwrite Replace OUT if it exists." in help_ and "--dry-run Validate and print the plan; write nothing." in help_


def test_bugs_exit_70_with_the_traceback(make: Make, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    import mtpforge.diagnosis.doctor as doctor_module

    def boom(ctx: object) -> list[object]:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(doctor_module, "CHECKS", (boom,))
    r = cli("doctor", str(make()))
    assert r.code == 70 and "Traceback" in r.err and "simulated bug" in r.err


def test_json_output_is_exactly_one_document(make: Make, cli: Cli) -> None:
    for verb in ("inspect", "doctor"):
        r = cli(verb, str(make(verb, mtp=False)), "--json")
        json.loads(r.out)  # raises if anything else was printed to stdout
        assert r.err == ""


@pytest.mark.slow
def test_demo_tells_the_whole_story(tmp_path: Path, cli: Cli) -> None:
    work = tmp_path / "demo"
    work.mkdir()  # an empty directory is accepted
    r = cli("demo", "--workdir", str(work))
    assert r.code == 0 and "every verdict as expected" in r.out, r.out[-3000:]
    for step in ("mtpforge graft tiny-qwen3.5-finetune", "mtpforge quantize tiny-qwen3.5",
                 "mtpforge doctor w4a16-forgot-head --fix", "mtpforge strip tiny-qwen3.5 --vision", "mtpforge graft tmax-27b"):
        assert step in r.out
    assert "finetune + grafted head" in r.out and "COLLAPSED" in r.out
    assert (work / "tmax-27b-mtp" / "config.json").is_file()  # a --workdir is kept
    again = cli("demo", "--workdir", str(work))  # and never emptied by the next run
    assert again.code == 2 and f"--workdir {work} holds an earlier demo's output" in again.err
    assert (work / "tmax-27b-mtp" / "config.json").is_file()


@pytest.mark.parametrize("where", ["dot", "path"])
def test_demo_refuses_a_non_empty_workdir_and_deletes_nothing(tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch,
                                                               where: str) -> None:
    (tmp_path / "thesis.tex").write_text("three years of work")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "results.csv").write_text("1,2,3")
    if where == "dot":
        monkeypatch.chdir(tmp_path)
    workdir = "." if where == "dot" else str(tmp_path)
    r = cli("demo", "--workdir", workdir)
    assert r.code == 2 and r.out == ""
    assert f"Error: --workdir {workdir} is not empty (it holds 2 entries, e.g. data)" in r.err
    assert "demo writes only into a new or empty directory and deletes nothing there" in r.err
    assert f"hint: pass a new or empty directory (--workdir {Path(workdir) / 'mtpforge-demo'})" in r.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "thesis.tex"]  # nothing deleted, nothing added
    assert (tmp_path / "thesis.tex").read_text() == "three years of work"
    assert (tmp_path / "data" / "results.csv").read_text() == "1,2,3"


def test_demo_workdir_that_is_a_file_is_a_usage_error(tmp_path: Path, cli: Cli) -> None:
    (tmp_path / "notes").write_text("mine")
    r = cli("demo", "--workdir", str(tmp_path / "notes"))
    assert r.code == 2 and f"Directory '{tmp_path / 'notes'}' is a file" in r.err and (tmp_path / "notes").read_text() == "mine"
