"""`mtpforge demo`: the graft story end to end on the bundled tiny trained model, in a few minutes on a CPU.

1. the base (tiny-qwen3.5): inspect, doctor, verify -> its head drafts;
2. its finetune that lost the head but still declares it (the tmax-27b case): doctor finds
   `mtp-missing`, verify says `collapsed`; `graft --donor tiny-qwen3.5` restores drafting, and `heal`
   retrains the grafted head on the finetune's own trunk (verify again: it drafts better);
3. `quantize --scheme w4a16 --group-size 32`: KLD against the base, the head still drafts;
   an ignore list that forgets the head is found by doctor and repaired by `doctor --fix`;
4. `strip --vision` for a text-only build;
5. a header-exact hollow replica of the real Qwen3.6-27B: doctor, and a full-scale graft.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

import click

from mtpforge.cli.render import render_doctor, render_inspect, render_plan, render_verify
from mtpforge.diagnosis.doctor import doctor
from mtpforge.diagnosis.inspection import inspect_checkpoint
from mtpforge.engine.launch import ServeOptions, launch_line
from mtpforge.engine.memory import PlanRequest, plan
from mtpforge.errors import UsageError
from mtpforge.surgery.fix import fix
from mtpforge.surgery.graft import graft
from mtpforge.surgery.strip import strip
from mtpforge.testing.replica import make_hollow_replica
from mtpforge.units import GIB

VERIFY: dict[str, Any] = {"k": 3, "new_tokens": 48, "max_prompts": 8}
MARKER = ".mtpforge-demo"  # names a --workdir an earlier demo filled, so that the refusal can say so


def run_demo(workdir: str | None = None) -> int:
    """Run the story; return 0 when every verdict is the expected one."""
    from mtpforge.heal import heal
    from mtpforge.quant import quantize
    from mtpforge.verify import verify

    models = Path(str(resources.files("mtpforge") / "models"))
    base, finetune = models / "tiny-qwen3.5", models / "tiny-qwen3.5-finetune"
    root = _claim(Path(workdir)) if workdir else Path(tempfile.mkdtemp(prefix="mtpforge-demo-"))
    surprises = 0
    try:
        _title("1. the bundled base: tiny-qwen3.5 (trained by scripts/train_tiny.py)")
        click.echo(render_inspect(inspect_checkpoint(base).to_dict()))
        surprises += _doctor(base, expect_ok=True)
        base_report = verify(str(base), **VERIFY)
        click.echo(render_verify(base_report.to_dict()))

        _title("2. a finetune that lost its head but still declares it (the tmax-27b case)")
        surprises += _doctor(finetune, expect_ok=False)
        before = verify(str(finetune), **VERIFY)
        click.echo(render_verify(before.to_dict()))
        _step(f"mtpforge graft {finetune.name} --donor {base.name} --out finetune-mtp")
        graft(str(finetune), str(base), str(root / "finetune-mtp"))
        surprises += _doctor(root / "finetune-mtp", expect_ok=True)
        after = verify(str(root / "finetune-mtp"), **VERIFY)
        click.echo(render_verify(after.to_dict()))
        surprises += int(before.verdict != "collapsed" or after.verdict != "ok")
        _step("mtpforge heal finetune-mtp --out finetune-healed   (the grafted head learned the base's trunk: retrain it "
              "on the finetune's)")
        healed = heal(str(root / "finetune-mtp"), str(root / "finetune-healed"), progress=lambda m: click.echo(m, err=True))
        click.echo(healed.render())
        surprises += _doctor(root / "finetune-healed", expect_ok=True)
        after_heal = verify(str(root / "finetune-healed"), **VERIFY)
        click.echo(render_verify(after_heal.to_dict()))
        surprises += int(healed.kept != "healed" or after_heal.verdict != "ok")

        _title("3. a W4A16 build of the base")
        _step(f"mtpforge quantize {base.name} --scheme w4a16 --group-size 32 --out w4a16")
        quantize(str(base), str(root / "w4a16"), scheme="w4a16", group_size=32)
        surprises += _doctor(root / "w4a16", expect_ok=True)
        q_report = verify(str(root / "w4a16"), reference=str(base), **VERIFY)
        click.echo(render_verify(q_report.to_dict()))
        broken = root / "w4a16-forgot-head"
        shutil.copytree(root / "w4a16", broken)
        config = json.loads((broken / "config.json").read_text())
        config["quantization_config"]["ignore"].remove("re:^mtp.*")
        (broken / "config.json").write_text(json.dumps(config, indent=2))
        _step("(an ignore list without re:^mtp.*, as careless exporters write it)")
        surprises += _doctor(broken, expect_ok=False)
        _step("mtpforge doctor w4a16-forgot-head --fix --out w4a16-fixed")
        fix(str(broken), str(root / "w4a16-fixed"))
        surprises += _doctor(root / "w4a16-fixed", expect_ok=True)

        _title("4. a text-only build")
        _step(f"mtpforge strip {base.name} --vision --out text-only")
        strip(str(base), str(root / "text-only"))
        surprises += _doctor(root / "text-only", expect_ok=True)

        _title("5. full scale: a hollow replica of the real Qwen3.6-27B (all 1199 headers, 51.7 GiB of holes)")
        replica = make_hollow_replica(root / "Qwen3.6-27B")
        surprises += _doctor(replica, expect_ok=True)
        headless = make_hollow_replica(root / "tmax-27b", drop=("mtp",))
        _step("mtpforge graft tmax-27b --donor Qwen3.6-27B --out tmax-27b-mtp   (writes the 0.85 GB head, links the rest)")
        start = time.perf_counter()
        graft(str(headless), str(replica), str(root / "tmax-27b-mtp"))
        click.echo(f"(graft took {time.perf_counter() - start:.1f} s)")
        surprises += _doctor(root / "tmax-27b-mtp", expect_ok=True)

        _title("6. how it would serve: memory plan and launch line for one 80 GiB GPU")
        _step("mtpforge plan tmax-27b-mtp --gpu-memory 80GiB --kv-dtype fp8 --max-model-len 131072 --language-model-only")
        planned = plan(root / "tmax-27b-mtp",
                       PlanRequest(gpu_memory=80 * GIB, kv_dtype="fp8", max_model_len=131072, language_model_only=True))
        click.echo(render_plan(planned.to_dict()))
        _step("mtpforge serve tmax-27b-mtp --gpu-memory 80GiB --kv-dtype fp8 --max-model-len 131072 --text-only")
        click.echo(launch_line(root / "tmax-27b-mtp", ServeOptions(kv_dtype="fp8", max_model_len=131072, util=0.9, text_only=True,
                                                                    max_num_seqs=planned.safe_max_num_seqs)).shell())
        surprises += int(not planned.ok)

        pos = lambda r: r.acceptance["acceptance_per_position"] if r.acceptance else [0.0] * VERIFY["k"]  # noqa: E731
        click.echo("\nacceptance per draft position (greedy, reference runtime):")
        for label, report in (("base", base_report), ("finetune, no head", before),
                              ("finetune + grafted head", after), ("finetune + healed head", after_heal),
                              ("W4A16 base", q_report)):
            click.echo(f"  {label:<26}" + "".join(f"{100 * r:>8.1f}%" for r in pos(report)) + f"   {report.verdict}")
        click.echo("\nevery verdict as expected" if not surprises else f"\n{surprises} unexpected verdict(s)")
        return 0 if not surprises else 1
    finally:
        if workdir is None:  # the temporary directory is the demo's own; a --workdir is the user's and is left as it is
            shutil.rmtree(root, ignore_errors=True)


def _claim(root: Path) -> Path:
    """Create `root`, or accept it empty; refuse anything else, before any work (the demo deletes nothing it did not create)."""
    if root.is_dir():
        entries = sorted(p.name for p in root.iterdir())
        if entries:
            earlier = (root / MARKER).is_file()
            what = "holds an earlier demo's output" if earlier else f"is not empty ({_count(entries)})"
            raise UsageError(f"--workdir {root} {what}; demo writes only into a new or empty directory and deletes nothing there",
                             hint=f"pass a new or empty directory (--workdir {root / 'mtpforge-demo'}), or leave --workdir out "
                                  "for a temporary one that is removed afterwards")
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("written by mtpforge demo\n")
    return root


def _count(names: list[str]) -> str:
    return f"it holds {names[0]}" if len(names) == 1 else f"it holds {len(names)} entries, e.g. {names[0]}"


def _title(text: str) -> None:
    click.echo(f"\n=== {text}")


def _step(command: str) -> None:
    click.echo(f"\n$ {command}")


def _doctor(path: Path, *, expect_ok: bool) -> int:
    report = doctor(path)
    click.echo(render_doctor(report))
    return int(report.ok != expect_ok)
