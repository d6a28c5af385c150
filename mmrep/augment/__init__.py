"""The co-augmentation stage (MOON2.0), offline and separate from training: `mmrep augment` reads a product shard set and writes a
NEW one with enriched titles and expanded images, after an image-title consistency filter.

Augmenters are pluggable (`register_augmenter`): a title augmenter maps a product to a new title, an
image augmenter maps (PIL image, product) to a new image or None. Built-ins keep the product's
entities (colour, category, attributes); `hf_vlm` rewrites titles with any local Hugging Face
vision-language model. A consistency scorer (a trained mmrep encoder dir or an open_clip `local-dir:`
checkpoint) drops inconsistent generations. A trained scorer gives matched image-title pairs only a
slightly higher cosine than mismatched ones (0.79 vs 0.71 on the built-in world), so an absolute
threshold either keeps everything or drops good generations; the default rule is relative: products
are scored in batches of `filter_batch`, the other products' originals are the mismatched candidates,
and a generation is kept only if its matched cosine beats `filter_beat_frac` of them, or (a weak
scorer) nearly as many as the product's original pair does (`rank`); or exceeds their mean by
`filter_margin` (`margin`); `threshold` is the absolute rule.
Evaluation splits are never augmented (that would leak generated data into the benchmark).

Each output product keeps its id: title = the best accepted rewrite (else the original), images =
originals followed by the accepted generated images.

Modules: `config` (the `augment` section), `registry` (`register_augmenter` / `build_augmenter`),
`titles` and `images` (the built-in augmenters), `consistency` (scorers and the keep rules), `job`
(`CoAugmenter`, `augment_shards`), `cli` (`mmrep augment`).
"""

from mmrep.augment import images, titles  # noqa: F401  (registers the built-in augmenters)
