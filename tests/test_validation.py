"""Bad input, one kind at a time: each is one line `error: …`, exit 2, before any work, with nothing written."""

from __future__ import annotations

import json
import os
import shutil
import stat
import warnings
from pathlib import Path

import pytest

from conftest_lm import tiny_dir  # noqa: F401  (fixture)
from nashpref.cli import main
from nashpref.validate import size_text

PROMPTS = ["describe the red cat", "tell me about a robot", "what is the river like?", "describe the golden ship"]


def run(argv: list, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_bad_input(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# ---- prompt files ---------------------------------------------------------------------------------------------
PROMPT_FILES = {
    "not-utf8": (b'{"prompt": "caf\xe9"}\n', "is not UTF-8 text (byte 0xe9 on line 1)"),
    "empty": (b"\n  \n", "prompts file is empty"),
    "garbled-json": (b'{"prompt": "a"}\n{"prompt": \n', "line 2 is not a JSON object"),
    "too-long": (None, "exceeds the model's context of 256 positions"),
}


@pytest.mark.parametrize("kind", list(PROMPT_FILES))
def test_bad_prompt_files(kind, tiny_dir, tmp_path, capsys):  # noqa: F811
    content, message = PROMPT_FILES[kind]
    path = tmp_path / "prompts.jsonl"
    if content is None:         # 300 words: more tokens than the tiny model's 256 positions
        rows = [{"prompt": " ".join(["warm"] * 300)}] + [{"prompt": p} for p in PROMPTS]
        content = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.write_bytes(content)
    out = tmp_path / "run"
    code, _, err = run(["train", "--policy", tiny_dir / "policy", "--preference", f"reward:{tiny_dir / 'reward'}",
                        "--prompts", path, "--solver", "sppo", "--sampler", "hf", "--heldout", 1, "--iterations", 1,
                        "--out", out],
                       capsys)
    assert_bad_input(code, err, message)
    assert not out.exists()


# ---- models and checkpoints -------------------------------------------------------------------------------------
def train_argv(tiny: Path, prompts: Path, out: Path, policy: Path | None = None) -> list:
    return ["train", "--policy", policy or tiny / "policy", "--preference", f"reward:{tiny / 'reward'}",
            "--prompts", prompts, "--solver", "sppo", "--sampler", "hf", "--heldout", 1, "--iterations", 1,
            "--samples", 2, "--max-new-tokens", 4, "--eval-samples", 2, "--out", out]


@pytest.fixture()
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS), encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", ["no-config", "no-weights", "no-tokenizer"])
def test_model_directories_that_are_not_models(kind, tiny_dir, prompts_file, tmp_path, capsys):  # noqa: F811
    model = tmp_path / "model"
    shutil.copytree(tiny_dir / "policy", model)
    remove = {"no-config": ["config.json"], "no-weights": [p.name for p in model.glob("*.safetensors")],
              "no-tokenizer": ["tokenizer.json", "tokenizer_config.json"]}[kind]
    for name in remove:
        (model / name).unlink()
    message = {"no-config": "no config.json", "no-weights": "has no weights", "no-tokenizer": "has no tokenizer"}
    code, _, err = run(train_argv(tiny_dir, prompts_file, tmp_path / "run", model), capsys)
    assert_bad_input(code, err, str(model), message[kind])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("spec, message", [("judge:vllm:", "expected judge:vllm:PATH"),
                                           ("judge:vllm:/nonexistent/judge", "model directory does not exist")])
def test_bad_judge_specs_are_one_line(spec, message, tiny_dir, prompts_file, tmp_path, capsys):  # noqa: F811
    argv = train_argv(tiny_dir, prompts_file, tmp_path / "run", tiny_dir / "policy")
    argv[argv.index("--preference") + 1] = spec
    code, _, err = run(argv, capsys)
    assert_bad_input(code, err, message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("part", ["state", "weights"])
def test_corrupt_checkpoints_are_named(part, tiny_dir, prompts_file, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    assert run(train_argv(tiny_dir, prompts_file, out), capsys)[0] == 0
    checkpoint = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    victim = checkpoint / "checkpoint.pt" if part == "state" else next((checkpoint / "model").glob("*.safetensors"))
    victim.write_bytes(victim.read_bytes()[:100])           # truncated, as by a full disk
    argv = train_argv(tiny_dir, prompts_file, out)
    argv[argv.index("--iterations") + 1] = 2
    code, _, err = run(argv + ["--resume"], capsys)
    assert_bad_input(code, err, str(victim), "cannot be read")


# ---- a user hook that fails mid-run ------------------------------------------------------------------------------
HOOK = '''
import json, pathlib
COUNT = pathlib.Path(__file__).with_suffix(".count")

def judge(prompts, a, b):
    calls = int(COUNT.read_text()) if COUNT.exists() else 0
    COUNT.write_text(str(calls + 1))
    if calls >= 1:                       # the probe passes; the first training round fails
        {failure}
    return [0.5] * len(a)
'''


@pytest.mark.parametrize("failure, message", [("raise RuntimeError('rater offline')", "raised RuntimeError: "
                                                                                      "rater offline"),
                                              ("return [float('nan')] * len(a)", "outside [0, 1]")])
def test_a_hook_failing_mid_run_is_one_line_and_does_not_block_a_rerun(failure, message, tiny_dir, prompts_file,
                                                                       tmp_path, capsys):  # noqa: F811
    hook = tmp_path / "hook.py"
    hook.write_text(HOOK.replace("{failure}", failure))
    out = tmp_path / "run"
    argv = train_argv(tiny_dir, prompts_file, out)
    argv[argv.index("--preference") + 1] = f"python:{hook}:judge"
    code, _, err = run(argv, capsys)
    assert_bad_input(code, err, f"python:{hook}:judge", message)
    assert not (out / "final").exists()
    hook.write_text(HOOK.replace("{failure}", "pass"))       # the rater is back: the same command runs again
    code, _, err = run(argv, capsys)
    assert code == 0, err
    assert (out / "final" / "config.json").is_file()


# ---- absurd sizes -----------------------------------------------------------------------------------------------
GAMES = {
    "repeat": '[[context]]\nrepeat = 100000000\npreference = { kind = "random", n = 16, seed = 1 }\n',
    "random-n": '[preference]\nkind = "random"\nn = 10000000\nseed = 1\n',
}


@pytest.mark.parametrize("kind", list(GAMES))
def test_games_too_large_for_memory_are_refused_with_the_estimate(kind, tmp_path, capsys):
    game = tmp_path / "big.toml"
    game.write_text('name = "big"\ntau = 0.1\n' + GAMES[kind])
    code, _, err = run(["solve", "--game", game, "--solver", "egpo", "--out", tmp_path / "run"], capsys)
    assert_bad_input(code, err, "would need about", "of memory", "is available")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag, value", [("--samples", 1_000_000_000), ("--iters", 10 ** 18)])
def test_sampled_runs_too_large_for_memory_are_refused(flag, value, tmp_path, capsys):
    code, _, err = run(["solve", "--game", "weighted-rps", "--solver", "egpo", "--mode", "sampled", flag, value,
                        "--out", tmp_path / "run"], capsys)
    assert_bad_input(code, err, f"{flag} {value}", "would need about")
    assert not (tmp_path / "run").exists()


def test_size_text():
    assert [size_text(x) for x in (512, 2048, 3 * 2 ** 30)] == ["512 B", "2 KB", "3 GB"]


# ---- the output directory --------------------------------------------------------------------------------------
def test_an_unwritable_out_is_refused_before_the_work(tmp_path, capsys, monkeypatch):
    parent = tmp_path / "locked"
    parent.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == parent else real_access(p, mode))
    code, out, err = run(["solve", "--game", "weighted-rps", "--solver", "all", "--out", parent / "run"], capsys)
    assert_bad_input(code, err, f"{parent} is not writable")
    assert out == "" and list(parent.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_outputs_honour_the_umask(umask, tmp_path, capsys):
    previous = os.umask(umask)
    try:
        assert run(["solve", "--game", "weighted-rps", "--solver", "egpo", "--out", tmp_path / "run"], capsys)[0] == 0
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [tmp_path / "run", *(tmp_path / "run").iterdir()]}
    assert modes.pop("run") == 0o777 & ~umask
    assert modes and all(mode == 0o666 & ~umask for mode in modes.values()), modes


def test_staging_left_by_a_killed_process_is_removed(tmp_path, capsys):
    dead = tmp_path / ".run.999999999.abc.tmp"        # no such PID
    dead.mkdir()
    (dead / "result.json").write_text("{}")
    assert run(["solve", "--game", "weighted-rps", "--solver", "egpo", "--out", tmp_path / "run"], capsys)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_games_lists_the_good_files_and_names_the_broken_one(tmp_path, capsys, monkeypatch):
    games = Path(__file__).resolve().parents[1] / "games"
    for name in ("rps", "weighted-rps"):
        shutil.copy(games / f"{name}.toml", tmp_path)
    (tmp_path / "broken.toml").write_text('name = "broken"\ntau = 0.1\n[preference]\nkind = "matrix"\n'
                                          'matrix = [[0.5, nan], [nan, 0.5]]\n')
    monkeypatch.setenv("NASHPREF_GAMES", str(tmp_path))
    code, out, err = run(["games"], capsys)
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["rps", "weighted-rps"]
    assert err.startswith(f"warning: skipped {tmp_path / 'broken.toml'}") and len(err.splitlines()) == 1


def test_no_numpy_warnings_on_a_successful_run_with_extreme_rewards(tmp_path, capsys):
    game = tmp_path / "bt.toml"
    game.write_text('name = "bt"\ntau = 0.1\n[preference]\nkind = "bradley-terry"\nrewards = [1e308, -1e308, 0.0]\n'
                    "scale = 10.0\n")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        code, _, err = run(["equilibrium", "--game", game, "--out", tmp_path / "eq"], capsys)
    assert code == 0 and err == ""
    assert not seen, [str(w.message) for w in seen]


def test_a_tokenizer_without_a_chat_template_is_warned_about(tiny_dir, tmp_path):  # noqa: F811
    from nashpref.lm.policy import LMPolicy

    model = tmp_path / "policy"
    shutil.copytree(tiny_dir / "policy", model)
    (model / "chat_template.jinja").unlink()
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="has no chat template: prompts are given to the model as plain text"):
        policy, _ = LMPolicy.from_pretrained(str(model), PROMPTS, device="cpu")
    # plain text: the prompt's own tokens, no role markers
    assert policy.prompt_ids[0] == policy.tokenizer(PROMPTS[0], add_special_tokens=True)["input_ids"]
