"""The serving runner's pure parts, in the test venv: the config contract, request checks and limits,
the KV cache bookkeeping of a left-padded batch, sampling, incremental detokenization and stop strings."""
from __future__ import annotations

import json

import pytest
import torch

from llmops_runners.config import load_config, parse_config
from llmops_runners.errors import BadInputError
from llmops_runners.serve import kv_cache
from llmops_runners.serve.config import ServeConfig
from llmops_runners.serve.errors import APIError, error_body
from llmops_runners.serve.protocol import ChatCompletionRequest, CompletionRequest

# -- config ------------------------------------------------------------------------------------


def serve_config(**changes) -> ServeConfig:
    return parse_config({"model": {"path": "/models/base"}, **changes}, ServeConfig)


def test_config_defaults_are_the_contracts():
    config = serve_config()
    assert (config.host, config.port, config.max_batch_size, config.max_tokens_limit, config.dtype) == ("0.0.0.0", 8000, 16, 2048, "auto")
    assert config.served_model_name == "/models/base"  # as vLLM: the model's path when no name is given
    assert config.adapters == [] and config.max_model_len is None and config.model.token_env is None


def test_config_file_in_camel_case(tmp_path):
    path = tmp_path / "serve.json"
    path.write_text(json.dumps({"model": {"path": "/m", "revision": "main", "tokenEnv": "HF_TOKEN"}, "servedModelName": "tiny",
                                "adapters": [{"name": "support", "path": "/a/support"}], "host": "127.0.0.1", "port": 9000,
                                "maxModelLen": 128, "maxBatchSize": 4, "maxTokensLimit": 64, "dtype": "bfloat16"}))
    config = load_config(str(path), ServeConfig)
    assert config.served_model_name == "tiny" and config.adapters[0].name == "support" and config.model.token_env == "HF_TOKEN"
    assert (config.port, config.max_model_len, config.max_batch_size, config.max_tokens_limit, config.dtype) == (9000, 128, 4, 64, "bfloat16")


@pytest.mark.parametrize("changes, names", [
    ({"maxBatchSiz": 4}, "'maxBatchSiz'"),
    ({"port": "eighty"}, "'port'"),
    ({"port": 70000}, "'port'"),
    ({"maxBatchSize": 0}, "'maxBatchSize'"),
    ({"maxTokensLimit": -1}, "'maxTokensLimit'"),
    ({"dtype": "float16"}, "'dtype'"),
    ({"model": {"path": ""}}, "'model.path'"),
    ({"model": {"path": "/m", "token": "secret"}}, "'model.token'"),
    ({"adapters": [{"name": "a"}]}, "'adapters.0.path'"),
    ({"adapters": [{"name": "a", "path": "/a"}, {"name": "a", "path": "/b"}]}, "adapters[1].name 'a'"),
    ({"servedModelName": "x", "adapters": [{"name": "x", "path": "/a"}]}, "served model name"),
])
def test_config_errors_name_the_field(changes, names):
    with pytest.raises(BadInputError) as error:
        serve_config(**changes)
    assert names in str(error.value)


def test_config_without_model_says_it_is_required():
    with pytest.raises(BadInputError, match="required field 'model'"):
        parse_config({"servedModelName": "x"}, ServeConfig)


# -- requests and limits -----------------------------------------------------------------------


def test_error_body_is_openai_shaped():
    assert error_body(400, "bad", "max_tokens") == {"error": {"message": "bad", "type": "BadRequestError", "param": "max_tokens", "code": 400}}
    assert error_body(404, "gone")["error"]["type"] == "NotFoundError"
    assert error_body(499, "client left")["error"]["code"] == 499


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "n": 3}, "n"),
    ({"prompt": "x", "temperature": 2.5}, "temperature"),
    ({"prompt": "x", "top_p": 1.5}, "top_p"),
    ({"prompt": "x", "presence_penalty": 0.5}, "presence_penalty"),
    ({"prompt": "x", "echo": True}, "echo"),
    ({"prompt": "x", "best_of": 2}, "best_of"),
    ({"prompt": "x", "stop": ["ok", ""]}, "stop"),
])
def test_completion_options_this_engine_cannot_honour_are_refused(body, param):
    with pytest.raises(APIError) as error:
        CompletionRequest.model_validate(body).check_unsupported()
    assert error.value.status == 400 and error.value.param == param


def test_harmless_extra_fields_are_accepted_as_vllm_does():
    request = CompletionRequest.model_validate({"prompt": "x", "user": "u", "frequency_penalty": 0, "some_vendor_field": 1})
    request.check_unsupported()
    assert request.single_prompt() == "x" and request.stop_strings() == ()


def test_single_prompt_takes_one_string_or_token_list():
    assert CompletionRequest.model_validate({"prompt": ["only"]}).single_prompt() == "only"
    assert CompletionRequest.model_validate({"prompt": [[5, 6]]}).single_prompt() == [5, 6]
    assert CompletionRequest.model_validate({"prompt": [5, 6]}).single_prompt() == [5, 6]
    with pytest.raises(APIError, match="one prompt"):
        CompletionRequest.model_validate({"prompt": ["a", "b"]}).single_prompt()


