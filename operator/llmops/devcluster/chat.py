"""Ask a served model questions with the official `openai` client, as an application would.

    python -m llmops.devcluster.chat BASE_URL MODEL QUESTION...   ->   a JSON list of answers

`llmops-devcluster pipeline` runs it inside the real node's network, where the Service's
ClusterIP answers (the host reaches pods, not Service IPs). Needs the `openai` package (the dev
extra); the operator itself never imports it.
"""

from __future__ import annotations

import json
import sys


def ask(base_url: str, model: str, questions: list[str], max_tokens: int = 6) -> list[str]:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="not-needed", max_retries=2, timeout=60)
    answers = []
    for question in questions:
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                               max_tokens=max_tokens, temperature=0)
        answers.append((reply.choices[0].message.content or "").strip())
    return answers


if __name__ == "__main__":
    print(json.dumps(ask(sys.argv[1], sys.argv[2], sys.argv[3:])))
