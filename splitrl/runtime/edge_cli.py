"""`splitrl-edge` command line: every argument (addresses, token file, policy file, plan syntax) is
checked before the model loads; then the prompts run as one conversation whose KV caches both sides
keep between turns (splitrl.runtime.chat.EdgeChat: a turn prefills only its new tokens, and the caches
move when the policy changes the split). Exit 0 when every turn was answered (by the cloud or the edge
fallback), 1 when one failed, 2 for a bad argument."""

from __future__ import annotations

import argparse
import logging
import sys

from splitrl.profiles.formats import TX_FORMATS
from splitrl.runtime import auth
from splitrl.runtime.cli_checks import CliError, check_model, parse_address


def check_plan_syntax(text: str) -> None:
    parts = text.split(",")
    ok = (len(parts) == 3 and parts[0].isdigit() and parts[1] in TX_FORMATS and parts[2] != ""
          and set(parts[2]) <= {"0", "1"})
    if not ok:
        raise CliError(f"--plan {text!r}: write boundary,format,units with format one of {TX_FORMATS} and one 0/1 "
                       "per unit (1 = edge), e.g. --plan 12,int8,1010110")


def parse_plan(text: str, sm):
    """'b,fmt,u1u2...' e.g. '12,int8,1010110' (units: attention units then FFN chunks, 1 = edge)."""
    try:
        check_plan_syntax(text)
        b, fmt, units = text.split(",")
        return sm.plan(int(b), fmt, [int(c) for c in units])
    except ValueError as e:
        raise SystemExit(f"--plan {text!r}: {e}; write boundary,format,units e.g. 12,int8,{'0' * sm.n_units}") from e


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="splitrl-edge", description="Run prompts split with a splitrl-cloud.")
    ap.add_argument("--cloud", action="append", default=None, help="host:port (repeat for fallback endpoints)")
    ap.add_argument("--policy", default=None, help="ONNX policy from splitrl-export (default: needs --plan)")
    ap.add_argument("--plan", default=None, help="fixed partition 'b,fmt,units' instead of a policy")
    ap.add_argument("--model", default=None, help="HF model directory or .gguf (default: the embedded SmolLM2)")
    ap.add_argument("--token-file", default=None, help="the cloud's shared token (omit for an --insecure-no-auth cloud)")
    ap.add_argument("--prompt", action="append", default=None, help="prompt text (repeat for a conversation)")
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--attempts", type=int, default=3)
    ap.add_argument("--fallback", choices=("edge", "none"), default="edge")
    ap.add_argument("--threads", type=int, default=1)
    return ap


def prepare(a: argparse.Namespace):
    """(endpoints, token, policy or None), or CliError / TokenError / PolicyError, all before the model load."""
    if not (a.policy or a.plan):
        raise CliError("give --policy policy.onnx (from splitrl-export) or --plan b,fmt,units")
    for flag, value, lo in (("--max-new", a.max_new, 1), ("--timeout", a.timeout, 1e-9), ("--attempts", a.attempts, 1)):
        if value < lo:
            raise CliError(f"{flag} {value}: must be >= {lo if lo >= 1 else '> 0'}")
    endpoints = [parse_address(c) for c in (a.cloud or ["127.0.0.1:7341"])]
    token = auth.load_token(a.token_file) if a.token_file else None
    if a.plan:
        check_plan_syntax(a.plan)
    policy = None
    if a.policy:
        from splitrl.runtime.policy import OnnxPolicy, PolicyError
        try:
            policy = OnnxPolicy(a.policy)
        except PolicyError as e:
            raise CliError(f"--policy {e}") from None
    check_model(a.model)
    return endpoints, token, policy


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        endpoints, token, policy = prepare(a)
    except (CliError, auth.TokenError) as e:
        print(f"splitrl-edge: {e}", file=sys.stderr)
        return 2
    import torch

    from splitrl.lm.model import ModelLoadError, load_causal_lm
    from splitrl.runtime.edge import EdgeClient, RetryPolicy
    from splitrl.runtime.policy import PolicyMismatch
    from splitrl.runtime.split_model import SplitModel
    torch.set_num_threads(a.threads)
    try:
        lm = load_causal_lm(a.model)
    except ModelLoadError as e:
        print(f"splitrl-edge: {e}", file=sys.stderr)
        return 2
    sm = SplitModel(lm.model)
    from splitrl.runtime.chat import EdgeChat
    try:
        policy = policy.bind(lm.name, sm) if policy else None
    except PolicyMismatch as e:
        print(f"splitrl-edge: --policy {e}", file=sys.stderr)
        return 2
    fixed = parse_plan(a.plan, sm) if a.plan else None
    client = EdgeClient(sm, endpoints, token, None, RetryPolicy(attempts=a.attempts), a.timeout, a.fallback,
                        eos=lm.tokenizer.eos_token_id)
    chat = EdgeChat(client)
    history: list[dict] = []
    failed = 0
    for i, text in enumerate(a.prompt or ["What is the capital of France?"]):
        history.append({"role": "user", "content": text})
        ids = lm.tokenizer.apply_chat_template(history, add_generation_prompt=True)
        ids = [int(t) for t in (ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)]
        held = chat.fed + chat.pending
        if ids[:len(held)] != held:      # the template renders an earlier answer as other tokens: start afresh
            chat.forget()
            chat, held = EdgeChat(client), []
        new = ids[len(held):]
        try:
            plan = fixed or policy.for_turn(chat, len(new), a.max_new)
        except PolicyMismatch as e:
            print(f"splitrl-edge: --policy {e}", file=sys.stderr)
            return 2
        moves = len(chat.migrations)
        res = chat.turn(new, plan, a.max_new)
        failed += res.status != "ok"
        for m in chat.migrations[moves:]:
            print(f"[{i}] moved {m.layers:g} layers' KV cache ({m.how}, {m.nbytes} B) in {m.seconds:.3f} s "
                  f"(expected {m.predicted_s:.3f} s)")
        answer = lm.tokenizer.decode(res.tokens, skip_special_tokens=True)
        history.append({"role": "assistant", "content": answer})
        p = res.plan
        print(f"[{i}] plan b={p.boundary} fmt={p.fmt} units={''.join(map(str, p.units))} ({p.mode}); "
              f"{res.status} in {res.latency_s:.2f} s, {res.bytes_up} B up, {res.bytes_down} B down, "
              f"retries {res.retries}{', fell back to ' + res.fell_back if res.fell_back else ''}"
              f"{'; ' + res.error if res.error else ''}; "
              f"est. bw {client.est.bw / 1e6:.1f} MB/s rtt {client.est.rtt * 1e3:.1f} ms")
        print(f"user: {text}\nassistant: {answer}", flush=True)
    chat.forget()
    client.close()
    print(f"counts: {client.summary()} (requests that started the chat); chat: {chat.turns} turns, "
          f"{chat.turns - chat.rebuilds} continued on the kept caches, {len(chat.migrations)} cache moves, "
          f"{chat.ctx} positions cached")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
