"""--prompts from a `datasets` directory (save_to_disk, with a split and a column) and from a local Parquet file,
read in one process and sharded over 2 torchrun ranks (split_dataset_by_node): every rank ends with the whole
prompt list in the file's order, checked against pyarrow reading the same rows; a bad row in rank 1's share
stops both ranks with the same one-line error naming its row. (The hub itself is not reachable here: a hub id
goes through the same `datasets` call with its name and split.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

datasets = pytest.importorskip("datasets")

from nashpref.errors import BadInput, MissingResource  # noqa: E402
from nashpref.lm.data import load_prompts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "and the sea?"}]
TEXTS = [f"prompt number {i}" for i in range(7)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A DatasetDict with splits train_prefs (7 rows: column "question") and test_prefs, saved to disk."""
    path = tmp_path_factory.mktemp("saved") / "uf"
    splits = {"train_prefs": datasets.Dataset.from_dict({"question": TEXTS, "score": list(range(7))}),
              "test_prefs": datasets.Dataset.from_dict({"question": ["held"], "score": [0]})}
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return path


def test_saved_dataset_split_and_column(saved):
    assert load_prompts(str(saved), "question", "train_prefs") == TEXTS
    assert load_prompts(str(saved), "question", "test_prefs") == ["held"]
    assert load_prompts(str(saved), "question", "train_prefs", limit=3) == TEXTS[:3]
    with pytest.raises(BadInput, match=r"no split 'train' \(splits: train_prefs, test_prefs\)"):
        load_prompts(str(saved), "question")
    with pytest.raises(BadInput, match=r"no column 'prompt'"):
        load_prompts(str(saved), "prompt", "train_prefs")


def test_a_directory_that_is_not_a_dataset(tmp_path):
    with pytest.raises(MissingResource, match="not a dataset directory"):
        load_prompts(str(tmp_path))


def test_parquet_with_chats(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"messages": [CHAT, [{"role": "user", "content": "hello"}]]}), path)
    assert load_prompts(str(path)) == [CHAT, [{"role": "user", "content": "hello"}]]


def torchrun_prompts(out: Path, spec: str, column: str, split: str) -> list[dict]:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(ROOT / "tests" / "dist_worker.py"), "prompts", str(out), spec, column, split],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"prompts-rank{r}.json").read_text()) for r in (0, 1)]


def test_two_ranks_read_their_shares_and_agree(saved, tmp_path):
    import pyarrow.parquet as pq

    bad = tmp_path / "bad.parquet"          # 7 rows: shares 0-3 (rank 0) and 4-6 (rank 1); row 5 is empty
    datasets.Dataset.from_dict({"prompt": TEXTS[:5] + [" "] + TEXTS[6:]}).to_parquet(str(bad))
    good = tmp_path / "good.parquet"
    datasets.Dataset.from_dict({"prompt": TEXTS}).to_parquet(str(good))
    truth = pq.read_table(good).column("prompt").to_pylist()
    shares = [[0, 1, 2, 3], [4, 5, 6]]          # 7 rows over 2 nodes, contiguous, the first one longer
    ranks = torchrun_prompts(mkdir(tmp_path / "good"), str(good), "prompt", "train")
    assert ranks == [{"prompts": truth, "checked": share} for share in shares]
    ranks = torchrun_prompts(mkdir(tmp_path / "saved"), str(saved), "question", "train_prefs")
    assert ranks == [{"prompts": TEXTS, "checked": share} for share in shares]
    ranks = torchrun_prompts(mkdir(tmp_path / "bad"), str(bad), "prompt", "train")
    error = f"{bad}: row 5: empty prompt in column 'prompt'"       # found by rank 1, raised on both
    assert ranks == [{"error": error, "checked": [0, 1, 2, 3]}, {"error": error, "checked": [4, 5]}]


def mkdir(path: Path) -> Path:
    path.mkdir()
    return path
