"""Settings that make transformers' Whisper `generate` run plain beam (or greedy) search.

transformers' `WhisperForConditionalGeneration.generate` is not the plain
`GenerationMixin.generate`: it adds Whisper's logits processors and prompt tokens from the model
and generation configs. To compare it like for like with `jaxseq.decoding.beam_search` (the
parity test, the benchmark), all of them are switched off:

  * `suppress_tokens=None`, `begin_suppress_tokens=None`, both in the `WhisperConfig` (which
    defaults the latter to (220, 50256); see `plain_config_kwargs`) and in the `generate` call;
    these would become `SuppressTokensLogitsProcessor` / `SuppressTokensAtBeginLogitsProcessor`;
  * `forced_decoder_ids=None`, and no `lang_to_id` / `task_to_id` / `no_timestamps_token_id` in
    the generation config (one built from a `WhisperConfig` has none), so the decoder prompt is
    just `decoder_start_token_id` and no language detection runs;
  * `return_timestamps=False` (no timestamp logits processor), `no_speech_threshold=None` (no
    no-speech detection), `logprob_threshold=None` and `temperature=None` (no temperature
    fallback; with `do_sample=False` the search is deterministic).

What remains is the generic `_beam_search` / `_greedy_search` with `length_penalty=1.0` and
`early_stopping=False`, which `jaxseq.decoding.beam_search` reimplements (as
`LengthPenalty.transformers(1.0)`, `early_stopping=False`).

Only plain dicts are built here: neither torch nor transformers is imported.
"""

from __future__ import annotations

from typing import Any


def plain_config_kwargs() -> dict[str, Any]:
    """`WhisperConfig` keyword arguments that keep Whisper's token suppression out of the
    generation config built from it (its defaults would suppress tokens at every step and at the
    first step)."""
    return {"suppress_tokens": None, "begin_suppress_tokens": None}


def plain_generate_kwargs(num_beams: int, max_new_tokens: int, **extra: Any) -> dict[str, Any]:
    """Keyword arguments for `WhisperForConditionalGeneration.generate` that make it plain
    beam search (`num_beams > 1`) or greedy search (`num_beams == 1`); see the module docstring
    for why each Whisper-specific addition is off.

    The output is requested as a `ModelOutput` (`return_dict_in_generate=True`): its `sequences`
    keep the decoder prompt (here the start token alone) before the generated ids, and its
    `sequences_scores` / `scores` can be compared with jaxseq's.

    Args:
      num_beams: beams; 1 for greedy search.
      max_new_tokens: the most tokens generated after the prompt.
      **extra: further `generate` arguments (e.g. `min_new_tokens`, `output_scores`); they
        override the defaults above.
    """
    return {
        "num_beams": num_beams,
        "max_new_tokens": max_new_tokens,
        "length_penalty": 1.0,
        "early_stopping": False,
        "do_sample": False,
        "temperature": None,
        "return_timestamps": False,
        "forced_decoder_ids": None,
        **plain_config_kwargs(),
        "no_speech_threshold": None,
        "logprob_threshold": None,
        "return_dict_in_generate": True,
        **extra,
    }
