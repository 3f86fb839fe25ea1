"""Generation settings (wgqa_jax.decoding.settings): HF's generation_config / task_specific_params
read as HF reads them, and bad settings refused."""

import pytest

from wgqa_jax.decoding import GenerationConfig, settings


def test_settings_from_hf_and_their_errors():
  tsp = {
    "summarization": dict(
      early_stopping=True,
      length_penalty=2.0,
      max_length=200,
      min_length=30,
      no_repeat_ngram_size=3,
      num_beams=4,
      prefix="summarize: ",
    )
  }
  g = settings.for_task({"task_specific_params": tsp}, "summarization")
  assert (g.num_beams, g.max_new_tokens, g.min_length, g.length_penalty) == (4, 199, 30, 2.0)
  assert settings.for_task({"task_specific_params": tsp}, "translation") == GenerationConfig()
  assert settings.for_task({}, "summarization", num_beams=2).num_beams == 2
  with pytest.raises(ValueError, match="early_stopping"):
    GenerationConfig(early_stopping="sometimes")
  with pytest.raises(ValueError, match="num_return_sequences"):
    GenerationConfig(num_beams=2, num_return_sequences=3)
