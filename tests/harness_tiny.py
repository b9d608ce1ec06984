"""A tiny random Llama built in the test (no download) for the harness tests."""

from __future__ import annotations

import functools

PROMPT = (5, 17, 33, 2, 9, 100, 7, 64)


@functools.lru_cache(maxsize=1)
def tiny_split_model():
    """3 layers, d_model 64, 4 query heads on 2 KV heads (2 attention units), d_ff 128 in 4 chunks.
    initializer_range 0.2 makes the logits peaked, so fp16 rounding of the crossing cannot flip a
    greedy token (the test would otherwise measure luck, not the split)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from splitrl.runtime.split_model import SplitModel

    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      initializer_range=0.2, tie_word_embeddings=True)
    return SplitModel(LlamaForCausalLM(cfg).eval(), ffn_chunks=4)


def reference_tokens(sm, prompt=PROMPT, n=6) -> list[int]:
    """The unsplit model's greedy tokens (transformers' own generate)."""
    return list(_reference(sm, tuple(prompt), n))


@functools.lru_cache(maxsize=16)
def _reference(sm, prompt: tuple, n: int) -> tuple:
    import torch
    ids = torch.tensor([list(prompt)])
    out = sm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)
    return tuple(out[0, len(prompt):].tolist())


# one plan per partition case of the boundary layer (units: 2 attention units, then 4 FFN chunks)
CASES = {
    "cloud_only": (0, (0, 0, 0, 0, 0, 0)),
    "edge_only": (3, (0, 0, 0, 0, 0, 0)),
    "layer_split_only": (2, (0, 0, 0, 0, 0, 0)),
    "attn_mixed": (1, (1, 0, 0, 0, 0, 0)),
    "attn_mixed_ffn_down": (1, (0, 1, 1, 0, 1, 0)),
    "attn_cloud_ffn_all_edge": (2, (0, 0, 1, 1, 1, 1)),
    "attn_edge_ffn_mixed": (1, (1, 1, 0, 1, 1, 0)),
    "attn_edge_ffn_cloud": (0, (1, 1, 0, 0, 0, 0)),
    "whole_layer_on_edge": (1, (1, 1, 1, 1, 1, 1)),
}


LEGIT_PLAN = (1, "fp16", (1, 0, 1, 0, 0, 1))     # mixed attention and FFN: three crossing kinds


def legit_request(sm, address, token=None, n=4, timeout=5.0) -> tuple[bool, float]:
    """One well-behaved edge request from a fresh client: (tokens correct and no fallback, seconds)."""
    import time

    from splitrl.runtime.edge import EdgeClient, Request
    client = EdgeClient(sm, [address], token=token, timeout=timeout, fallback="none")
    t0 = time.perf_counter()
    try:
        res = client.generate(Request(0, PROMPT, n), sm.plan(*LEGIT_PLAN))
    finally:
        client.close()
    seconds = time.perf_counter() - t0
    return res.status == "ok" and not res.fell_back and res.tokens == reference_tokens(sm, n=n), seconds


CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"


def save_tiny_model(directory) -> str:
    """The tiny model (same weights as tiny_split_model) as a Hugging Face directory with a word-level
    tokenizer of its 128 ids and a chat template, so the CLIs can load it (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(125)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)
    tiny_split_model().model.save_pretrained(directory)
    return str(directory)


class RestartingCloud:
    """An insecure loopback CloudServer that `crash_and_restart()` kills (as if the process died) and serves
    again on the same port (the process restarted); `new` is the restarted server."""

    def __init__(self, sm, limits):
        from splitrl.runtime.cloud import CloudServer
        self.sm, self.limits, self.new = sm, limits, None
        self.first = CloudServer(sm, insecure_no_auth=True, limits=limits).start()
        self.address = (self.first.host, self.first.port)

    def crash_and_restart(self) -> None:
        from splitrl.runtime.cloud import CloudServer
        self.first.kill()
        self.new = CloudServer(self.sm, host=self.address[0], port=self.address[1], insecure_no_auth=True,
                               limits=self.limits).start()

    def stop(self) -> None:
        (self.new or self.first).stop()