def test_chat_content_parts_are_joined_and_max_completion_tokens_wins():
    request = ChatCompletionRequest.model_validate({
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "there"}]}],
        "max_tokens": 5, "max_completion_tokens": 7})
    request.check_unsupported()
    assert request.plain_messages() == [{"role": "user", "content": "Hello, there"}]
    assert request.requested_max_tokens() == 7


def test_sampling_params_follow_vllms_limits():
    from llmops_runners.serve.prompts import sampling_params

    chat = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}]})
    assert sampling_params(chat, None, 10, 256, 2048).max_tokens == 246  # as many as fit
    assert sampling_params(chat, None, 10, 256, 100).max_tokens == 100  # capped by maxTokensLimit
    completion = CompletionRequest.model_validate({"prompt": "x", "temperature": 0, "stop": "END", "seed": 3})
    params = sampling_params(completion, 16, 10, 256, 2048)
    assert (params.max_tokens, params.temperature, params.top_p, params.stop, params.seed) == (16, 0, 1.0, ("END",), 3)
    for max_tokens, prompt, says in [(0, 10, "at least 1"), (3000, 10, "at most 2048"), (247, 10, "you requested 257 tokens"),
                                     (1, 256, "has 256 input tokens")]:
        with pytest.raises(APIError, match=says):
            sampling_params(completion, max_tokens, prompt, 256, 2048)


def test_prompt_ids_are_checked_against_the_vocabulary():
    from llmops_runners.serve.prompts import completion_ids

    assert completion_ids(None, [1, 2, 3], 10) == [1, 2, 3]
    with pytest.raises(APIError, match="out of vocabulary"):
        completion_ids(None, [1, 10], 10)


def test_chat_prompts_use_the_template_when_there_is_one_else_a_plain_transcript(tokenizer):
    from llmops_runners.serve.prompts import chat_ids
    from tests.helpers.tiny_data import corpus_texts
    from tests.helpers.tiny_models import train_tokenizer

    messages = [{"role": "system", "content": "Answer with one word."}, {"role": "user", "content": "What colour is the lamp?"}]
    templated = tokenizer.decode(chat_ids(tokenizer, messages))
    assert templated == "<|system|>\nAnswer with one word.\n<|user|>\nWhat colour is the lamp?\n<|assistant|>\n"
    plain = train_tokenizer(corpus_texts(), chat_template=False)
    assert plain.decode(chat_ids(plain, messages)) == "system: Answer with one word.\nuser: What colour is the lamp?\nassistant:"


def test_a_chat_template_that_refuses_the_messages_is_a_400(tokenizer):
    from llmops_runners.serve.prompts import chat_ids

    strict = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, chat_template=(
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversations must start with a user turn') }}{% endif %}x"))
    with pytest.raises(APIError, match="must start with a user turn") as error:
        chat_ids(strict, [{"role": "assistant", "content": "hi"}])
    assert error.value.status == 400 and error.value.param == "messages"


# -- the batch's KV cache ----------------------------------------------------------------------


def rows_cache(lengths: list[int], heads: int = 2, dim: int = 3, fill_from: int = 1):
    """A one-layer cache whose row i holds lengths[i] tokens (values: row*100 + position + fill_from), left-padded."""
    width = max(lengths)
    keys = torch.zeros(len(lengths), heads, width, dim)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        for pos in range(n):
            keys[row, :, width - n + pos, :] = row * 100 + pos + fill_from
        mask[row, width - n:] = 1
    return [(keys, keys.clone())], mask


def row_tokens(layers, mask, row):
    return [int(v) for v in layers[0][0][row, 0, mask[row].bool(), 0]]


def test_rows_joining_are_padded_on_the_left_and_keep_their_tokens():
    a, a_mask = rows_cache([2, 4])
    b, b_mask = rows_cache([6], fill_from=50)
    layers, mask = kv_cache.concat(a, a_mask, b, b_mask)
    assert mask.shape == (3, 6) and layers[0][0].shape == (3, 2, 6, 3) and layers[0][1].shape == (3, 2, 6, 3)
    assert mask.tolist() == [[0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1, 1], [1] * 6]
    assert row_tokens(layers, mask, 0) == [1, 2] and row_tokens(layers, mask, 1) == [101, 102, 103, 104]
    assert row_tokens(layers, mask, 2) == [50, 51, 52, 53, 54, 55]


def test_rows_leaving_take_the_columns_only_they_needed():
    layers, mask = rows_cache([2, 6, 3])
    kept, kept_mask = kv_cache.select(layers, mask, [0, 2])  # the longest row leaves
    assert kept_mask.shape == (2, 3) and kept[0][0].shape == (2, 2, 3, 3)
    assert row_tokens(kept, kept_mask, 0) == [1, 2] and row_tokens(kept, kept_mask, 1) == [201, 202, 203]
    assert kv_cache.leading_padding(kept_mask).tolist() == [1, 0]


def test_prompt_batch_is_left_padded_with_positions_per_row():
    ids, mask, positions = kv_cache.prompt_batch([[7, 8, 9], [5]], pad_id=0)
    assert ids.tolist() == [[7, 8, 9], [0, 0, 5]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions.tolist() == [[0, 1, 2], [0, 0, 0]]


def test_the_4d_mask_is_causal_hides_padding_and_never_leaves_a_row_empty():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    prefill = kv_cache.attention_mask_4d(mask, 4)
    assert prefill.shape == (2, 1, 4, 4)
    assert prefill[0, 0].int().tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]
    assert prefill[1, 0].int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    step = kv_cache.attention_mask_4d(torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1), 1)
    assert step.shape == (2, 1, 1, 5) and step[:, 0, 0].int().tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]


