"""Retrain the shipped tiny tokenizer (``merr1/assets/tiny_tokenizer``) on the sample corpus.

The corpus: every text of the generated sample set (prompts of all response formats, subtitles,
reasons, answers; ``merr1.components.data.sample.sample_corpus``) plus every word of the five
emotion wheels once (so the calibration's first-token sets see sensible pieces). Deterministic:
the same corpus gives the same tokenizer. Rerun after changing the sample generator or prompts;
models trained with the old tokenizer must be retrained (ids change).

Usage: ``python scripts/make_tiny_tokenizer.py [--vocab_size 512] [--out merr1/assets/tiny_tokenizer]``
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from merr1.components.data.sample import make_sample_data, sample_corpus
from merr1.components.emotion_wheel import EmotionWheels
from merr1.components.tokenizer import TINY_TOKENIZER_DIR, train_tiny_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab_size", type=int, default=512)
    parser.add_argument("--out", type=Path, default=TINY_TOKENIZER_DIR)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        make_sample_data(tmp, with_media=False)
        texts = sample_corpus(tmp)
    wheels = EmotionWheels.load()
    texts += sorted({w for k in range(wheels.NUM_WHEELS) for ws in wheels.category_words(k).values() for w in ws})
    tokenizer = train_tiny_tokenizer(texts, vocab_size=args.vocab_size)
    tokenizer.save_pretrained(args.out)
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts[:2000]]
    print(f"wrote {args.out}: {len(tokenizer)} tokens, {len(texts)} corpus texts, "
          f"mean {sum(lengths) / len(lengths):.1f} tokens per text (first 2000)")


if __name__ == "__main__":
    main()
