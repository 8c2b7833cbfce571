"""A sequence's output text, decoded token by token, and its stop strings.

Decoding each new token alone is wrong for many tokenizers (a SentencePiece word's leading space,
a UTF-8 character split over byte-level tokens), and decoding the whole output every step costs
O(n) per token. As vLLM does, each step decodes only a short window: the tokens since the last
emitted text (`prefix`..end) against the same window without the new tokens (`prefix`..`read`);
the difference is the new text, held back while it ends in an incomplete character. The window
starts inside the prompt, so the first output token is decoded with its left context.

Stop strings are searched only where a new match can start (the new text and the last
len(longest stop) - 1 characters before it). When streaming, that many characters are held back
until the sequence ends, so the client never sees the beginning of a stop string that the next
token completes (vLLM's behaviour; the stop string itself is never part of the output).
"""
from __future__ import annotations

CONTEXT_TOKENS = 5  # prompt tokens decoded with the first output token (vLLM uses 5 too)
INCOMPLETE = "\ufffd"  # what decoding shows for the first bytes of a multi-byte character


class OutputText:
    def __init__(self, tokenizer, prompt_ids: list[int], stop: tuple[str, ...] = ()):
        self._tokenizer = tokenizer
        self._ids = list(prompt_ids[-CONTEXT_TOKENS:])
        self._prefix = 0
        self._read = len(self._ids)
        self._stop = stop
        self._hold = max((len(s) for s in stop), default=1) - 1
        self.text = ""
        self._emitted = 0

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token: int) -> str | None:
        """Take one generated token; returns the stop string it completed, if any (the text then ends before it)."""
        self._ids.append(token)
        before = self._decode(self._ids[self._prefix:self._read])
        after = self._decode(self._ids[self._prefix:])
        if len(after) <= len(before) or after.endswith(INCOMPLETE):
            return None
        start = max(0, len(self.text) - self._hold)
        self.text += after[len(before):]
        self._prefix, self._read = self._read, len(self._ids)
        return self._cut_at_stop(start)

    def flush(self) -> str | None:
        """At the end of the sequence: the text still held back as incomplete, as it decodes (and the stop
        string it completes, if any)."""
        before = self._decode(self._ids[self._prefix:self._read])
        after = self._decode(self._ids[self._prefix:])
        if len(after) <= len(before):
            return None
        start = max(0, len(self.text) - self._hold)
        self.text += after[len(before):]
        self._prefix, self._read = self._read, len(self._ids)
        return self._cut_at_stop(start)

    def _cut_at_stop(self, start: int) -> str | None:
        found = [(i, s) for s in self._stop if (i := self.text.find(s, start)) >= 0]
        if not found:
            return None
        index, stop = min(found)
        self.text = self.text[:index]
        return stop

    def take(self, final: bool) -> str:
        """The text not yet handed out; before the end, without the tail a stop string could still start in."""
        end = len(self.text) if final else max(self._emitted, len(self.text) - self._hold)
        delta, self._emitted = self.text[self._emitted:end], end
        return delta
