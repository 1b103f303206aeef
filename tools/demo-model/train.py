#!/usr/bin/env python3
"""Trains Peregrine's demo model: a ~3.8M-parameter Llama with its own byte-level BPE tokenizer.

    PYTHONUNBUFFERED=1 python3 tools/demo-model/train.py --steps 5000 --dropout 0.2 --out /tmp/demo  # models/demo
    PYTHONUNBUFFERED=1 python3 tools/demo-model/train.py --minutes 5 --out /tmp/demo  # steps fitted to 5 minutes
    PYTHONUNBUFFERED=1 python3 tools/demo-model/train.py --smoke --out /tmp/demo-smoke  # ~20 s, whole pipeline

Stages (each prints what it did):
  1. tokenizer   byte-level BPE, VOCAB_SIZE tokens incl. SPECIAL_TOKENS, trained on the training text
  2. data        every document -> `<|bos|> text <|end|>`; chat documents through CHAT_TEMPLATE
  3. train       LlamaForCausalLM from LlamaConfig, AdamW + warmup + cosine, bf16 autocast, random
                 SEQ_LEN crops of the token stream, optional residual dropout, for --steps steps or
                 a wall-clock budget (--minutes: the step count is fixed from the measured speed of
                 the first steps, so the schedule ends on time); the weights with the best
                 validation loss are kept
  4. export      save_pretrained in bf16 (safetensors), tokenizer files with the chat template,
                 generation_config.json
  5. check       reload the folder with transformers (AutoTokenizer, AutoModelForCausalLM), compare
                 tokenization and chat rendering, compute perplexities (PERPLEXITY PROCEDURE below)
                 and greedy continuations, write ppl.json beside the weights

PERPLEXITY PROCEDURE (what test/demo-model.test.ts recomputes with Peregrine):
  ids = tokenizer(text)                 # the post-processor puts <|bos|> first, nothing at the end
  windows = ids split into consecutive non-overlapping windows of `window` tokens; a shorter
            tail is dropped; each window is scored on its own, positions 0..window-1, no cache
  nll = mean over windows and positions p = 0..window-2 of -log softmax(logits[p])[ids[p+1]]
  ppl = exp(nll); logits in float32 from the bf16 weights (upcast), on the CPU
ppl.json holds the per-window sums too, so a test can score the first k windows and compare.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import random
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))

VOCAB_SIZE = 4096
SPECIAL_TOKENS = ['<|bos|>', '<|end|>', '<|user|>', '<|assistant|>', '<|system|>', '<|pad|>']
BOS, EOS, PAD = '<|bos|>', '<|end|>', '<|pad|>'
BOS_ID, EOS_ID, PAD_ID = 0, 1, 5
# <|bos|><|user|>\n{content}<|end|>\n<|assistant|>\n{content}<|end|>\n ... (raises on other roles)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('roles must be system, user or assistant') }}{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

MODEL = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=256,
    intermediate_size=640,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=1024,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=True,
    hidden_act='silu',
    bos_token_id=BOS_ID,
    eos_token_id=EOS_ID,
    pad_token_id=PAD_ID,
    initializer_range=0.02,
)
SEQ_LEN = 1024
BATCH_SIZE = 64
PEAK_LR = 2e-3
MIN_LR_RATIO = 0.1
WARMUP_STEPS = 200
WEIGHT_DECAY = 0.1
BETAS = (0.9, 0.95)
GRAD_CLIP = 1.0
EVAL_EVERY = 250
EVAL_WINDOWS = 48            # validation windows of SEQ_LEN scored at each evaluation
TIMING_STEPS = 30            # steps timed (after 10 warm-up steps) to fix the schedule's length
PPL_WINDOW = 128             # window of the heldout.txt perplexity (the repo test's)
GENERATION = dict(do_sample=True, temperature=0.8, top_k=40, top_p=0.95, repetition_penalty=1.1, max_new_tokens=64)
GREEDY_PROMPTS = [
    {'text': 'The old ship sailed'},
    {'text': 'It is a truth universally acknowledged'},
    {'chat': 'What does "harbor" mean?'},
]
GREEDY_TOKENS = 24


def log(msg: str) -> None:
    print(f'[{time.strftime("%H:%M:%S")}] {msg}', flush=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def render_chat(messages: list[dict], add_generation_prompt: bool = False) -> str:
    """CHAT_TEMPLATE in Python (checked against transformers' rendering in stage 5)."""
    s = BOS + ''.join(f"<|{m['role']}|>\n{m['content']}{EOS}\n" for m in messages)
    return s + ('<|assistant|>\n' if add_generation_prompt else '')

# --------------------------------------------------------------------------- 1. tokenizer


def train_tokenizer(docs: list[dict], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )

    def texts():
        for d in docs:
            if 'text' in d:
                yield d['text']
            else:
                for m in d['messages']:
                    yield m['content']
    tok.train_from_iterator(texts(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f'{BOS} $A', pair=f'{BOS} $A {BOS} $B', special_tokens=[(BOS, BOS_ID)],
    )
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, f'{t} is not id {i}'
    return tok

# --------------------------------------------------------------------------- 2. data


def encode_docs(tok, docs: list[dict]) -> np.ndarray:
    """All documents, in file order, as one token stream."""
    plain = [d['text'] for d in docs if 'text' in d]
    chats = [render_chat(d['messages']) for d in docs if 'messages' in d]
    plain_ids = iter(tok.encode_batch(plain, add_special_tokens=False))
    chat_ids = iter(tok.encode_batch(chats, add_special_tokens=False))
    out = []
    for d in docs:
        if 'text' in d:
            out.append(np.asarray([BOS_ID] + next(plain_ids).ids + [EOS_ID], dtype=np.int32))
        else:
            out.append(np.asarray(next(chat_ids).ids, dtype=np.int32))
    return np.concatenate(out)


def windows_of(ids: list[int], window: int) -> torch.Tensor:
    n = len(ids) // window
    return torch.tensor(ids[:n * window], dtype=torch.long).view(n, window)


@torch.no_grad()
def window_nlls(model, wins: torch.Tensor, device: str, autocast: bool = False, chunk: int = 32) -> list[float]:
    """Summed NLL of each window (positions 1..window-1 predicted); see PERPLEXITY PROCEDURE."""
    sums = []
    for x in wins.split(chunk):
        x = x.to(device)
        with torch.autocast('cuda', dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=x, use_cache=False).logits
        nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction='none')
        sums.extend(nll.view(x.shape[0], -1).sum(1).double().tolist())
    return sums

# --------------------------------------------------------------------------- 3. train


def build_model(vocab_size: int, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(**{**MODEL, 'vocab_size': vocab_size}, attn_implementation='sdpa')
    model = LlamaForCausalLM(cfg).to(device)
    return model


def lr_at(step: int, total: int) -> float:
    if step < WARMUP_STEPS:
        return PEAK_LR * (step + 1) / WARMUP_STEPS
    p = min(1.0, (step - WARMUP_STEPS) / max(1, total - WARMUP_STEPS))
    return PEAK_LR * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * p)))


