"""Tokenizers (wgqa_jax.data.tokenizers): bytes, and sentencepiece trained on the fly, cached,
picklable for grain's worker processes, and fed only sentences it keeps."""

import pickle

from wgqa_jax.data import tasks, tokenizers


def test_byte_tokenizer_round_trip():
  tok = tokenizers.ByteTokenizer()
  text = "summarize: Grüße, 東京!"
  ids = tok.encode(text)
  assert min(ids) >= 3 and tok.decode(ids + [tokenizers.EOS, 50]) == text


def test_sentencepiece_trained_on_the_fly_is_cached_and_pickles(tmp_path):
  pairs = tasks.synthetic_summarize(500, seed=0)
  texts = [t for p in pairs for t in p]
  tok = tokenizers.get_tokenizer("sentencepiece", str(tmp_path), texts, vocab_size=256)
  assert (tmp_path / "spm.model").exists()
  ids = tok.encode(pairs[3][1])
  assert tok.decode(ids + [tokenizers.EOS, 7]) == pairs[3][1]
  again = tokenizers.get_tokenizer("sentencepiece", str(tmp_path), None, vocab_size=256)
  assert again.encode(pairs[3][0]) == tok.encode(pairs[3][0])
  copy = pickle.loads(pickle.dumps(tok))  # what a grain worker process gets
  assert copy.encode(pairs[7][0]) == tok.encode(pairs[7][0]) and copy.vocab_size == tok.vocab_size


def test_long_texts_are_cut_into_pieces_sentencepiece_keeps():
  sentence = "Ka to mi ra ne lo su vi de po an el. "
  text = sentence * 400  # ~15 KB: sentencepiece would skip it whole
  pieces = tokenizers.sentence_pieces(text)
  assert len(pieces) > 3
  assert all(len(p.encode()) < tokenizers.SPM_MAX_SENTENCE_BYTES for p in pieces)
  assert " ".join(pieces).split() == text.split()
  one_word = "x" * 20000
  assert "".join(tokenizers.sentence_pieces(one_word)) == one_word
