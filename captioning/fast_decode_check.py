"""Does the static-graph decoder choose the tokens the model itself would? A check on a few rows.

The first batch of a job on the static-graph path (fused prefill, compiled and captured decoding
step) is checked against the reference maths before its captions are trusted: the model's own
forward, uncompiled and outside every fast form, reads the prompt and the fast path's tokens at
once (teacher forcing) and gives, at each generated position, the logits the reference would have
chosen from, with generate's own rules applied (minimum new tokens, repetition penalty). Each token
the fast path chose must be the reference's best choice up to the rounding of the model's dtype.

Why logits and not "generate again and compare the tokens": in bf16 two correct paths round
differently and, on near-tied logits (random weights above all), pick different tokens after a few
steps (8 to 32% of tokens agreed on an H100, docs/benchmarks.md), so equal tokens would reject
correct paths. A broken path (a cache that is not filled, wrong positions) chooses tokens that are
far from the reference's best at most positions, whatever the dtype. One forward of a few rows costs
far less than generating them again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vidcorpus.captioning.decode_attention import padding_lengths, penalty_skips_padding

# A choice is off when the reference's best logit beats the chosen token's by more than this many
# standard deviations of that position's logits; in float32 both paths do the same maths (a flip is
# a bug), in half precision their roundings differ by about a percent of the logits' spread.
TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6}
HALF_TOLERANCE = 0.1
# Share of checked positions that may be off in half precision, where a near tie may flip (none in float32).
HALF_MAX_OFF = 0.1


@dataclass
class ProbeResult:
    positions: int  # generated positions checked (up to each row's first stop token)
    off: int  # positions whose token was not the reference's choice within the tolerance
    worst: float  # the largest gap seen, in standard deviations of the logits
    exact: bool = True  # float32 maths on both paths (no half precision, no TF32): no token may be off

    @property
    def share_off(self) -> float:
        return self.off / self.positions if self.positions else 0.0

    def agrees(self) -> bool:
        return self.off == 0 if self.exact else self.share_off <= HALF_MAX_OFF

    def describe(self) -> str:
        return (f"{self.off} of {self.positions} probe tokens were not the model's own choice "
                f"(largest gap {self.worst:.3g} standard deviations of the logits)")


@torch.inference_mode()
def check_tokens(model, inputs: dict, new: torch.Tensor, eos_ids: list[int], stop_ids: set[int],
                 min_new_tokens: int, repetition_penalty: float = 1.0) -> ProbeResult:
    """Teacher-forced check of generated tokens ``new`` (rows, n) for the prompts in ``inputs`` (the
    processor's tensors of the same rows, on the model's device). ``eos_ids``: what the minimum-length
    rule suppresses; ``stop_ids``: tokens after which a row is padding (EOS and pad)."""
    # inside: transformers (seconds) loads after load_captioner has checked the weights (it fails fast first)
    from transformers import MinNewTokensLengthLogitsProcessor, RepetitionPenaltyLogitsProcessor

    prompt = inputs["input_ids"]
    rows, n = new.shape
    prompt_len = prompt.shape[1]
    ids = torch.cat([prompt, new.to(prompt.device)], dim=1)
    forward = dict(inputs, input_ids=ids)
    for key, value in inputs.items():  # per-token inputs grow with the generated tokens: attended, text
        if key != "input_ids" and isinstance(value, torch.Tensor) and value.shape[:2] == prompt.shape:
            fill = 1 if key == "attention_mask" else 0  # mm_token_type_ids: 0 is text
            forward[key] = torch.cat([value, torch.full((rows, n), fill, dtype=value.dtype, device=value.device)], 1)
    logits = model(**forward, logits_to_keep=n + 1).logits[:, :n].float()  # position j predicts token j
    rules = [MinNewTokensLengthLogitsProcessor(prompt_len, min_new_tokens, sorted(eos_ids), device=logits.device)]
    if repetition_penalty != 1.0:  # as generate builds it (left padding left out where it does so)
        mask = inputs.get("attention_mask")
        skip = padding_lengths(mask) if mask is not None and penalty_skips_padding() else None
        rules.append(RepetitionPenaltyLogitsProcessor(repetition_penalty, prompt_ignore_length=skip))
    dtype = next(model.parameters()).dtype
    exact = dtype in TOLERANCE and not _tf32(logits.device)
    tol = TOLERANCE[dtype] if exact else HALF_TOLERANCE
    gaps = []
    for j in range(n):  # the rules read the tokens before position j, so they run position by position
        scores = logits[:, j]
        for rule in rules:
            scores = rule(ids[:, :prompt_len + j], scores)
        finite = torch.nan_to_num(torch.where(torch.isfinite(scores), scores, torch.nan), nan=0.0)
        spread = torch.nan_to_num(finite.std(dim=-1), nan=1.0).clamp_min(1e-6)
        chosen = scores.gather(1, new[:, j].to(scores.device).view(-1, 1)).squeeze(1)
        gaps.append((scores.max(-1).values - chosen) / spread)
    gap = torch.stack(gaps, 1).cpu()  # (rows, n), in standard deviations of each position's logits
    stopped = torch.isin(new.cpu(), torch.tensor(sorted(stop_ids)))
    choices = (stopped.long().cumsum(1) - stopped.long()) == 0  # up to each row's first stop token
    checked = gap[choices]
    positions, off = int(checked.numel()), int((checked > tol).sum())
    worst = float(checked.max()) if positions else 0.0
    return ProbeResult(positions, off, worst, exact)


def _tf32(device: torch.device) -> bool:
    """float32 on a GPU that rounds matrix products and convolutions to TF32 (cuDNN's default for
    convolutions): the reference itself rounds like half precision."""
    cuda = torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
    return device.type == "cuda" and bool(cuda)