def add_residual_dropout(model, p: float) -> None:
    """Dropout on each attention and MLP output before the residual add (training only; the saved
    model is a plain Llama)."""
    def hook(module, args, output):
        if isinstance(output, tuple):
            return (F.dropout(output[0], p, module.training),) + output[1:]
        return F.dropout(output, p, module.training)
    for layer in model.model.layers:
        layer.self_attn.register_forward_hook(hook)
        layer.mlp.register_forward_hook(hook)


def train(model, stream: torch.Tensor, val_wins: torch.Tensor, budget_s: float, device: str, seed: int, steps: int | None = None) -> dict:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{'params': decay, 'weight_decay': WEIGHT_DECAY}, {'params': no_decay, 'weight_decay': 0.0}],
        lr=PEAK_LR, betas=BETAS, fused=device == 'cuda',
    )
    gen = torch.Generator(device=device).manual_seed(seed)
    offsets = torch.arange(SEQ_LEN + 1, device=device)
    n = stream.numel() - SEQ_LEN - 1
    vocab = model.config.vocab_size
    use_autocast = device == 'cuda'

    def evaluate() -> float:
        model.eval()
        s = window_nlls(model, val_wins, device, autocast=use_autocast)
        model.train()
        return sum(s) / (val_wins.shape[0] * (val_wins.shape[1] - 1))

    total = steps
    best = (float('inf'), -1, None)
    history = []
    t0 = time.time()
    t_timing = None
    step = 0
    tokens = 0
    model.train()
    while True:
        if step == 10:
            if device == 'cuda':
                torch.cuda.synchronize()
            t_timing = time.time()
        if step == 10 + TIMING_STEPS:
            if device == 'cuda':
                torch.cuda.synchronize()
            per_step = (time.time() - t_timing) / TIMING_STEPS
            per_step *= 1.04  # evaluations take a little time too
            if steps is None:
                total = max(step + 1, int((budget_s - (time.time() - t0)) / per_step) + step)
            log(f'{per_step * 1000:.1f} ms/step, {BATCH_SIZE * SEQ_LEN / per_step / 1e6:.2f} M tok/s -> {total} steps '
                f'({total * BATCH_SIZE * SEQ_LEN / stream.numel():.1f} passes over {stream.numel() / 1e6:.2f} M tokens)')
        if total is not None and step >= total:
            break
        if steps is None and time.time() - t0 > budget_s * 1.08:
            log(f'stopping at step {step}: over 108% of the time budget')
            break
        for g in opt.param_groups:
            g['lr'] = lr_at(step, total or WARMUP_STEPS * 10)  # no total yet: still warming up
        idx = torch.randint(0, n, (BATCH_SIZE,), device=device, generator=gen)
        batch = stream[idx[:, None] + offsets]
        x, y = batch[:, :-1], batch[:, 1:]
        with torch.autocast('cuda', dtype=torch.bfloat16, enabled=use_autocast):
            logits = model(input_ids=x, use_cache=False).logits
        loss = F.cross_entropy(logits.float().view(-1, vocab), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        step += 1
        tokens += x.numel()
        last = total is not None and step >= total
        if step % EVAL_EVERY == 0 or last or step == 1:
            val = evaluate()
            history.append({'step': step, 'train_loss': round(loss.item(), 4), 'val_loss': round(val, 4), 'elapsed_s': round(time.time() - t0, 1)})
            log(f'step {step}/{total or "?"} loss {loss.item():.4f} val {val:.4f} lr {opt.param_groups[0]["lr"]:.2e} '
                f'gnorm {gnorm.item():.2f} {time.time() - t0:.0f}s')
            if val < best[0]:
                best = (val, step, {k: v.detach().clone() for k, v in model.state_dict().items()})
        elif step % 50 == 0:
            log(f'step {step}/{total or "?"} loss {loss.item():.4f}')
    model.load_state_dict(best[2])
    log(f'kept the weights of step {best[1]} (val loss {best[0]:.4f} in bf16 autocast)')
    return {'steps': step, 'best_step': best[1], 'tokens_seen': tokens, 'train_seconds': round(time.time() - t0, 1), 'history': history}

# --------------------------------------------------------------------------- 4. export


def export(model, tok, out: str, max_len: int) -> None:
    from transformers import GenerationConfig, PreTrainedTokenizerFast
    os.makedirs(out, exist_ok=True)
    model = model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.generation_config = GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, **GENERATION)
    model.save_pretrained(out, safe_serialization=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=['<|user|>', '<|assistant|>', '<|system|>'],
        model_max_length=max_len, clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    # Keep the files self-describing for loaders that read tokenizer_config.json only.
    cfg_path = os.path.join(out, 'tokenizer_config.json')
    cfg = json.load(open(cfg_path))
    cfg.update({'tokenizer_class': 'PreTrainedTokenizerFast', 'add_bos_token': True, 'add_eos_token': False, 'bos_token': BOS, 'eos_token': EOS, 'pad_token': PAD,
                'chat_template': CHAT_TEMPLATE, 'additional_special_tokens': ['<|user|>', '<|assistant|>', '<|system|>']})
    json.dump(cfg, open(cfg_path, 'w'), indent=2)
    jinja = os.path.join(out, 'chat_template.jinja')
    if os.path.exists(jinja):
        os.remove(jinja)  # one copy of the template: tokenizer_config.json's
    tok.save(os.path.join(out, 'tokenizer.json'), pretty=False)

# --------------------------------------------------------------------------- 5. check


def check(out: str, heldout_text: str, valid_text: str, device: str) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    model = model.float().eval()  # bf16 weights upcast: float32 logits

    ids = tok('Hello world.')['input_ids']
    assert ids[0] == BOS_ID and ids.count(BOS_ID) == 1 and ids[-1] != EOS_ID, f'BOS handling: {ids}'
    msgs = [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello.'}]
    assert tok.apply_chat_template(msgs, tokenize=False) == render_chat(msgs), 'chat template != render_chat'
    prompt = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == render_chat(msgs[:1], True)

    res = {}
    hv = tok(heldout_text)['input_ids']
    wins = windows_of(hv, PPL_WINDOW)
    sums = window_nlls(model, wins, 'cpu')
    count = PPL_WINDOW - 1
    res['heldout'] = {
        'file': 'tools/demo-model/heldout.txt', 'num_tokens': len(hv), 'window': PPL_WINDOW, 'num_windows': len(sums),
        'predicted_per_window': count, 'nll': sum(sums) / (count * len(sums)), 'ppl': math.exp(sum(sums) / (count * len(sums))),
        'window_nll_sums': [round(s, 6) for s in sums],
    }
    for k in (4, 8, 16):
        nll = sum(sums[:k]) / (count * k)
        res['heldout'][f'first_{k}_windows'] = {'nll': nll, 'ppl': math.exp(nll)}
    log(f"heldout.txt: {len(hv)} tokens, {len(sums)} windows of {PPL_WINDOW}: nll {res['heldout']['nll']:.4f} ppl {res['heldout']['ppl']:.3f}")

    vv = tok(valid_text)['input_ids']
    vw = windows_of(vv, SEQ_LEN)
    dev_model = model.to(device)
    if device == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    vs = window_nlls(dev_model, vw, device, chunk=8)
    vn = sum(vs) / (len(vs) * (SEQ_LEN - 1))
    res['valid'] = {'file': '.demo-data/valid.txt (all held-out text)', 'num_tokens': len(vv), 'window': SEQ_LEN,
                    'num_windows': len(vs), 'nll': vn, 'ppl': math.exp(vn), 'device': device}
    log(f'valid.txt: {len(vv)} tokens, {len(vs)} windows of {SEQ_LEN}: nll {vn:.4f} ppl {math.exp(vn):.3f}')
    model = dev_model.to('cpu')

    greedy = []
    for p in GREEDY_PROMPTS:
        if 'text' in p:
            pid = tok(p['text'])['input_ids']
        else:
            pid = tok.apply_chat_template([{'role': 'user', 'content': p['chat']}], add_generation_prompt=True, tokenize=True, return_dict=False)
            if isinstance(pid, dict) or hasattr(pid, 'keys'):
                pid = pid['input_ids']
        x = torch.tensor([pid])
        y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=GREEDY_TOKENS, do_sample=False,
                           repetition_penalty=1.0, temperature=None, top_k=None, top_p=None, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
        new = y[0, len(pid):].tolist()
        text = tok.decode(new, skip_special_tokens=False)
        greedy.append({**p, 'prompt_token_ids': pid, 'token_ids': new, 'decoded': text})
        log(f'greedy {p}: {text!r}')
    res['greedy'] = {'max_new_tokens': GREEDY_TOKENS, 'dtype': 'float32 from bf16 weights, CPU', 'samples': greedy}

    samples = []
    for p in ['The old ship sailed', 'In the beginning']:
        x = torch.tensor([tok(p)['input_ids']])
        torch.manual_seed(0)
        y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=48, do_sample=True, temperature=0.8, top_k=40, top_p=0.95,
                           repetition_penalty=1.1, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
        samples.append(tok.decode(y[0], skip_special_tokens=True))
        log(f'sampled: {samples[-1]!r}')
    res['sampled'] = samples
    return res

# --------------------------------------------------------------------------- README

WORDNET_NOTICE = """WordNet Release 3.0. This software and database is being provided to you, the LICENSEE, by
Princeton University under the following license. By obtaining, using and/or copying this software
and database, you agree that you have read, understood, and will comply with these terms and
conditions.: Permission to use, copy, modify and distribute this software and database and its
documentation for any purpose and without fee or royalty is hereby granted, provided that you agree
to comply with the following copyright notice and statements, including the disclaimer, and that
the same appear on ALL copies of the software, database and documentation, including modifications
that you make for internal use or for distribution. WordNet 3.0 Copyright 2006 by Princeton
University. All rights reserved. THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON
UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR IMPLIED. BY WAY OF EXAMPLE, BUT NOT
LIMITATION, PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES OF MERCHANT- ABILITY OR
FITNESS FOR ANY PARTICULAR PURPOSE OR THAT THE USE OF THE LICENSED SOFTWARE, DATABASE OR
DOCUMENTATION WILL NOT INFRINGE ANY THIRD PARTY PATENTS, COPYRIGHTS, TRADEMARKS OR OTHER RIGHTS.
The name of Princeton University or Princeton may not be used in advertising or publicity
pertaining to distribution of the software and/or database. Title to copyright in this software,
database and any associated documentation shall at all times remain with Princeton University and
LICENSEE agrees to preserve same."""

SOURCE_TITLES = {
    'kjv': 'King James Bible (1611)',
    'austen': 'Jane Austen, the six novels (1811-1818)',
    'wordnet': 'WordNet 3.0 glosses and examples',
    'jargon': 'The Jargon File 4.4.7 (lexicon entries)',
}


def write_readme(out: str, res: dict, data_dir: str) -> None:
    src = json.load(open(os.path.join(data_dir, 'sources.json')))
    t = res['training']
    h, v = res['heldout'], res['valid']
    rows = '\n'.join(
        f"| {SOURCE_TITLES.get(k, k)} | `{s['package']}` {s['version']} | {s['license']} | {s['chars'] / 1e6:.2f} M | "
        f"{s['heldout_rule']}: {s['heldout_units']} units, {s['heldout_chars'] / 1e3:.0f} K chars |"
        for k, s in src['sources'].items())
    hist = '\n'.join(f"| {e['step']} | {e['train_loss']:.3f} | {e['val_loss']:.3f} | {e['elapsed_s']:.0f} |" for e in t['history'])
    greedy = '\n'.join(f"- `{json.dumps(g.get('text', g.get('chat')))}`{' (chat)' if 'chat' in g else ''} -> `{json.dumps(g['decoded'])}`"
                       for g in res['greedy']['samples'])
    sampled = '\n'.join(f'- {json.dumps(x)}' for x in res['sampled'])
    m = MODEL
    if t['fixed_steps']:
        schedule = 'a fixed step count'
        run_args = f"--steps {t['fixed_steps']} --dropout {t['dropout']:g}"
    else:
        schedule = f"the step count was fixed after timing the first steps, to fit a {t['budget_s'] / 60:.1f}-minute budget"
        run_args = f"--minutes {t['budget_s'] / 60:g} --dropout {t['dropout']:g}"
    text = f"""# Peregrine demo model

A {t['parameters'] / 1e6:.2f}M-parameter Llama-architecture model with its own 4,096-token byte-level BPE
tokenizer and a chat template, trained from scratch on freely licensed English text taken from Debian
packages. It is here so that `npm start` shows a real model talking on a machine with no GPU and no
downloads, and so that quantization work has weights that mean something. It is tiny: it writes
English-looking sentences in the manner of its sources (Austen, the King James Bible, dictionary
definitions, hacker slang); what it says is often wrong or odd. Use it as a demo and a test fixture only.

```sh
peregrine generate --model models/demo --prompt "The old ship sailed"
peregrine generate --model models/demo --chat --prompt 'What does "harbor" mean?'
```

The folder is a standard Hugging Face checkpoint: `config.json` (`LlamaForCausalLM`), `model.safetensors`
(BF16, tied embeddings), `tokenizer.json`, `tokenizer_config.json` (bos `<|bos|>`, eos `<|end|>`,
`add_bos_token`, chat template), `generation_config.json`; transformers loads it with
`AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained`. `ppl.json` holds what the training
script measured on the finished folder (the repo's test `test/demo-model.test.ts` recomputes it with Peregrine).

## Model

| | |
| --- | --- |
| layers | {m['num_hidden_layers']} |
| hidden size | {m['hidden_size']} |
| MLP (SwiGLU) | {m['intermediate_size']} |
| attention heads / KV heads / head dim | {m['num_attention_heads']} / {m['num_key_value_heads']} / {m['head_dim']} |
| vocabulary | {m['vocab_size']} (byte-level BPE; ids 0-5: `{'`, `'.join(t.replace('|', chr(92) + '|') for t in SPECIAL_TOKENS)}`) |
| context | {m['max_position_embeddings']} tokens, RoPE theta {m['rope_theta']:g} |
| norm | RMSNorm, eps {m['rms_norm_eps']:g} |
| embeddings | tied (input = output) |
| parameters | {t['parameters']:,} ({t['parameters'] * 2 / 1e6:.2f} MB in BF16) |

Chat format (the `chat_template`): `<|bos|><|user|>\\n{{message}}<|end|>\\n<|assistant|>\\n{{reply}}<|end|>\\n`;
a plain text document is `<|bos|>{{text}}<|end|>`. `<|end|>` (id 1) is the end-of-sequence token of both.

## Data

Made by `tools/demo-model/prepare_data.py` (`apt-get download`, `dpkg -x`, cleaned to ASCII):

| text | Debian package | license (from the package's copyright file) | chars | held out |
| --- | --- | --- | --- | --- |
{rows}

The Bible text is decompressed with the `bible` program of `bible-kjv` (GPL-2+; only the program, not
the text, is under the GPL, and the program is not part of anything committed here).
The training documents are the plain texts (a book's units are ~2 KB runs of paragraphs, a chapter's
verses one per line; 8 WordNet entries per document; one Jargon entry per document) plus chat
documents made from them: questions about a word answered by its WordNet gloss (30% of the entries),
questions about a Jargon term answered by its first paragraph (all entries), "Continue this passage"
prompts over 15% of the book units, and 400 lines of small talk written for this project.
{src['train_docs']:,} training documents ({src['train_chat_docs']:,} of them chat), {t['train_tokens'] / 1e6:.2f} M tokens.

Held out: the slices above (the tail of each book, a seeded 2% of the dictionary entries) are in no
training document, not even as chat. `.demo-data/valid.txt` is all of them ({src['valid_chars'] / 1e3:.0f} K chars, interleaved
by source); `tools/demo-model/heldout.txt` (committed) is its first {src['heldout_txt_chars'] / 1e3:.1f} K chars.

### Licenses

The King James Bible, Jane Austen's novels and the Jargon File are in the public domain. The janeaustenr
package that carries the novels is MIT-licensed (Copyright 2016-2017 Julia Silge). WordNet is under the
WordNet 3.0 license, whose notice must accompany copies and derived works:

> {WORDNET_NOTICE}

## Recipe

`tools/demo-model/train.py`, seed {t['seed']}, torch {t['torch']}, transformers {t['transformers']}, tokenizers {t['tokenizers']}, on one {t['device']}:

- tokenizer: `tokenizers` BPE, byte-level pre-tokenizer (GPT-2 regex, no prefix space), 4,096 tokens,
  min frequency 2, trained on the training text; post-processor puts `<|bos|>` first
- model: `LlamaForCausalLM(LlamaConfig(...))`, transformers' default init (std 0.02)
- batches: {t['batch_size']} random crops of {t['seq_len']} + 1 tokens from the concatenated documents
- AdamW (betas {t['betas'][0]}, {t['betas'][1]}; weight decay {t['weight_decay']} on matrices), peak LR {t['peak_lr']:g}, {t['warmup_steps']} warm-up steps, cosine to
  {t['min_lr_ratio']:g} x peak; gradients clipped at {t['grad_clip']}; bf16 autocast, f32 master weights
- residual dropout {t['dropout']:g} while training (on each attention and MLP output; the saved model has none)
- {t['steps']:,} steps in {t['train_seconds']:.0f} s ({t['tokens_seen'] / 1e6:.0f} M tokens, {t['tokens_seen'] / t['train_tokens']:.1f} passes over the data): {schedule};
  the weights of the evaluation with the lowest validation loss (step {t['best_step']:,}) were kept and saved in BF16

| step | train loss | val loss (first {EVAL_WINDOWS} windows, bf16) | s |
| --- | --- | --- | --- |
{hist}

## Results

Measured by `train.py` on this folder as saved (BF16 weights upcast to float32):

| text | tokens | window | loss (nats/token) | perplexity |
| --- | --- | --- | --- | --- |
| all held-out text (`valid.txt`) | {v['num_tokens']:,} | {v['window']} | {v['nll']:.4f} | {v['ppl']:.3f} |
| `tools/demo-model/heldout.txt` | {h['num_tokens']:,} | {h['window']} | {h['nll']:.4f} | {h['ppl']:.3f} |
| `heldout.txt`, first 16 windows (the repo test) | {16 * h['window']:,} | {h['window']} | {h['first_16_windows']['nll']:.4f} | {h['first_16_windows']['ppl']:.3f} |

Perplexity procedure (the test does exactly this with Peregrine's CPU backend): tokenize the text with
the tokenizer (one `<|bos|>` first); split the ids into consecutive, non-overlapping windows of `window`
tokens, dropping a shorter tail; score every window on its own (positions 0..window-1, empty cache);
loss = the mean over all windows and positions p = 0..window-2 of -log softmax(logits[p])[ids[p+1]];
perplexity = exp(loss). `ppl.json` lists each window's summed loss.

Greedy continuations ({res['greedy']['max_new_tokens']} tokens, float32):

{greedy}

Sampled (temperature 0.8, top-k 40, top-p 0.95, repetition penalty 1.1, the `generation_config.json` defaults):

{sampled}

## Reproduce

```sh
python3 tools/demo-model/prepare_data.py --scratch /tmp/demo-src --out .demo-data   # Debian, stdlib only
PYTHONUNBUFFERED=1 python3 tools/demo-model/train.py --smoke --out /tmp/demo-smoke  # ~1 minute check
PYTHONUNBUFFERED=1 python3 tools/demo-model/train.py {run_args} --out models/demo  # one GPU
```

The run is seeded, but GPU kernels (and, with --minutes, the measured speed) make a re-run close to,
not equal to, these weights.
"""
    with open(os.path.join(out, 'README.md'), 'w') as f:
        f.write(text)


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--data', default='.demo-data')
    ap.add_argument('--heldout', default=os.path.join(HERE, 'heldout.txt'))
    ap.add_argument('--out', required=True)
    ap.add_argument('--minutes', type=float, default=5.0, help='training wall-clock budget (sets the step count)')
    ap.add_argument('--steps', type=int, default=None, help='a fixed step count instead of --minutes')
    ap.add_argument('--dropout', type=float, default=0.0, help='residual dropout while training')
    ap.add_argument('--smoke', action='store_true', help='~20 s run of every stage on a slice of the data')
    ap.add_argument('--seed', type=int, default=1234)
    args = ap.parse_args()
    global BATCH_SIZE, EVAL_EVERY, EVAL_WINDOWS, WARMUP_STEPS, TIMING_STEPS  # --smoke shrinks them
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    seed_everything(args.seed)
    t_start = time.time()
    log(f'torch {torch.__version__}, device {device}{" " + torch.cuda.get_device_name() if device == "cuda" else ""}')

    with gzip.open(os.path.join(args.data, 'train.jsonl.gz'), 'rt') as f:
        docs = [json.loads(line) for line in f]
    valid_text = open(os.path.join(args.data, 'valid.txt')).read()
    heldout_text = open(args.heldout).read()
    budget = args.minutes * 60
    if args.smoke:
        docs = docs[:4000]
        valid_text = valid_text[:60_000]
        budget = 15.0 if device == 'cuda' else 20.0
        if device == 'cpu':
            BATCH_SIZE, WARMUP_STEPS, TIMING_STEPS = 4, 5, 5
        EVAL_EVERY, EVAL_WINDOWS = 50, 8
    log(f'{len(docs)} documents ({sum(1 for d in docs if "messages" in d)} chat), valid {len(valid_text)} chars, heldout {len(heldout_text)} chars')

    tok = train_tokenizer(docs, VOCAB_SIZE)
    log(f'tokenizer: {tok.get_vocab_size()} tokens')
    stream = encode_docs(tok, docs)
    val_ids = tok.encode(valid_text).ids
    val_wins = windows_of(val_ids, SEQ_LEN)[:EVAL_WINDOWS]
    log(f'train stream {len(stream) / 1e6:.2f} M tokens ({sum(len(d.get("text", "")) for d in docs) / 1e6:.1f} M chars of plain text); '
        f'valid {len(val_ids)} tokens, {val_wins.shape[0]} eval windows')

    model = build_model(tok.get_vocab_size(), device)
    n_params = sum(p.numel() for p in model.parameters())
    log(f'model: {n_params:,} parameters ({n_params * 2 / 1e6:.2f} MB in bf16), config {MODEL}')
    if args.dropout > 0:
        add_residual_dropout(model, args.dropout)
    info = train(model, torch.from_numpy(stream).long().to(device), val_wins, budget, device, args.seed, args.steps)

    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    export(model, tok, args.out, MODEL['max_position_embeddings'])
    res = check(args.out, heldout_text, valid_text, device)
    res['procedure'] = __doc__[__doc__.index('PERPLEXITY PROCEDURE'):].strip()
    res['training'] = {**info, 'seed': args.seed, 'budget_s': None if args.steps else budget, 'fixed_steps': args.steps, 'dropout': args.dropout, 'smoke': args.smoke, 'device': torch.cuda.get_device_name() if device == 'cuda' else 'cpu',
                       'train_tokens': int(len(stream)), 'parameters': n_params, 'seq_len': SEQ_LEN, 'batch_size': BATCH_SIZE,
                       'peak_lr': PEAK_LR, 'min_lr_ratio': MIN_LR_RATIO, 'warmup_steps': WARMUP_STEPS, 'weight_decay': WEIGHT_DECAY,
                       'betas': BETAS, 'grad_clip': GRAD_CLIP, 'torch': torch.__version__}
    import tokenizers
    import transformers
    res['training']['transformers'] = transformers.__version__
    res['training']['tokenizers'] = tokenizers.__version__
    with open(os.path.join(args.out, 'ppl.json'), 'w') as f:
        json.dump(res, f, indent=1)
    write_readme(args.out, res, args.data)
    sizes = {f: os.path.getsize(os.path.join(args.out, f)) for f in sorted(os.listdir(args.out))}
    log(f'wrote {args.out}: {sizes}, total {sum(sizes.values()) / 1e6:.3f} MB; whole run {time.time() - t_start:.0f}s')


if __name__ == '__main__':
    sys.exit(main())