# -- sampling ----------------------------------------------------------------------------------


def test_greedy_rows_take_the_argmax_and_top_p_keeps_the_nucleus():
    from llmops_runners.serve.sampling import SamplingParams, next_tokens, sample

    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 0.0]])
    assert next_tokens(logits, [SamplingParams(4, temperature=0), SamplingParams(4, temperature=0)], [None, None]) == [1, 0]
    # With a nucleus of 0.5 only the most likely token (p ~ 0.98) can be drawn.
    assert {sample(logits[0], 1.0, 0.5, torch.Generator().manual_seed(s)) for s in range(20)} == {1}
    flat = torch.zeros(50)
    draws = [sample(flat, 1.0, 1.0, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert draws[0] == draws[1]  # the same seed, the same draw
    assert len({sample(flat, 1.0, 1.0, torch.Generator().manual_seed(s)) for s in range(20)}) > 5


# -- detokenization ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from tests.helpers.tiny_data import corpus_texts
    from tests.helpers.tiny_models import train_tokenizer

    return train_tokenizer(corpus_texts())


def test_incremental_text_is_the_whole_decode(tokenizer):
    from llmops_runners.serve.detokenize import OutputText

    prompt = tokenizer("What colour is the")["input_ids"]
    output = tokenizer(" apple? Name the colour of the river. ünïcödé ✓")["input_ids"]
    text = OutputText(tokenizer, prompt)
    pieces = []
    for token in output:
        assert text.add(token) is None
        pieces.append(text.take(final=False))
    text.flush()
    pieces.append(text.take(final=True))
    assert "".join(pieces) == tokenizer.decode(output, skip_special_tokens=True)
    assert sum(bool(p) for p in pieces) > 3  # handed out as it came, not at the end


def test_stop_strings_cut_the_text_and_are_never_streamed(tokenizer):
    from llmops_runners.serve.detokenize import OutputText

    output = tokenizer(" the river is blue. The apple is red.")["input_ids"]
    text = OutputText(tokenizer, [], stop=("is red", "never"))
    streamed, stop = "", None
    for token in output:
        stop = text.add(token)
        streamed += text.take(final=stop is not None)
        if stop:
            break
    assert stop == "is red" and streamed == " the river is blue. The apple "
    assert "is r" not in streamed


# -- loading decisions -------------------------------------------------------------------------


def test_dtype_auto_keeps_16_bits_only_where_the_cpu_has_bf16():
    from llmops_runners.serve.loading import resolve_dtype

    assert resolve_dtype("auto", "bfloat16", {"avx512_bf16"}) == "bfloat16"
    assert resolve_dtype("auto", "float16", {"amx_bf16"}) == "bfloat16"
    assert resolve_dtype("auto", "bfloat16", {"avx2"}) == "float32"
    assert resolve_dtype("auto", "float32", {"avx512_bf16"}) == "float32"
    assert resolve_dtype("bfloat16", "float32", set()) == "bfloat16"


def test_model_len_defaults_to_the_models_and_may_not_exceed_it():
    from llmops_runners.serve.loading import model_len

    assert model_len({"max_position_embeddings": 256}, None) == 256
    assert model_len({"n_positions": 1024}, 100) == 100
    assert model_len({"text_config": {"max_position_embeddings": 512}}, None) == 512
    with pytest.raises(BadInputError, match="maxModelLen 300 is more than the model's 256"):
        model_len({"max_position_embeddings": 256}, 300)


def test_adapter_problems_are_one_sentence(tmp_path):
    from llmops_runners.serve.loading import adapter_problem

    assert "does not exist" in adapter_problem(str(tmp_path / "missing"))
    assert "adapter_config.json" in adapter_problem(str(tmp_path))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING"}))
    assert "LoRA adapters only" in adapter_problem(str(tmp_path))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    assert adapter_problem(str(tmp_path)) is None


def test_threads_follow_the_pods_cpu_quota(tmp_path):
    from llmops_runners.cpu import usable_cores

    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert usable_cores(tmp_path) == min(2, usable_cores(tmp_path / "none"))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cores(tmp_path) == usable_cores(tmp_path / "none")
