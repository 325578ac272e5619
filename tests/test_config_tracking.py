"""`--config FILE`, `--print-config` and `--report-to tensorboard`: a config file is the command line written down,
and the tracker holds every number of metrics.jsonl per iteration."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from conftest_lm import tiny_dir  # noqa: F401  (fixture)
from nashpref.cli import main
from nashpref.io import read_jsonl

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(argv: list, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_file_values_are_defaults_and_flags_override(tmp_path, capsys):
    config = tmp_path / "solve.toml"
    config.write_text(f'game = "weighted-rps"\nsolver = "nash-md"\nout = "{tmp_path / "a"}"\niters = 40\n'
                      "[nash-md]\neta = 0.05\n")
    assert run(["solve", "--config", config], capsys)[0] == 0
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    assert result["iterations"] == 40 and result["solver_config"]["eta"] == 0.05
    # the same file, two flags typed after it: they win
    assert run(["solve", "--config", config, "--iters", 25, "--out", tmp_path / "b"], capsys)[0] == 0
    result = json.loads((tmp_path / "b" / "result.json").read_text())
    assert result["iterations"] == 25 and result["solver_config"]["eta"] == 0.05
    assert not (tmp_path / "a" / "metrics.jsonl").samefile(tmp_path / "b" / "metrics.jsonl")


@pytest.mark.parametrize("text, key", [("bogus = 1\n", "bogus"), ("[nash-md]\nstep = 2\n", "nash-md.step"),
                                       ("[nope]\nx = 1\n", "nope")])
def test_unknown_keys_are_an_error_naming_the_key(text, key, tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text(f'game = "rps"\nsolver = "egpo"\nout = "{tmp_path / "run"}"\n' + text)
    code, _, err = run(["solve", "--config", config], capsys)
    assert code == 2 and err.strip() == f"error: {config}: unknown key {key!r}; `nashpref … --help` lists the options"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, message", [(b"iters = \n", "not valid TOML"), (b"\xff", "not UTF-8"),
                                           (b"", "config file is empty")])
def test_unreadable_config_files(text, message, tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_bytes(text)
    code, _, err = run(["solve", "--config", config, "--game", "rps", "--solver", "egpo", "--out", tmp_path / "r"],
                       capsys)
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_print_config_round_trips_and_the_run_saves_it(tmp_path, capsys):
    argv = ["solve", "--game", "weighted-rps", "--solver", "egpo", "--mode", "sampled", "--iters", 12,
            "--samples", 4, "--labels", "bernoulli", "--lr", 0.2, "--egpo.eta", 0.3, "--out", tmp_path / "direct"]
    code, printed, _ = run(argv + ["--print-config"], capsys)
    assert code == 0 and not (tmp_path / "direct").exists()          # printing runs nothing
    saved = tmp_path / "effective.toml"
    saved.write_text(printed)
    assert run(argv, capsys)[0] == 0
    assert (tmp_path / "direct" / "config.toml").read_text() == printed
    assert run(["solve", "--config", saved, "--out", tmp_path / "again"], capsys)[0] == 0
    first = json.loads((tmp_path / "direct" / "result.json").read_text())
    second = json.loads((tmp_path / "again" / "result.json").read_text())
    first.pop("seconds"), second.pop("seconds")
    assert first == second                                           # the same run, bit for bit (seeded)


def test_yaml_config_is_the_same_command_line(tmp_path, capsys):
    """A YAML file with the options of the TOML test: the run equals the one with those options typed as flags,
    and typed flags still override the file."""
    config = tmp_path / "solve.yaml"
    config.write_text(f"game: weighted-rps\nsolver: nash-md\nout: {tmp_path / 'a'}\niters: 40\nseed:\n"
                      "nash-md:\n  eta: 0.05\n")
    assert run(["solve", "--config", config], capsys)[0] == 0
    flags = ["solve", "--game", "weighted-rps", "--solver", "nash-md", "--iters", 40, "--nash-md.eta", 0.05]
    assert run(flags + ["--out", tmp_path / "typed"], capsys)[0] == 0
    from_file = json.loads((tmp_path / "a" / "result.json").read_text())
    typed = json.loads((tmp_path / "typed" / "result.json").read_text())
    from_file.pop("seconds"), typed.pop("seconds")
    assert from_file == typed and from_file["iterations"] == 40 and from_file["solver_config"]["eta"] == 0.05
    assert run(["solve", "--config", config, "--iters", 25, "--out", tmp_path / "b"], capsys)[0] == 0
    assert json.loads((tmp_path / "b" / "result.json").read_text())["iterations"] == 25
    assert (tmp_path / "a" / "config.toml").read_text() == (tmp_path / "typed" / "config.toml").read_text().replace(
        str(tmp_path / "typed"), str(tmp_path / "a"))          # what a run saves stays TOML


@pytest.mark.parametrize("text, key", [("bogus: 1\n", "bogus"), ("nash-md:\n  step: 2\n", "nash-md.step"),
                                       ("nope:\n  x: 1\n", "nope")])
def test_unknown_yaml_keys_are_an_error_naming_the_key(text, key, tmp_path, capsys):
    config = tmp_path / "bad.yml"
    config.write_text(f"game: rps\nsolver: egpo\nout: {tmp_path / 'run'}\n" + text)
    code, _, err = run(["solve", "--config", config], capsys)
    assert code == 2 and err.strip() == f"error: {config}: unknown key {key!r}; `nashpref … --help` lists the options"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, message", [(b"iters: [3\n", "not valid YAML"), (b"- 1\n- 2\n", "key = value pairs"),
                                           (b"\xff", "not UTF-8"), (b"", "config file is empty"),
                                           (b"egpo: 3\n", "'egpo' is a table of options")])
def test_unreadable_yaml_config_files(text, message, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_bytes(text)
    code, _, err = run(["solve", "--config", config, "--game", "rps", "--solver", "egpo", "--out", tmp_path / "r"],
                       capsys)
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_example_configs_parse(capsys):
    files = sorted(EXAMPLES.glob("*.toml")) + sorted(EXAMPLES.glob("*.yaml"))
    assert len(files) >= 4
    for file in files:
        command = file.stem.split("-")[0]
        argv = ["bench", "tabular"] if command == "bench" else [command]
        code, printed, err = run(argv + ["--config", file, "--print-config"], capsys)
        assert code == 0, (file, err)
        assert printed and " = " in printed.splitlines()[0], printed
        if file.suffix == ".yaml":        # each YAML example mirrors a TOML one: the same effective options
            assert printed == run(argv + ["--config", file.with_suffix(".toml"), "--print-config"], capsys)[1]


def test_tensorboard_holds_every_number_of_the_solve_metrics(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    argv = ["solve", "--game", "weighted-rps", "--solver", "egpo", "--mode", "sampled", "--iters", 6, "--out", out]
    assert run(argv + ["--report-to", "tensorboard"], capsys)[0] == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    rows = read_jsonl(out / "metrics.jsonl")
    numeric = [k for k, v in rows[0].items() if isinstance(v, (int, float))]
    assert set(events.Tags()["scalars"]) == {f"egpo/{k}" for k in numeric}
    for key in numeric:
        logged = [(e.step, e.value) for e in events.Scalars(f"egpo/{key}")]
        # event files store float32: equal to within float32 rounding, eps(float32) relative
        assert logged == [(row["iteration"], pytest.approx(row[key], rel=2 ** -23)) for row in rows], key


def test_tensorboard_during_train_logs_each_iteration(tiny_dir, tmp_path, capsys):  # noqa: F811
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                               ["describe the red cat", "tell me about a robot", "what is the river like?"]))
    out = tmp_path / "run"
    code, _, err = run(["train", "--policy", tiny_dir / "policy", "--preference", f"reward:{tiny_dir / 'reward'}",
                        "--prompts", prompts, "--solver", "sppo", "--sampler", "hf", "--iterations", 2,
                        "--heldout", 1, "--samples", 2, "--eval-samples", 2, "--max-new-tokens", 4,
                        "--out", out, "--report-to", "tensorboard"], capsys)
    assert code == 0, err
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    rows = read_jsonl(out / "metrics.jsonl")
    for key in ("loss", "win_rate_vs_reference", "kl_to_reference", "sampling_seconds"):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        assert logged == [(row["iteration"], pytest.approx(row[key], rel=2 ** -23)) for row in rows], key
    assert (out / "config.toml").is_file()


def test_report_to_rejects_unknown_trackers(tmp_path, capsys):
    code, _, err = run(["solve", "--game", "rps", "--solver", "egpo", "--out", tmp_path / "r", "--report-to", "mlflow"],
                       capsys)
    assert code == 2 and err.strip() == "error: --report-to mlflow: choose one of none, tensorboard, wandb"


def wandb_history(run_file: Path) -> list[dict]:
    """The history records of an offline W&B run file (a LevelDB-style log of wandb's protobuf Records: a 7-byte
    file header, then 32 KiB blocks of chunks, each a 7-byte header — CRC, length, kind — and its bytes; kinds
    1 whole, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:                    # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if kind == 0:                                   # zero-filled end of a block
            pos += block - pos % block
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]


if importlib.util.find_spec("wandb") is not None:   # optional: collected only where wandb is installed
    def test_wandb_offline_run_holds_every_number_of_the_solve_metrics(tmp_path, capsys, monkeypatch):
        monkeypatch.setenv("WANDB_SILENT", "true")
        monkeypatch.setenv("WANDB_MODE", "offline")
        out = tmp_path / "run"
        argv = ["solve", "--game", "weighted-rps", "--solver", "egpo", "--mode", "sampled", "--iters", 6,
                "--out", out, "--report-to", "wandb"]
        assert run(argv, capsys)[0] == 0
        runs = sorted((out / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(runs) == 1, runs
        history = {row["_step"]: row for row in wandb_history(runs[0])}
        rows = read_jsonl(out / "metrics.jsonl")
        numeric = [k for k, v in rows[0].items() if isinstance(v, (int, float))]
        assert sorted(history) == [row["iteration"] for row in rows]
        for row in rows:
            logged = history[row["iteration"]]
            # JSON in both files: every number comes back exactly
            assert {k: logged[f"egpo/{k}"] for k in numeric} == {k: float(row[k]) for k in numeric}
            assert {k for k in logged if not k.startswith("_")} == {f"egpo/{k}" for k in numeric}
