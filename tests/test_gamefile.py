"""Game files: every kind against hand-derived matrices, contexts and repeat, shipped games, round trip, bad input."""

import math
import textwrap

import numpy as np
import pytest
import torch

from nashpref.errors import GameError
from nashpref.core.game import PreferenceGame
from nashpref.core.gamefile import games_dir, list_games, load_game, save_game
from nashpref.tolerance import tolerance

pytestmark = pytest.mark.numerics     # rounding-sensitive comparisons: CI reruns them with 2 threads

F64 = torch.float64

SHIPPED = ["batch-256", "bt-mixture", "bt-transitive", "condorcet-3", "egpo-random", "linear-reward", "rps",
           "weighted-rps"]


def write(tmp_path, text, name="game.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_text(tmp_path, text, **kwargs):
    return load_game(str(write(tmp_path, text)), **kwargs)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


# ---- every kind -------------------------------------------------------------------------------------------------
def test_matrix_kind_with_labels_and_explicit_reference(tmp_path):
    game = load_text(tmp_path, """
        name = "tiny"
        description = "two actions"
        tau = 0.25
        actions = ["left", "right"]
        reference = [0.25, 0.75]
        [preference]
        kind = "matrix"
        matrix = [[0.5, 0.9], [0.1, 0.5]]
    """)
    assert (game.name, game.description, game.tau, game.actions) == ("tiny", "two actions", 0.25, ("left", "right"))
    assert game.P.tolist() == [[[0.5, 0.9], [0.1, 0.5]]]
    assert game.mu.tolist() == [[0.25, 0.75]]


def test_defaults_name_from_file_tau_and_uniform_reference(tmp_path):
    game = load_game(str(write(tmp_path, """
        [preference]
        kind = "matrix"
        matrix = [[0.5, 0.0, 1.0], [1.0, 0.5, 0.0], [0.0, 1.0, 0.5]]
    """, name="plain.toml")))
    assert (game.name, game.tau, game.actions, game.description) == ("plain", 0.1, None, "")
    assert game.mu.tolist() == [[1 / 3, 1 / 3, 1 / 3]]


def test_random_kind_follows_its_documented_draws(tmp_path):
    game = load_text(tmp_path, """
        [preference]
        kind = "random"
        n = 4
        seed = 7
    """)
    U = np.random.default_rng(7).random((4, 4))
    P = game.P[0].numpy()
    for i in range(4):
        assert P[i, i] == 0.5
        for j in range(i):
            assert P[i, j] == U[i, j]
            assert P[j, i] == 1 - U[i, j]


def test_bradley_terry_kind(tmp_path):
    game = load_text(tmp_path, """
        [preference]
        kind = "bradley-terry"
        rewards = [1.0, 0.0, -0.5]
        scale = 2.0
    """)
    P = game.P[0].numpy()
    expected = [[0.5, sigmoid(2.0), sigmoid(3.0)], [sigmoid(-2.0), 0.5, sigmoid(1.0)],
                [sigmoid(-3.0), sigmoid(-1.0), 0.5]]
    np.testing.assert_allclose(P, expected, rtol=0, atol=tolerance(F64, scale=3.0))  # σ of |x| ≤ 3


def test_bt_mixture_kind_normalises_weights(tmp_path):
    game = load_text(tmp_path, """
        [preference]
        kind = "bt-mixture"
        rewards = [[1.0, 0.0], [0.0, 1.0]]
        weights = [3.0, 1.0]
    """)
    p01 = 0.75 * sigmoid(1.0) + 0.25 * sigmoid(-1.0)
    np.testing.assert_allclose(game.P[0].numpy(), [[0.5, p01], [1 - p01, 0.5]], rtol=0,
                               atol=tolerance(F64, length=2))


def test_linear_reward_kind(tmp_path):
    game = load_text(tmp_path, """
        [preference]
        kind = "linear-reward"
        rewards = [1.0, 0.5, 0.0]
    """)
    assert game.P[0].tolist() == [[0.5, 0.75, 1.0], [0.25, 0.5, 0.75], [0.0, 0.25, 0.5]]


def test_random_logits_reference(tmp_path):
    game = load_text(tmp_path, """
        reference = { random-logits = { seed = 5, scale = 2.0 } }
        [preference]
        kind = "linear-reward"
        rewards = [0.0, 0.2, 0.4, 0.6]
    """)
    logits = 2.0 * np.random.default_rng(5).standard_normal(4)
    np.testing.assert_allclose(game.mu[0].numpy(), np.exp(logits) / np.exp(logits).sum(), rtol=0,
                               atol=tolerance(F64, scale=np.abs(logits).max(), length=4))


# ---- contexts ------------------------------------------------------------------------------------------------------
def test_several_contexts_each_with_its_own_reference(tmp_path):
    game = load_text(tmp_path, """
        reference = [0.5, 0.5]
        [[context]]
        preference = { kind = "matrix", matrix = [[0.5, 0.2], [0.8, 0.5]] }
        [[context]]
        reference = [0.1, 0.9]
        preference = { kind = "linear-reward", rewards = [1.0, 0.0] }
    """)
    assert game.P.tolist() == [[[0.5, 0.2], [0.8, 0.5]], [[0.5, 1.0], [0.0, 0.5]]]
    assert game.mu.tolist() == [[0.5, 0.5], [0.1, 0.9]]


def test_repeat_advances_both_seeds(tmp_path):
    game = load_text(tmp_path, """
        [[context]]
        preference = { kind = "matrix", matrix = [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]] }
        [[context]]
        repeat = 3
        preference = { kind = "random", n = 3, seed = 10 }
        reference = { random-logits = { seed = 20 } }
    """)
    assert game.num_contexts == 4
    assert game.mu[0].tolist() == [1 / 3] * 3
    for r in range(3):
        single = load_game(str(write(tmp_path, f"""
            reference = {{ random-logits = {{ seed = {20 + r}, scale = 1.0 }} }}
            [preference]
            kind = "random"
            n = 3
            seed = {10 + r}
        """, name=f"single{r}.toml")))
        assert torch.equal(game.P[1 + r], single.P[0])
        assert torch.equal(game.mu[1 + r], single.mu[0])
    assert not torch.equal(game.P[1], game.P[2])


def test_tau_override(tmp_path):
    path = write(tmp_path, """
        tau = 0.5
        [preference]
        kind = "linear-reward"
        rewards = [1.0, 0.0]
    """)
    assert load_game(str(path)).tau == 0.5
    assert load_game(str(path), tau=0.01).tau == 0.01
    assert load_game(str(path), tau=0).tau == 0.0


# ---- shipped games ------------------------------------------------------------------------------------------------
def test_every_shipped_game_loads_and_is_listed():
    infos = {info.name: info for info in list_games()}
    assert sorted(infos) == SHIPPED
    for name, info in infos.items():
        game = load_game(name)
        assert game.name == name and game.description and info.description == game.description
        assert (info.num_contexts, info.num_actions, info.tau) == (game.num_contexts, game.num_actions, game.tau)
        assert info.path == games_dir() / f"{name}.toml"
    assert (infos["egpo-random"].num_contexts, infos["egpo-random"].num_actions) == (10, 10)
    assert (infos["batch-256"].num_contexts, infos["batch-256"].num_actions) == (256, 16)


def test_shipped_matrices_are_the_documented_ones():
    a, b, c = 0.2, 0.6, 1.0
    A = np.array([[0, -a, b], [a, 0, -c], [-b, c, 0]])
    np.testing.assert_allclose(load_game("weighted-rps").P[0].numpy(), 0.5 + A / 2, atol=tolerance(F64))
    rps = np.array([[0, -1, 1], [1, 0, -1], [-1, 1, 0]])
    np.testing.assert_allclose(load_game("rps").P[0].numpy(), 0.5 + rps / 2, atol=tolerance(F64))
    # three raters a>b>c, b>c>a, c>a>b: each pair in the cycle is won by 2 raters of 3 (to σ(20) ≈ 1 − 2e-9: a
    # modelling bound of the file's rewards, not rounding)
    cycle = np.array([[0, 1, -1], [-1, 0, 1], [1, -1, 0]])
    np.testing.assert_allclose(load_game("condorcet-3").P[0].numpy(), 0.5 + cycle / 6, atol=1e-8)
    # egpo-random contexts are distinct random games with distinct non-uniform references
    egpo = load_game("egpo-random")
    assert len({tuple(P.flatten().tolist()) for P in egpo.P}) == 10
    assert (egpo.mu.max(-1).values / egpo.mu.min(-1).values > 2).all()


def test_games_dir_follows_the_environment(tmp_path, monkeypatch):
    write(tmp_path, """
        [preference]
        kind = "linear-reward"
        rewards = [1.0, 0.0]
    """, name="mine.toml")
    monkeypatch.setenv("NASHPREF_GAMES", str(tmp_path))
    assert games_dir() == tmp_path
    assert [info.name for info in list_games()] == ["mine"]
    assert load_game("mine").P[0].tolist() == [[0.5, 1.0], [0.0, 0.5]]


# ---- round trip ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("contexts", [1, 5])
def test_save_then_load_is_exact(tmp_path, random_game, contexts):
    base = random_game(6, seed=contexts, tau=0.037, contexts=contexts)
    game = PreferenceGame.create(base.P, base.mu, base.tau, name='odd "name" \\ é',
                                 actions=[f"a{i}\n" for i in range(6)], description='line 1\nline "2"\ttab')
    path = save_game(game, tmp_path / "saved.toml")
    again = load_game(str(path))
    assert torch.equal(again.P, game.P) and torch.equal(again.mu, game.mu)
    assert (again.tau, again.name, again.actions, again.description) == (game.tau, game.name, game.actions,
                                                                         game.description)


def test_save_then_load_a_shipped_game(tmp_path):
    game = load_game("bt-mixture")
    again = load_game(str(save_game(game, tmp_path / "copy.toml")))
    assert torch.equal(again.P, game.P) and torch.equal(again.mu, game.mu) and again.actions == game.actions


# ---- bad input ----------------------------------------------------------------------------------------------------
MATRIX_HEAD = '[preference]\nkind = "matrix"\n'
BAD_FILES = [
    ("non-complementary", MATRIX_HEAD + "matrix = [[0.5, 0.6], [0.6, 0.5]]", "P + Pᵀ = 1"),
    ("entry above 1", MATRIX_HEAD + "matrix = [[0.5, 1.5], [-0.5, 0.5]]", "[0, 1]"),
    ("NaN", MATRIX_HEAD + "matrix = [[0.5, nan], [0.5, 0.5]]", "non-finite"),
    ("non-square", MATRIX_HEAD + "matrix = [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]", "square"),
    ("ragged", MATRIX_HEAD + "matrix = [[0.5, 0.5], [0.5]]", "same length"),
    ("text entry", MATRIX_HEAD + 'matrix = [[0.5, "x"], [0.5, 0.5]]', "numbers only"),
    ("mu not summing to 1", 'reference = [0.3, 0.3]\n' + MATRIX_HEAD + "matrix = [[0.5, 0.5], [0.5, 0.5]]",
     "sum to 1"),
    ("mu with a zero", 'reference = [1.0, 0.0]\n' + MATRIX_HEAD + "matrix = [[0.5, 0.5], [0.5, 0.5]]", "> 0"),
    ("mu of wrong length", 'reference = [0.5, 0.25, 0.25]\n' + MATRIX_HEAD + "matrix = [[0.5, 0.5], [0.5, 0.5]]",
     "3 probabilities for 2 actions"),
    ("unknown reference", 'reference = "peaked"\n' + MATRIX_HEAD + "matrix = [[0.5, 0.5], [0.5, 0.5]]",
     "reference must be"),
    ("negative tau", "tau = -0.1\n" + MATRIX_HEAD + "matrix = [[0.5, 0.5], [0.5, 0.5]]", "tau must be"),
    ("text tau", 'tau = "small"\n' + MATRIX_HEAD + "matrix = [[0.5, 0.5], [0.5, 0.5]]", "tau must be"),
    ("unknown kind", '[preference]\nkind = "elo"\nn = 3', "unknown preference kind 'elo'"),
    ("missing key", '[preference]\nkind = "random"\nn = 3', "missing key 'seed'"),
    ("bad n", '[preference]\nkind = "random"\nn = 0\nseed = 1', "'n' must be an integer >= 1"),
    ("misspelt key", '[preference]\nkind = "random"\nn = 3\nsed = 1', "unknown key 'sed'"),
    ("unknown top key", 'taus = 0.1\n' + MATRIX_HEAD + "matrix = [[0.5]]", "unknown key 'taus'"),
    ("no preference", 'tau = 0.1', "exactly one of"),
    ("rewards outside [0, 1]", '[preference]\nkind = "linear-reward"\nrewards = [1.5, 0.0]', "[0, 1]"),
    ("infinite reward", '[preference]\nkind = "bradley-terry"\nrewards = [inf, 0.0]', "finite numbers only"),
    ("negative weight", '[preference]\nkind = "bt-mixture"\nrewards = [[1.0, 0.0]]\nweights = [-1.0]', ">= 0"),
    ("weights count", '[preference]\nkind = "bt-mixture"\nrewards = [[1.0, 0.0]]\nweights = [0.5, 0.5]',
     "2 weights for 1 raters"),
    ("labels count", 'actions = ["x"]\n' + MATRIX_HEAD + "matrix = [[0.5, 0.5], [0.5, 0.5]]",
     "1 action labels for 2 actions"),
    ("garbled TOML", "name = \n[preference", "not valid TOML"),
]


@pytest.mark.parametrize("text, rule", [case[1:] for case in BAD_FILES], ids=[case[0] for case in BAD_FILES])
def test_bad_file_is_one_line_naming_file_and_rule(tmp_path, text, rule):
    path = write(tmp_path, text, name="bad.toml")
    with pytest.raises(GameError) as info:
        load_game(str(path))
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message, message
    assert rule in message, message


@pytest.mark.parametrize("second, rule", [
    ('preference = { kind = "matrix", matrix = [[0.5, 0.7], [0.7, 0.5]] }', "P + Pᵀ = 1"),
    ('reference = [0.5, 0.0]\npreference = { kind = "linear-reward", rewards = [1.0, 0.0] }', "> 0"),
    ('preference = { kind = "linear-reward", rewards = [1.0, 0.0, 0.5] }', "same number"),
    ('repeat = 0\npreference = { kind = "linear-reward", rewards = [1.0, 0.0] }', "'repeat' must be"),
    ('preference = { kind = "random", n = 2, seed = -1 }', "'seed' must be an integer >= 0"),
    ('reference = { random-logits = { scale = 1.0 } }\npreference = { kind = "random", n = 2, seed = 1 }',
     "missing key 'seed'"),
])
def test_bad_context_is_named(tmp_path, second, rule):
    path = write(tmp_path, '[[context]]\npreference = { kind = "linear-reward", rewards = [0.0, 1.0] }\n'
                 f"[[context]]\n{second}\n", name="multi.toml")
    with pytest.raises(GameError) as info:
        load_game(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: context 2 of 2:") and "\n" not in message, message
    assert rule in message, message


def test_bad_tau_override(tmp_path):
    path = write(tmp_path, MATRIX_HEAD + "matrix = [[0.5]]")
    with pytest.raises(GameError, match="tau override.*tau must be"):
        load_game(str(path), tau=-1.0)


def test_missing_file_and_unknown_name(tmp_path):
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(GameError, match=f"^{missing}: game file not found$"):
        load_game(str(missing))
    with pytest.raises(GameError) as info:
        load_game("no-such-game")
    message = str(info.value)
    assert "unknown game 'no-such-game'" in message and "weighted-rps" in message and "\n" not in message
