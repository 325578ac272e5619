"""A tiny Llama-architecture policy and reward model, built on the spot so that tests and demos run offline.

``make_tiny_model(out)`` writes two ``save_pretrained`` directories (safetensors) sharing one tokenizer:

* ``out/policy`` — ``LlamaForCausalLM``: a byte-level BPE tokenizer trained on a synthetic corpus of short
  dialogues, a chat template, and a few hundred steps of language-model training on those dialogues, so that
  samples are short sentences that end with the end-of-turn token (variable-length responses exercise masks);
* ``out/reward`` — ``LlamaForSequenceClassification`` (``num_labels=1``) regressed onto a synthetic score:
  the share of "warm" words minus the share of "cold" words in the response, so a Bradley–Terry oracle over it
  has a real, learnable preference;
* ``out/prompts.jsonl`` — prompts from the same grammar, one ``{"prompt": …}`` per line, for ``nashpref train``.

Everything is a function of ``seed`` (and the sizes): the corpus, the tokenizer, the initial weights and the
training batches.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

BOS, EOS, PAD = "<|bos|>", "<|end|>", "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
# One turn is "<|role|>\ncontent<|end|>\n"; a prompt ends with "<|assistant|>\n" and the model answers up to <|end|>.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

NOUNS = ("cat", "dog", "river", "mountain", "robot", "garden", "city", "ship", "forest", "star", "lamp", "bird")
WARM = ("bright", "happy", "warm", "kind", "golden", "gentle")
COLD = ("cold", "dark", "grim", "harsh", "gray", "bitter")
NEUTRAL = ("small", "old", "tall", "round", "quiet", "red")
VERBS = ("sees", "finds", "follows", "sings to", "waits for", "draws")
PROMPTS = ("describe the {adj} {noun}", "tell me about a {noun}", "what is the {noun} like?",
           "write one line about the {adj} {noun}", "say something about a {adj} {noun}")


@dataclass(frozen=True)
class TinySizes:
    """Architecture of both tiny models. The head dimension hidden / heads must be one that vLLM's CPU attention
    supports (32, 64, 80, …); kv_heads < heads is grouped-query attention; vocab is the BPE tokenizer's target size
    (256 byte symbols + special tokens + merges)."""

    hidden: int = 64
    layers: int = 2
    heads: int = 2
    kv_heads: int = 1
    intermediate: int = 128         # MLP inner size
    vocab: int = 512
    max_positions: int = 256        # longest sequence


def reward_score(response: str) -> float:
    """The synthetic reward the tiny reward model is trained to predict: (#warm − #cold) / #words."""
    words = [w.strip(".,!?") for w in response.lower().split()]
    if not words:
        return 0.0
    return (sum(w in WARM for w in words) - sum(w in COLD for w in words)) / len(words)


def synthetic_dialogues(count: int, rng: random.Random) -> list[tuple[str, str]]:
    """(prompt, response) pairs from a small grammar; responses are 1–2 short sentences."""
    adjectives = WARM + COLD + NEUTRAL
    pairs = []
    for _ in range(count):
        noun, adj = rng.choice(NOUNS), rng.choice(adjectives)
        prompt = rng.choice(PROMPTS).format(adj=adj, noun=noun)
        sentences = []
        for _ in range(rng.choice((1, 1, 2))):
            subject = f"the {rng.choice(adjectives)} {noun}"
            if rng.random() < 0.5:
                sentences.append(f"{subject} is {rng.choice(adjectives)} and {rng.choice(adjectives)}.")
            else:
                sentences.append(f"{subject} {rng.choice(VERBS)} a {rng.choice(adjectives)} {rng.choice(NOUNS)}.")
        pairs.append((prompt, " ".join(sentences)))
    return pairs


def build_tokenizer(texts: list[str], vocab: int):
    """A byte-level BPE tokenizer (any text encodes, nothing is unknown) with bos/eos/pad and the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = [PAD, BOS, EOS, *ROLE_TOKENS]
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                        additional_special_tokens=list(ROLE_TOKENS))
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _config(tokenizer, sizes: TinySizes, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=sizes.hidden, intermediate_size=sizes.intermediate,
                       num_hidden_layers=sizes.layers, num_attention_heads=sizes.heads,
                       num_key_value_heads=sizes.kv_heads, max_position_embeddings=sizes.max_positions,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, **extra)


def _batches(rows: list, batch_size: int, steps: int, rng: random.Random):
    for _ in range(steps):
        yield [rows[rng.randrange(len(rows))] for _ in range(batch_size)]


def _train_policy(model, tokenizer, texts: list[str], steps: int, rng: random.Random) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for batch in _batches(texts, 32, steps, rng):
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = model(**enc, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def _train_reward(model, tokenizer, rows: list[tuple[str, float]], steps: int, rng: random.Random) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for batch in _batches(rows, 32, steps, rng):
        enc = tokenizer([text for text, _ in batch], return_tensors="pt", padding=True, add_special_tokens=False)
        target = torch.tensor([score for _, score in batch]) * 4.0     # scores in [−1, 1] → rewards in [−4, 4]
        loss = torch.nn.functional.mse_loss(model(**enc).logits.squeeze(-1), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def make_tiny_model(out: str | Path, seed: int = 0, sizes: TinySizes = TinySizes(), dialogues: int = 1000,
                    policy_steps: int = 120, reward_steps: int = 150) -> dict[str, Path]:
    """Write ``out/policy``, ``out/reward`` and ``out/prompts.jsonl`` (64 prompts); returns their paths.
    Deterministic in ``seed`` and the sizes."""
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    out = Path(out)
    rng = random.Random(seed)
    pairs = synthetic_dialogues(dialogues, rng)
    tokenizer = build_tokenizer([f"{p}\n{r}" for p, r in pairs], sizes.vocab)
    tokenizer.padding_side = "right"

    def render(prompt: str, response: str) -> str:
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return tokenizer.apply_chat_template(messages, tokenize=False)

    texts = [render(p, r) for p, r in pairs]
    paths = {"policy": out / "policy", "reward": out / "reward"}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        policy = LlamaForCausalLM(_config(tokenizer, sizes))
        _train_policy(policy, tokenizer, texts, policy_steps, rng)
        policy.generation_config.pad_token_id = tokenizer.pad_token_id
        policy.save_pretrained(paths["policy"], safe_serialization=True)
        tokenizer.save_pretrained(paths["policy"])

        reward = LlamaForSequenceClassification(_config(tokenizer, sizes, num_labels=1))
        _train_reward(reward, tokenizer, [(t, reward_score(r)) for t, (_, r) in zip(texts, pairs)],
                      reward_steps, rng)
        reward.save_pretrained(paths["reward"], safe_serialization=True)
        tokenizer.save_pretrained(paths["reward"])
    paths["prompts"] = write_prompts(out / "prompts.jsonl", PROMPT_COUNT, random.Random(seed + 1))
    return paths


PROMPT_COUNT = 64


def write_prompts(path: Path, count: int, rng: random.Random) -> Path:
    """A JSONL prompt file ({"prompt": …} per line) from the tiny model's grammar, for `nashpref train`."""
    import json

    adjectives = WARM + COLD + NEUTRAL
    rows = [{"prompt": rng.choice(PROMPTS).format(adj=rng.choice(adjectives), noun=rng.choice(NOUNS))}
            for _ in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path
